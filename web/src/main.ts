// The page: two views, chosen by the URL fragment (#claim, #live).
import { setupClaimView } from "./claim.js";
import { loadConfig, makeClient } from "./client.js";
import { byId } from "./dom.js";
import { setupLiveView } from "./live.js";
import { setupRedeemStep } from "./redeem.js";

const VIEWS = ["claim", "live"] as const;

function showView(): void {
  const wanted = location.hash.replace(/^#/, "");
  const current = (VIEWS as readonly string[]).includes(wanted) ? wanted : "claim";
  for (const view of VIEWS) {
    byId(`view-${view}`).hidden = view !== current;
    byId(`nav-${view}`).classList.toggle("active", view === current);
  }
  document.body.dataset.view = current;
}

async function main(): Promise<void> {
  const config = await loadConfig();
  byId("endpoint").textContent = config.envoyUrl;
  const client = makeClient(config.envoyUrl);
  setupClaimView(client, config.brand, setupRedeemStep(client));
  setupLiveView(client, config.brand);
  window.addEventListener("hashchange", showView);
  showView();
  document.body.dataset.ready = "true";
}

void main();
