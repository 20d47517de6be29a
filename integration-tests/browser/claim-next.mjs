// "Claim the next study" in the reading room, in a real browser (Debian's
// chromium through playwright-core), driven by the `claim_next` browser
// test in crates/meridian's cli tests: dr-nair, in in-south, claims the
// study routing offers her first, homed in us-east.
//
// Usage: node claim-next.mjs ROOM_URL; stdin: a line once the study is sent.
// Protocol on stdout: `empty` once her empty worklist is shown, `done <json>`.

import { createInterface } from "node:readline";
import { launch, report, signInAs } from "./browser.mjs";

const [room] = process.argv.slice(2);
const lines = createInterface({ input: process.stdin });
const browser = await launch();
const result = {};
await report(result, async () => {
  const page = await (await browser.newContext()).newPage();
  await signInAs(page, room, "dr-nair");
  await page.getByText("Nothing to read now.").waitFor();
  // Nothing offered: claiming the next says so.
  await page.getByRole("button", { name: "Claim the next study" }).click();
  await page.waitForURL("**/room/worklist**");
  result.nothing = (await page.getByRole("alert").first().innerText()).trim();
  console.log("empty");
  await new Promise((resolve) => lines.once("line", resolve));
  // Offered (a Claim button in its row), then claimed as the next one.
  const row = page.locator("#worklist tr[data-study]");
  await row.getByRole("button", { name: /^Claim/ }).first().waitFor({ timeout: 60_000 });
  result.offered = await row.first().getAttribute("data-study");
  result.language = (await row.first().locator("td[lang]").innerText()).trim();
  await page.getByRole("button", { name: "Claim the next study" }).click();
  await page.waitForURL("**/room/studies/**");
  result.claimed = new URL(page.url()).pathname.split("/").pop();
  result.home = new URL(page.url()).searchParams.get("region");
  result.said = (await page.getByRole("status").first().innerText()).trim();
}, async () => {
  await browser.close();
  lines.close();
});
