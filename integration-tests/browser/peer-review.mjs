// A peer review in the reading room, in a real browser (Debian's chromium
// through playwright-core), driven by the `peer_review` browser test in
// crates/meridian's cli tests, which starts `meridian dev`, sends a study
// and signs its final (dr-ortiz) through the CLI.
//
// Usage: node peer-review.mjs ROOM_URL STUDY SCREENSHOTS_DIR [NEXT_STUDY]
//   NEXT_STUDY: the same patient's next study, held by dr-ortiz: its page
//   lists STUDY as a prior.
// Environment: MERIDIAN_PLAYWRIGHT, MERIDIAN_CHROMIUM.
// Prints `done <json>` on stdout; anything wrong: stderr and exit 1.

import path from "node:path";
import { launch, report, signInAs } from "./browser.mjs";

const [room, study, shots, nextStudy] = process.argv.slice(2);

const browser = await launch();
const result = {};
await report(result, async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await signInAs(page, room, "dr-cole");
  // The review is his to read: on his worklist, blinded.
  const row = page.locator(`#worklist tr[data-study="${study}"]`);
  await row.waitFor({ timeout: 60_000 });
  result.row = (await row.innerText()).replace(/\s+/g, " ");
  await row.getByRole("link", { name: "Open" }).click();
  await page.waitForURL(`**/room/studies/${study}**`);
  // Blind: nothing of the reviewed read on the page.
  result.blind = (await page.locator("main").innerText()).includes("No acute findings.") === false
    && (await page.locator("#review").count()) === 0;
  await page.getByLabel("Findings").fill("Small left subdural haematoma, 4 mm.");
  await page.getByLabel("Impression").fill("Small left subdural haematoma.");
  await page.getByRole("button", { name: "Sign peer review" }).click();
  await page.waitForURL("**/room/worklist**");
  // Signed: the worklist lists it to score.
  const toScore = page.locator("#to-score").getByRole("link");
  await toScore.first().waitFor({ timeout: 30_000 });
  result.to_score = await toScore.count();
  await page.screenshot({ path: path.join(shots, "peer-review-queue.png"), fullPage: true });
  await toScore.first().click();
  await page.waitForURL(`**/room/studies/${study}**`);
  // Now the reviewed read shows, and the RADPEER choices.
  const review = page.locator("#review");
  result.reviewed_shown = (await review.innerText()).includes("No acute findings.");
  await page.getByLabel(/^3b: /).check();
  await page.screenshot({ path: path.join(shots, "peer-review.png"), fullPage: true });
  await page.getByRole("button", { name: "Score the read" }).click();
  await page.waitForURL(`**/room/studies/${study}**`);
  result.scored = (await page.locator("#scored").innerText()).trim();
  // Scored: no longer listed to score.
  await page.goto(`${room}/room/worklist`);
  result.to_score_after = await page.locator("#to-score").count();

  // The patient's next study, pushed to dr-ortiz: the first is its prior,
  // with her signed final.
  if (nextStudy) {
    const hers = await browser.newContext();
    const ortiz = await hers.newPage();
    await signInAs(ortiz, room, "dr-ortiz");
    const next = ortiz.locator(`#worklist tr[data-study="${nextStudy}"]`).getByRole("link", { name: "Open" });
    await next.waitFor({ timeout: 60_000 });
    await next.click();
    await ortiz.waitForURL(`**/room/studies/${nextStudy}**`);
    const priors = ortiz.locator("#priors li");
    result.priors = await priors.count();
    result.prior = (await priors.first().innerText()).replace(/\s+/g, " ");
    result.prior_study = await priors.first().locator("code").getAttribute("title");
    await ortiz.screenshot({ path: path.join(shots, "priors.png"), fullPage: true });
    await hers.close();
  }
}, async () => {
  await browser.close();
});
