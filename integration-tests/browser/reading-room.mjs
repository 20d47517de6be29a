// The reading room in a real browser (Debian's chromium through
// playwright-core), driven by the `reading_room` test in crates/meridian's
// cli tests, which starts `meridian dev` and sends the study.
//
// Usage: node reading-room.mjs ROOM_URL OTHER_ROOM_URL SCREENSHOTS_DIR
//   ROOM_URL: the region where the reader (dr-ortiz) signs in;
//   OTHER_ROOM_URL: where another group's reader (dr-nair) signs in.
// Environment: MERIDIAN_PLAYWRIGHT (playwright-core's folder),
// MERIDIAN_CHROMIUM (the browser).
//
// Protocol on stdout: `worklist-open` once the reader's empty worklist is
// shown (the test then sends a study); `study <id>` once it appeared
// without a reload; `done <json>` at the end. Anything wrong: a message
// on stderr and exit 1.

import { createInterface } from "node:readline";
import path from "node:path";
import { launch, report, signInAs } from "./browser.mjs";

const [room, otherRoom, shots] = process.argv.slice(2);
const lines = createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once("line", resolve));

function check(ok, what) {
  if (!ok) {
    throw new Error(what);
  }
}

const browser = await launch({ webgl: true });
const result = {};
await report(result, async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  // Signing in: the development page lists the example readers.
  await page.goto(`${room}/room/worklist`);
  check(page.url().endsWith("/room/sign-in"), `not sent to sign-in: ${page.url()}`);
  await page.getByRole("button", { name: "Sign in as dr-ortiz" }).click();
  await page.waitForURL("**/room/worklist");
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "meridian_room");
  check(session && session.httpOnly && session.sameSite === "Strict", `session cookie: ${JSON.stringify(cookies)}`);
  check(
    (await page.evaluate(() => Object.keys(localStorage).length + Object.keys(sessionStorage).length)) === 0,
    "nothing in the browser's storage",
  );
  await page.getByText("Nothing to read now.").waitFor();
  await page.evaluate(() => {
    window.meridianLoaded = true;
  });
  console.log("worklist-open");
  await nextLine();

  // The study arrives: its row appears, the page never reloaded.
  const row = page.locator("#worklist tbody tr[data-study]");
  await row.first().waitFor({ timeout: 60_000 });
  check(await page.evaluate(() => window.meridianLoaded === true), "the page reloaded");
  const study = await row.first().getAttribute("data-study");
  result.study = study;
  const text = await row.first().innerText();
  check(/us-east/.test(text) && /CT/.test(text) && /(in|overdue by) /.test(text), `row: ${text}`);
  // Pushed to her: offered first, then held (the row changes in place).
  const open = page.locator(`#worklist tr[data-study="${study}"]`).getByRole("link", { name: "Open" });
  await open.waitFor({ timeout: 60_000 });
  await page.screenshot({ path: path.join(shots, "worklist.png"), fullPage: true });
  console.log(`study ${study}`);

  // Open, write, sign the preliminary.
  await open.click();
  await page.waitForURL(`**/room/studies/${study}**`);
  // Why it was asked for: the hospital's order, once reporting matched it
  // to the study (its worker does so moments after the study arrives).
  const matching = Date.now();
  while ((await page.locator("#order").count()) === 0 && Date.now() - matching < 30_000) {
    await page.waitForTimeout(500);
    await page.reload();
  }
  check((await page.locator("#order").innerText()).includes("Fall, rule out bleed"), "the order's reason");
  await page.getByLabel("Findings").fill("No intracranial haemorrhage.");
  await page.getByLabel("Impression").fill("Normal CT head.");
  // The study's template, in the contract's language, with its coded fields.
  await page.getByRole("heading", { name: "CT Head without contrast" }).waitFor();
  await page.getByLabel("Intracranial haemorrhage").selectOption("absent");
  await page.getByRole("button", { name: "Save draft" }).click();
  await page.getByText("Draft version 1 saved.").waitFor();
  check((await page.getByLabel("Impression").inputValue()) === "Normal CT head.", "the draft read back");
  check((await page.getByLabel("Intracranial haemorrhage").inputValue()) === "absent", "the coded field read back");
  check((await page.locator("#findings").getAttribute("lang")) === "en", "the contract's language");
  await page.screenshot({ path: path.join(shots, "editor.png"), fullPage: true });

  // The images: OHIF, served by the room, through its DICOMweb proxy on
  // her session. Pixels drawn: a canvas that is not one colour.
  const [viewer] = await Promise.all([context.waitForEvent("page"), page.locator("#viewer").click()]);
  const started = Date.now();
  let drawn = null;
  while (!drawn && Date.now() - started < 90_000) {
    await viewer.waitForTimeout(500);
    drawn = await viewer.evaluate(() => {
      for (const c of document.querySelectorAll("canvas")) {
        if (c.width < 16 || c.height < 16) continue;
        const ctx = c.getContext("2d", { willReadFrequently: true });
        if (!ctx) continue;
        const d = ctx.getImageData(0, 0, c.width, c.height).data;
        let min = 255;
        let max = 0;
        for (let i = 0; i < d.length; i += 4 * 7) {
          min = Math.min(min, d[i]);
          max = Math.max(max, d[i]);
        }
        if (max - min > 20) return { width: c.width, height: c.height, min, max };
      }
      return null;
    });
  }
  await viewer.screenshot({ path: path.join(shots, "viewer.png") });
  check(drawn, `no pixels drawn in the viewer within 90 s: ${viewer.url()}`);
  result.viewer = drawn;
  result.first_image_ms = Date.now() - started;
  await viewer.close();

  // Saved as she types, from the version the last save made.
  const autosave = (p) => p.locator("#autosave");
  await page.getByLabel("Findings").fill("No intracranial haemorrhage. No mass effect.");
  await autosave(page).getByText("Draft version 2 saved.").waitFor({ timeout: 20_000 });
  // The same draft in a second tab: the first to save wins, the other is
  // told why, and nothing it typed replaces the saved draft.
  const second = await context.newPage();
  await second.goto(page.url());
  await page.getByLabel("Impression").fill("Normal CT head.");
  await autosave(page).getByText("Draft version 3 saved.").waitFor({ timeout: 20_000 });
  await second.getByLabel("Impression").fill("Something else entirely.");
  await autosave(second).getByText(/^Not saved: /).waitFor({ timeout: 20_000 });
  result.second_tab = await autosave(second).innerText();
  await second.close();

  // A critical result, flagged and then told to the referrer.
  await page.getByLabel("ACR category").selectOption("2");
  await page.getByRole("button", { name: "Flag" }).click();
  await page.locator("#critical-state").getByText(/Critical result category 2: open, to be communicated by /).waitFor();
  await page.getByLabel("Told").fill("Dr Lee, ED attending");
  await page.getByLabel("by", { exact: true }).selectOption("phone");
  await page.getByRole("button", { name: "Record the communication" }).click();
  await page.locator("#critical-state").getByText(/Critical result category 2: closed in time/).waitFor();
  result.critical = true;
  // Left open while she signs: her worklist in another tab, and the study
  // in a third.
  const watcher = await context.newPage();
  await watcher.goto(`${room}/room/worklist`);
  const watchedRow = watcher.locator(`#worklist tr[data-study="${study}"]`);
  await watchedRow.waitFor();
  await watcher.evaluate(() => {
    window.meridianLoaded = true;
  });
  const stale = await context.newPage();
  await stale.goto(page.url());
  await page.getByRole("button", { name: "Sign preliminary" }).click();
  await page.waitForURL("**/room/worklist**");
  await page.getByText("Nothing to read now.").waitFor();
  result.signed = true;
  // The read completed: the other tab's worklist drops it without a
  // reload, and the study's other tab says it is no longer hers.
  await watchedRow.waitFor({ state: "detached", timeout: 30_000 });
  check(await watcher.evaluate(() => window.meridianLoaded === true), "the worklist tab reloaded");
  result.worklist_followed = true;
  await stale.locator("#held").waitFor({ state: "visible", timeout: 30_000 });
  result.stale_tab = await stale.locator("#held").innerText();
  result.stale_buttons_disabled = await stale.getByRole("button", { name: "Save draft" }).isDisabled();
  await watcher.close();
  await stale.close();
  await page.goto(`${room}/room/worklist`);
  // Why may she not take it now (its final)? Each rule, as routing says.
  await page.getByLabel("Study id").fill(study);
  await page.getByRole("button", { name: "Explain" }).click();
  await page.getByText("You may not take this study now:").waitFor();
  result.why = await page.locator("tbody tr.fails td:first-child").allInnerTexts();
  await page.screenshot({ path: path.join(shots, "why.png"), fullPage: true });
  check(result.why.length > 0, `no failing rule shown: ${await page.locator("main").innerText()}`);
  await page.getByRole("link", { name: "Back to the worklist" }).click();

  // The final: dr-cole (finals only) gets it, reads it, signs it.
  const finals = await browser.newContext();
  const cole = await finals.newPage();
  await signInAs(cole, room, "dr-cole");
  const coleRow = cole.locator(`#worklist tr[data-study="${study}"]`);
  await coleRow.waitFor({ timeout: 60_000 });
  const claim = coleRow.getByRole("button", { name: /^Claim/ });
  if ((await claim.count()) > 0) {
    await claim.click();
  } else {
    await coleRow.getByRole("link", { name: "Open" }).click();
  }
  await cole.waitForURL(`**/room/studies/${study}**`);
  await cole.getByLabel("Findings").fill("Agree with the preliminary read. No intracranial haemorrhage.");
  await cole.getByLabel("Impression").fill("Normal CT head.");
  await cole.getByLabel("Intracranial haemorrhage").selectOption("absent");
  await cole.getByRole("button", { name: "Sign final" }).click();
  await cole.waitForURL("**/room/worklist**");
  check(!(await cole.getByText(/Refused|Not accepted|Failed/).count()), `the final: ${await cole.locator("main").innerText()}`);
  result.final_signed = true;
  await finals.close();
  // Signed, the read takes an addendum (the signed text stays).
  await page.goto(`${room}/room/studies/${study}?region=us-east`);
  await page.getByLabel("Addendum").fill("Addendum: reviewed with the referrer; no change.");
  await page.getByRole("button", { name: "Add the addendum" }).click();
  await page.getByText("Addendum added to your preliminary read.").waitFor();
  result.addendum = true;
  // The critical result as it stands, on the study's page.
  result.critical_state = (await page.locator("#critical-state").innerText()).trim();
  // A correction of her signed read: current from now on, with why.
  await page.getByText("Correct it, or mark it entered in error").click();
  await page.getByLabel("Corrected findings").fill("No intracranial haemorrhage. No mass effect. No fracture.");
  await page.getByLabel("Corrected impression").fill("Normal CT head.");
  await page.getByLabel("Why", { exact: true }).fill("Fracture assessment omitted.");
  await page.getByRole("button", { name: "Issue the correction" }).click();
  result.corrected = (await page.locator("main").innerText()).match(/Your preliminary read is corrected\.|Refused: .*/)?.[0];
  await page.goto(`${room}/room/worklist`);
  // Every region answers, and the page says so.
  check((await page.locator("#regions").innerText()).includes("us-east: answers"), "regions listed");

  // A forged session is not one: back to sign-in.
  const forged = await browser.newContext();
  const host = new URL(room).hostname;
  await forged.addCookies([{ name: "meridian_room", value: "0".repeat(64), domain: host, path: "/room" }]);
  const forgedPage = await forged.newPage();
  await forgedPage.goto(`${room}/room/worklist`);
  check(forgedPage.url().endsWith("/room/sign-in"), `forged cookie let in: ${forgedPage.url()}`);
  // A form posted without the session's CSRF token is refused.
  const refused = await page.evaluate(async () => {
    const r = await fetch("/room/claim", {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: "csrf=wrong&study=x&region=us-east",
    });
    return r.status;
  });
  check(refused === 403, `a claim without the CSRF token answered ${refused}`);
  result.forged_refused = true;

  // Another group's reader sees nothing of it.
  const other = await browser.newContext();
  const otherPage = await other.newPage();
  await signInAs(otherPage, otherRoom, "dr-nair");
  check(!(await otherPage.content()).includes(study), "dr-nair sees the study");
  result.other_sees_nothing = true;

  // Each page against WCAG 2 A and AA, by axe-core (injected, so this
  // context alone lets the test's script past the room's CSP).
  const axeSource = process.env.MERIDIAN_AXE;
  const audit = await browser.newContext({ bypassCSP: true });
  const audited = await audit.newPage();
  result.axe = {};
  const axe = async (name) => {
    await audited.addScriptTag({ path: axeSource });
    const found = await audited.evaluate(async () => {
      const r = await window.axe.run(document, { runOnly: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] });
      return r.violations.map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
    });
    result.axe[name] = found;
  };
  await audited.goto(`${room}/room/sign-in`);
  await axe("sign-in");
  await audited.getByRole("button", { name: "Sign in as dr-ortiz" }).click();
  await audited.waitForURL("**/room/worklist");
  await axe("worklist");
  await audited.goto(`${room}/room/studies/${study}?region=us-east`);
  await axe("study");
  await audited.goto(`${room}/room/why?study=${study}`);
  await axe("why");
  await audit.close();
}, async () => {
  await browser.close();
  lines.close();
});
