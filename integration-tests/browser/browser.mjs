// What the reading room's browser scripts share: Debian's chromium driven
// by playwright-core (MERIDIAN_PLAYWRIGHT, MERIDIAN_CHROMIUM), and the
// development sign-in.

import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { chromium } = require(process.env.MERIDIAN_PLAYWRIGHT);

// Headless chromium; with `webgl`, WebGL in software (SwiftShader): OHIF
// renders with it.
export function launch({ webgl = false } = {}) {
  const args = ["--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage"];
  if (webgl) args.push("--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist");
  return chromium.launch({ executablePath: process.env.MERIDIAN_CHROMIUM, headless: true, args });
}

// Signs `page` in to the room at `room` as an example principal of
// `meridian dev`, and waits for the worklist.
export async function signInAs(page, room, principal) {
  await page.goto(`${room}/room/sign-in`);
  await page.getByRole("button", { name: `Sign in as ${principal}` }).click();
  await page.waitForURL("**/room/worklist");
}

// Runs a script's steps, then prints `done <result as JSON>`, the line the
// Rust tests wait for; on a failure, the error and what was gathered so far
// (exit code 1). `close` runs either way.
export async function report(result, steps, close) {
  try {
    await steps();
    console.log(`done ${JSON.stringify(result)}`);
  } catch (e) {
    console.error(`${e.stack}\n${JSON.stringify(result)}`);
    process.exitCode = 1;
  } finally {
    await close();
  }
}
