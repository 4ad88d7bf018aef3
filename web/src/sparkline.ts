// Claims per second over the last minute, drawn on a small canvas.

const WINDOW_SECONDS = 60;

export class Sparkline {
  private readonly buckets = new Map<number, number>();

  constructor(private readonly canvas: HTMLCanvasElement) {}

  /** Counts one claim in the second it was claimed (server time). */
  add(at: Date): void {
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
    const peak = Math.max(1, ...values);
    const ctx = this.canvas.getContext("2d");
    if (!ctx) return;
    const { width, height } = this.canvas;
    const pad = 2;
    ctx.clearRect(0, 0, width, height);
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
    this.canvas.title = `claims per second, last ${WINDOW_SECONDS}s (peak ${Math.max(...values)}/s)`;
    this.canvas.dataset.values = values.join(",");
  }

  private now(): number {
    return Math.floor(Date.now() / 1000);
  }
}
