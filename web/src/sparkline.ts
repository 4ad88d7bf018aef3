// Claims per second over the last minute, drawn on a small canvas with its scale next to it: the
// top of the plot is the busiest second shown (its label says how many), the bottom is 0. With no
// claim in the window it says so in words instead of showing an empty box.

const WINDOW_SECONDS = 60;

export interface SparklineParts {
  canvas: HTMLCanvasElement;
  /** The scale's top label: the busiest second in the window, "12/s". */
  max: HTMLElement;
  /** Shown over the plot while the window has no claim. */
  empty: HTMLElement;
}

export class Sparkline {
  private readonly buckets = new Map<number, number>();
  private total = 0;

  constructor(private readonly parts: SparklineParts) {}

  /** Counts one claim in the second it was claimed (server time). */
  add(at: Date): void {
    this.total += 1;
    const second = Math.floor(at.getTime() / 1000);
    if (second < this.now() - WINDOW_SECONDS) return;
    this.buckets.set(second, (this.buckets.get(second) ?? 0) + 1);
  }

  /** Claims in the last complete second. */
  rate(): number {
    return this.buckets.get(this.now() - 1) ?? 0;
  }

  draw(): void {
    const now = this.now();
    for (const second of this.buckets.keys()) if (second < now - WINDOW_SECONDS) this.buckets.delete(second);
    const values: number[] = [];
    for (let s = now - WINDOW_SECONDS + 1; s <= now; s++) values.push(this.buckets.get(s) ?? 0);
    const peak = Math.max(...values);
    const { canvas, max, empty } = this.parts;
    canvas.dataset.values = values.join(",");
    canvas.title = `claims per second, last ${WINDOW_SECONDS} s (busiest second: ${peak})`;
    max.hidden = peak === 0;
    max.textContent = peak === 0 ? "" : `${peak}/s`;
    empty.hidden = peak > 0;
    empty.textContent = this.total === 0 ? "no claims yet" : `no claims in the last ${WINDOW_SECONDS} s`;

    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    const { width, height } = canvas;
    const pad = 2;
    ctx.clearRect(0, 0, width, height);
    // The axis: 0 at the bottom, and the scale's top (the peak) as a faint dashed line.
    ctx.lineWidth = 1;
    ctx.strokeStyle = "#b9c1d1";
    ctx.setLineDash([]);
    ctx.beginPath();
    ctx.moveTo(0, height - pad + 0.5);
    ctx.lineTo(width, height - pad + 0.5);
    ctx.stroke();
    if (peak === 0) return;
    ctx.strokeStyle = "#d8dde7";
    ctx.setLineDash([3, 3]);
    ctx.beginPath();
    ctx.moveTo(0, pad + 0.5);
    ctx.lineTo(width, pad + 0.5);
    ctx.stroke();
    ctx.setLineDash([]);

    const x = (i: number): number => pad + (i * (width - 2 * pad)) / (values.length - 1);
    const y = (v: number): number => height - pad - (v / peak) * (height - 2 * pad);
    ctx.beginPath();
    ctx.moveTo(x(0), height - pad);
    values.forEach((v, i) => ctx.lineTo(x(i), y(v)));
    ctx.lineTo(x(values.length - 1), height - pad);
    ctx.closePath();
    ctx.fillStyle = "rgba(47, 111, 237, 0.18)";
    ctx.fill();
    ctx.beginPath();
    values.forEach((v, i) => (i === 0 ? ctx.moveTo(x(i), y(v)) : ctx.lineTo(x(i), y(v))));
    ctx.strokeStyle = "#2f6fed";
    ctx.lineWidth = 1.5;
    ctx.stroke();
  }

  private now(): number {
    return Math.floor(Date.now() / 1000);
  }
}
