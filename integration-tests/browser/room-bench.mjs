// The reading room's figures in a real browser (driven by `room-bench`):
// dr-priya-nair signs in to in-south's room and opens her worklist; this
// prints the page's paint timings, then, as the room's live update adds
// each study's row, when (Unix ms, this machine's clock).
//
// Usage: node room-bench.mjs ROOM_URL. Environment as reading-room.mjs.
// Output: `ready <json>` once the worklist is shown, then `row <study>
// <unix ms>` per new row; ends when stdin closes.

import { createInterface } from "node:readline";
import { launch, signInAs } from "./browser.mjs";

const [room] = process.argv.slice(2);
const browser = await launch();
try {
  const page = await (await browser.newContext()).newPage();
  await signInAs(page, room, "dr-nair");
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
