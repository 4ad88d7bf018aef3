// "Live claims": a brand watches its claims arrive (WatchClaims with its brand key, x-api-key).
//
// The feed is ordered by sequence. After a dropped connection the page asks again for claims after the
// last sequence it showed, and ignores any sequence it has already shown: nothing missed, nothing twice.
import { Code, ConnectError } from "@connectrpc/connect";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { DiscountClient } from "./client.js";
import type { Claim } from "./gen/discount/v1/discount_service_pb.js";
import { byId } from "./dom.js";
import { Sparkline } from "./sparkline.js";

const FIRST_RETRY_MS = 250;
const MAX_RETRY_MS = 5_000;
// The server sends nothing until the first claim; a call still open after this long is connected.
const SETTLED_MS = 1_000;
// Only the newest rows stay in the table; the counter still counts every claim.
const MAX_ROWS = 2_000;
const CLAIMS_PER_MESSAGE = 256;
// These will not get better by retrying: show them and stop.
const FATAL = new Set<Code>([Code.Unauthenticated, Code.PermissionDenied, Code.InvalidArgument, Code.NotFound]);

type State = "idle" | "connecting" | "live" | "reconnecting" | "error";

export function setupLiveView(client: DiscountClient, brand: string): void {
  const form = byId<HTMLFormElement>("live-form");
  const brandInput = byId<HTMLInputElement>("live-brand");
  const keyInput = byId<HTMLInputElement>("live-key");
  const startButton = byId<HTMLButtonElement>("live-start");
  const stopButton = byId<HTMLButtonElement>("live-stop");
  const status = byId("live-status");
  const countEl = byId("live-count");
  const lastSeqEl = byId("live-last-seq");
  const rateEl = byId("live-rate");
  const reconnectsEl = byId("live-reconnects");
  const scroller = byId("live-scroll");
  const tbody = byId<HTMLTableElement>("live-table").tBodies[0];
  const sparkline = new Sparkline({
    canvas: byId<HTMLCanvasElement>("live-sparkline"),
    max: byId("live-spark-max"),
    empty: byId("live-spark-empty"),
  });
  brandInput.value = brand;

  let controller: AbortController | null = null;
  let watchedBrand = "";
  let lastSequence = 0n;
  let count = 0;
  let reconnects = 0;
  let pending: Claim[] = [];
  let flushScheduled = false;

  setInterval(() => {
    sparkline.draw();
    rateEl.textContent = String(sparkline.rate());
  }, 1000);
  sparkline.draw();

  // `detail` is the transport's own wording ("Unknown: Failed to fetch"): kept as the pill's tooltip
  // for whoever debugs, never in its text.
  const setStatus = (state: State, text: string, detail = ""): void => {
    status.dataset.state = state;
    status.textContent = text;
    status.title = detail;
  };

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    start(brandInput.value.trim(), keyInput.value.trim());
  });
  stopButton.addEventListener("click", () => {
    stop();
    setStatus("idle", `Stopped after #${lastSequence}.`);
  });

  function start(brandId: string, key: string): void {
    stop();
    if (brandId !== watchedBrand) {
      // Another brand: start its feed from the beginning.
      watchedBrand = brandId;
      lastSequence = 0n;
      count = 0;
      pending = [];
      tbody.replaceChildren();
      countEl.textContent = "0";
      lastSeqEl.textContent = "0";
    }
    controller = new AbortController();
    startButton.disabled = true;
    stopButton.disabled = false;
    void watch(brandId, key, controller.signal);
  }

  function stop(): void {
    controller?.abort();
    controller = null;
    startButton.disabled = false;
    stopButton.disabled = true;
  }

  function receive(claim: Claim): void {
    if (claim.sequence <= lastSequence) return; // already shown (a replay after reconnecting)
    lastSequence = claim.sequence;
    count += 1;
    if (claim.claimedAt) sparkline.add(timestampDate(claim.claimedAt));
    pending.push(claim);
    if (!flushScheduled) {
      flushScheduled = true;
      setTimeout(flush, 30);
    }
  }

  function flush(): void {
    flushScheduled = false;
    const atBottom = scroller.scrollTop + scroller.clientHeight >= scroller.scrollHeight - 30;
    const rows = pending.map(row);
    pending = [];
    tbody.append(...rows);
    while (tbody.rows.length > MAX_ROWS) tbody.rows[0].remove();
    countEl.textContent = String(count);
    lastSeqEl.textContent = String(lastSequence);
    if (atBottom) scroller.scrollTop = scroller.scrollHeight;
  }

  async function watch(brandId: string, key: string, signal: AbortSignal): Promise<void> {
    let retryMs = FIRST_RETRY_MS;
    while (!signal.aborted) {
      setStatus("connecting", `Connecting (after #${lastSequence})…`);
      const settled = setTimeout(() => setStatus("live", "Live."), SETTLED_MS);
      let problem: string;
      let detail = "";
      try {
        // Runs of claims per message: in a flash sale the server sends a page a few messages a
        // second instead of one per claim (docs/performance.md).
        const stream = client.watchClaims(
          { brandId, afterSequence: lastSequence, maxClaimsPerResponse: CLAIMS_PER_MESSAGE },
          { headers: { "x-api-key": key }, signal },
        );
        for await (const response of stream) {
          if (status.dataset.state !== "live") setStatus("live", "Live.");
          for (const claim of response.claims) receive(claim);
          if (response.claim) receive(response.claim);
          retryMs = FIRST_RETRY_MS;
        }
        problem = "Server closed the feed";
      } catch (err) {
        if (signal.aborted) return;
        const e = ConnectError.from(err);
        if (FATAL.has(e.code)) {
          clearTimeout(settled);
          const why = e.code === Code.Unauthenticated ? "Not signed in: check the brand key" : "Not allowed";
          setStatus("error", `${why} (${Code[e.code]}: ${e.rawMessage}).`);
          stop();
          return;
        }
        // Unavailable comes from Envoy (no healthy server behind it) or the server (its database):
        // the page reached them. Anything else here is the page losing its connection to Envoy.
        problem = e.code === Code.Unavailable ? "Service unavailable" : "Connection lost";
        detail = `${Code[e.code]}: ${e.rawMessage}`;
      } finally {
        clearTimeout(settled);
      }
      if (signal.aborted) return;
      reconnects += 1;
      reconnectsEl.textContent = String(reconnects);
      setStatus("reconnecting", `${problem}; reconnecting from #${lastSequence}…`, detail);
      await sleep(retryMs, signal);
      retryMs = Math.min(retryMs * 2, MAX_RETRY_MS);
    }
  }
}

function row(claim: Claim): HTMLTableRowElement {
  const tr = document.createElement("tr");
  tr.className = "fresh";
  tr.dataset.sequence = String(claim.sequence);
  const at = claim.claimedAt ? timestampDate(claim.claimedAt) : null;
  const cells = [
    String(claim.sequence),
    at ? at.toLocaleTimeString() : "",
    claim.userId,
    claim.email,
    claim.code,
  ];
  cells.forEach((text, i) => {
    const td = document.createElement("td");
    td.textContent = text; // user-supplied text: never innerHTML
    if (i === 4) td.className = "code-cell";
    tr.append(td);
  });
  return tr;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}
