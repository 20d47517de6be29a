// The reading room's sign-in through an OpenID Connect provider, in a
// real browser (Debian's chromium through playwright-core), driven by the
// `reading_room_sign_in` test in crates/meridian's cli tests, which runs
// identity-provider.mjs and `meridian dev`.
//
// Usage: node sign-in.mjs ROOM_URL RENEW_AFTER_SECONDS SCREENSHOTS_DIR
// Environment: MERIDIAN_PLAYWRIGHT, MERIDIAN_CHROMIUM.
// Prints `done <json>` on stdout; anything wrong: stderr and exit 1.

import path from "node:path";
import { launch, report } from "./browser.mjs";

const [room, renewAfter, shots] = process.argv.slice(2);

function check(ok, what) {
  if (!ok) {
    throw new Error(what);
  }
}

// The provider's development login and consent pages.
async function signInAt(page, login) {
  await page.getByRole("link", { name: "Sign in with Atlantic single sign-on" }).click();
  await page.waitForSelector("input[name=login]");
  check(!page.url().startsWith(room), `not sent to the provider: ${page.url()}`);
  await page.fill("input[name=login]", login);
  await page.fill("input[name=password]", "any");
  await page.click("button[type=submit]");
  // Consent, when the provider asks for it.
  const consent = page.getByRole("button", { name: "Continue" });
  await Promise.race([
    page.waitForURL(`${room}/room/**`),
    consent.waitFor().then(() => consent.click()),
  ]);
  await page.waitForURL(`${room}/room/**`);
}

const browser = await launch();
const result = {};
await report(result, async () => {
  // A reader signs in through the provider.
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${room}/room/worklist`);
  check(page.url().endsWith("/room/sign-in"), `not sent to sign-in: ${page.url()}`);
  await signInAt(page, "dr-ana-ortiz");
  check(page.url().endsWith("/room/worklist"), `after sign-in: ${page.url()}`);
  result.signed_in_as = (await page.locator("header").innerText()).trim();
  result.worklist = (await page.locator("#worklist tbody").innerText()).trim();
  await page.screenshot({ path: path.join(shots, "sign-in-oidc.png") });
  // The room's cookies (the provider, on this host too, keeps its own).
  const cookies = await context.cookies([`${room}/room/worklist`, `${room}/room/oidc/callback`]);
  result.cookies = cookies
    .filter((c) => c.name.startsWith("meridian"))
    .map((c) => `${c.name} ${c.httpOnly} ${c.sameSite}`)
    .sort();
  result.storage = await page.evaluate(
    () => Object.keys(localStorage).length + Object.keys(sessionStorage).length + document.cookie.length,
  );
  // Past the point where the access token is renewed: the room asks the
  // provider for a new one with the refresh token, and the reader sees
  // nothing of it.
  await page.waitForTimeout(Number(renewAfter) * 1000);
  await page.goto(`${room}/room/worklist`);
  result.after_renewal = page.url().endsWith("/room/worklist")
    && (await page.getByRole("heading", { name: "Worklist" }).count()) === 1;
  // Signing out ends her session at the provider too: the next sign-in
  // at this browser asks who it is again.
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("button", { name: "Yes, sign me out" }).click();
  await page.waitForURL(`${room}/room/sign-in`);
  await page.getByRole("link", { name: "Sign in with Atlantic single sign-on" }).click();
  result.asked_again = await page.locator("input[name=login]").waitFor({ timeout: 10_000 })
    .then(() => true, () => page.url());
  await context.close();

  // Someone who is not a reader signs in at the provider: the room says
  // why it opens no session.
  const other = await browser.newContext();
  const coordinator = await other.newPage();
  await coordinator.goto(`${room}/room/sign-in`);
  await signInAt(coordinator, "coordinator");
  result.not_a_reader = (await coordinator.getByRole("alert").innerText()).trim();
  result.not_a_reader_url = new URL(coordinator.url()).pathname;
  result.not_a_reader_session = (await other.cookies(`${room}/room/worklist`)).some((c) => c.name === "meridian_room");
  await other.close();

  // A callback this browser did not begin (another's code and state).
  const forged = await browser.newContext();
  const tab = await forged.newPage();
  const answer = await tab.goto(`${room}/room/oidc/callback?code=stolen&state=guessed`);
  result.forged_status = answer.status();
  result.forged = (await tab.getByRole("alert").innerText()).trim();
  await forged.close();
}, async () => {
  await browser.close();
});
