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

import { createRequire } from "node:module";
import { createInterface } from "node:readline";
import path from "node:path";

const require = createRequire(import.meta.url);
const { chromium } = require(process.env.MERIDIAN_PLAYWRIGHT);
const [room, otherRoom, shots] = process.argv.slice(2);
const lines = createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once("line", resolve));

function check(ok, what) {
  if (!ok) {
    throw new Error(what);
  }
}

const browser = await chromium.launch({
  executablePath: process.env.MERIDIAN_CHROMIUM,
  headless: true,
  // WebGL in software (SwiftShader): OHIF renders with it.
  args: [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-dev-shm-usage",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
  ],
});
const result = {};
try {
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
  await page.getByText(/Critical result category 2: open, to be communicated by /).waitFor();
  await page.getByLabel("Told").fill("Dr Lee, ED attending");
  await page.getByLabel("by", { exact: true }).selectOption("phone");
  await page.getByRole("button", { name: "Record the communication" }).click();
  await page.getByText(/Critical result category 2: closed in time/).waitFor();
  result.critical = true;
  await page.getByRole("button", { name: "Sign preliminary" }).click();
  await page.waitForURL("**/room/worklist**");
  await page.getByText("Nothing to read now.").waitFor();
  result.signed = true;
  // Signed, the read takes an addendum (the signed text stays).
  await page.goto(`${room}/room/studies/${study}?region=us-east`);
  await page.getByLabel("Addendum").fill("Addendum: reviewed with the referrer; no change.");
  await page.getByRole("button", { name: "Add the addendum" }).click();
  await page.getByText("Addendum added to your preliminary read.").waitFor();
  result.addendum = true;
  await page.goto(`${room}/room/worklist`);
  // Every region answers, and the page says so.
  check((await page.locator("#regions").innerText()).includes("us-east: answers"), "regions listed");
  // Why may she not take it now (its final)? Each rule, as routing says.
  await page.getByLabel("Study id").fill(study);
  await page.getByRole("button", { name: "Explain" }).click();
  await page.getByText("You may not take this study now:").waitFor();
  result.why = await page.locator("tbody tr.fails td:first-child").allInnerTexts();
  check(result.why.length > 0, `no failing rule shown: ${await page.locator("main").innerText()}`);
  await page.getByRole("link", { name: "Back to the worklist" }).click();

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
  await otherPage.goto(`${otherRoom}/room/sign-in`);
  await otherPage.getByRole("button", { name: "Sign in as dr-nair" }).click();
  await otherPage.waitForURL("**/room/worklist");
  check(!(await otherPage.content()).includes(study), "dr-nair sees the study");
  result.other_sees_nothing = true;
  console.log(`done ${JSON.stringify(result)}`);
} catch (e) {
  console.error(e.stack || String(e));
  process.exitCode = 1;
} finally {
  await browser.close();
  lines.close();
}
