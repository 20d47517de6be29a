// The reading room's figures in a real browser (driven by `room-bench`):
// dr-priya-nair signs in to in-south's room and opens her worklist; this
// prints the page's paint timings, then, as the room's live update adds
// each study's row, when (Unix ms, this machine's clock).
//
// Usage: node room-bench.mjs ROOM_URL. Environment as reading-room.mjs.
// Output: `ready <json>` once the worklist is shown, then `row <study>
// <unix ms>` per new row; ends when stdin closes.

import { createRequire } from "node:module";
import { createInterface } from "node:readline";

const require = createRequire(import.meta.url);
const { chromium } = require(process.env.MERIDIAN_PLAYWRIGHT);
const [room] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.MERIDIAN_CHROMIUM,
  headless: true,
  args: ["--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage"],
});
try {
  const page = await (await browser.newContext()).newPage();
  await page.goto(`${room}/room/sign-in`);
  await page.getByRole("button", { name: "Sign in as dr-nair" }).click();
  await page.waitForURL("**/room/worklist");
  await page.exposeFunction("meridianRow", (study, at) => console.log(`row ${study} ${at}`));
  const timings = await page.evaluate(() => {
    const nav = performance.getEntriesByType("navigation")[0];
    const paint = performance.getEntriesByType("paint").find((p) => p.name === "first-contentful-paint");
    const own = performance.getEntriesByType("resource").filter((r) => r.name.includes("/room/assets/"));
    const seen = new Set([...document.querySelectorAll("tr[data-study]")].map((r) => r.dataset.study));
    new MutationObserver(() => {
      for (const r of document.querySelectorAll("tr[data-study]")) {
        if (!seen.has(r.dataset.study)) {
          seen.add(r.dataset.study);
          window.meridianRow(r.dataset.study, Date.now());
        }
      }
    }).observe(document.getElementById("worklist"), { childList: true, subtree: true });
    return {
      first_contentful_paint_ms: paint ? paint.startTime : null,
      dom_content_loaded_ms: nav.domContentLoadedEventEnd,
      html_bytes: nav.encodedBodySize,
      asset_bytes: own.reduce((n, r) => n + r.encodedBodySize, 0),
    };
  });
  console.log(`ready ${JSON.stringify(timings)}`);
  await new Promise((resolve) => createInterface({ input: process.stdin }).on("close", resolve));
} finally {
  await browser.close();
}
