// A headless Chromium driven by playwright-core, controlled line by line over stdin/stdout with JSON.
// The Python browser tests (tests/browser/) start it, send {"id", "cmd", ...} and read {"id", "ok", ...}.
// Logs go to stderr; stdout carries only replies.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

function reply(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

let browser;
try {
  browser = await chromium.launch({ executablePath, headless: true, args: FLAGS });
} catch (err) {
  reply({ id: 0, ok: false, error: `cannot launch ${executablePath}: ${err.message}` });
  process.exit(2);
}
const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
const page = await context.newPage();
const consoleLines = [];
page.on("console", (msg) => consoleLines.push(`${msg.type()}: ${msg.text()}`));
page.on("pageerror", (err) => consoleLines.push(`pageerror: ${err.message}`));
page.on("requestfailed", (req) => consoleLines.push(`requestfailed: ${req.url()} ${req.failure()?.errorText}`));
reply({ id: 0, ok: true, version: browser.version() });

const commands = {
  goto: async ({ url }) => {
    await page.goto(url);
    await page.waitForSelector("body[data-ready=true]", { timeout: 15_000 });
    return {};
  },
  fill: async ({ selector, value }) => (await page.fill(selector, value), {}),
  click: async ({ selector }) => (await page.click(selector), {}),
  text: async ({ selector }) => ({ value: await page.textContent(selector) }),
  visible: async ({ selector }) => ({ value: await page.isVisible(selector) }),
  waitVisible: async ({ selector, timeout }) => (await page.waitForSelector(selector, { state: "visible", timeout }), {}),
  // Waits until a JS expression (a function body receiving `arg`) returns something truthy, and returns it.
  waitFunction: async ({ body, arg, timeout }) => {
    const handle = await page.waitForFunction(new Function("arg", body), arg, { timeout, polling: 100 });
    return { value: await handle.jsonValue() };
  },
  eval: async ({ body, arg }) => ({ value: await page.evaluate(new Function("arg", body), arg) }),
  viewport: async ({ width, height }) => (await page.setViewportSize({ width, height }), {}),
  screenshot: async ({ path, fullPage }) => (await page.screenshot({ path, fullPage: fullPage ?? true }), {}),
  console: async () => ({ value: consoleLines.splice(0) }),
  close: async () => {
    await browser.close();
    return {};
  },
};

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const { id, cmd, ...params } = JSON.parse(line);
  try {
    if (!(cmd in commands)) throw new Error(`unknown command ${cmd}`);
    const result = await commands[cmd](params);
    reply({ id, ok: true, ...result });
    if (cmd === "close") break;
  } catch (err) {
    reply({ id, ok: false, error: String(err?.message ?? err) });
  }
}
await browser.close().catch(() => {});
process.exit(0);
