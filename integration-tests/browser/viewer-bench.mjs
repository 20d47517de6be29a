// Click → first image of one study in OHIF, in a real browser (Debian's
// chromium through playwright-core), driven by `viewer-bench`: through
// Meridian's reading room (dr-ortiz signs in, opens the study from her
// worklist, clicks "Open the images": OHIF from the room, its DICOMweb
// through the room's proxy on her session), and beside it the same OHIF
// build pointed at Orthanc's DICOMweb plugin (served by a small same-origin
// server here, which passes /orthanc/ on to Orthanc, as the room passes
// its DICOMweb on). A fresh browser context per run: nothing cached.
//
// Usage: node viewer-bench.mjs ROOM_URL ORTHANC_HTTP VIEWER_DIST STUDY_UID STUDY_ID RUNS
// Prints `done <json>`: each run's milliseconds for both.

import { createReadStream, statSync } from "node:fs";
import http from "node:http";
import path from "node:path";
import { launch, report, signInAs } from "./browser.mjs";

const [room, orthanc, dist, uid, study, runs] = process.argv.slice(2);

const types = { ".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".wasm": "application/wasm",
  ".json": "application/json", ".svg": "image/svg+xml", ".woff2": "font/woff2", ".png": "image/png" };
const appConfig = `window.config = {"routerBasename":"/room/viewer","showStudyList":false,` +
  `"showWarningMessageForCrossOrigin":false,"showCPUFallbackMessage":true,"strictZSpacingForVolumeViewport":true,` +
  `"extensions":[],"modes":[],"investigationalUseDialog":{"option":"never"},"dataSources":[{"namespace":` +
  `"@ohif/extension-default.dataSourcesModule.dicomweb","sourceName":"orthanc","configuration":{"friendlyName":` +
  `"Orthanc","name":"orthanc","wadoUriRoot":"/orthanc/dicom-web","qidoRoot":"/orthanc/dicom-web","wadoRoot":` +
  `"/orthanc/dicom-web","qidoSupportsIncludeField":false,"imageRendering":"wadors","thumbnailRendering":"wadors",` +
  `"enableStudyLazyLoad":true,"supportsFuzzyMatching":false,"supportsWildcard":false,"staticWado":false,` +
  `"singlepart":"bulkdata,video","omitQuotationForMultipartRequest":true,"bulkDataURI":{"enabled":true}}}],` +
  `"defaultDataSourceName":"orthanc"};\n`;

const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://x");
  if (url.pathname.startsWith("/orthanc/")) {
    const target = new URL(url.pathname.slice("/orthanc".length) + url.search, orthanc);
    const ask = http.request(target, { method: req.method, headers: { ...req.headers, host: target.host } }, (a) => {
      res.writeHead(a.statusCode, a.headers);
      a.pipe(res);
    });
    ask.on("error", (e) => { res.writeHead(502); res.end(String(e)); });
    req.pipe(ask);
    return;
  }
  if (url.pathname === "/room/viewer/app-config.js") {
    res.writeHead(200, { "content-type": "text/javascript" });
    res.end(appConfig);
    return;
  }
  let rel = url.pathname.startsWith("/room/viewer/") ? url.pathname.slice("/room/viewer/".length) : "";
  let file = path.join(dist, path.normalize(rel));
  if (!file.startsWith(dist) || !statSafe(file)?.isFile()) file = path.join(dist, "index.html");
  res.writeHead(200, { "content-type": types[path.extname(file)] ?? "application/octet-stream" });
  createReadStream(file).pipe(res);
});
function statSafe(f) {
  try { return statSync(f); } catch { return null; }
}
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const local = `http://127.0.0.1:${server.address().port}`;

const browser = await launch({ webgl: true });

// Resolves when a canvas shows an image (not one colour), polled in the
// page every 20 ms.
async function firstImage(page) {
  await page.waitForFunction(() => {
    for (const c of document.querySelectorAll("canvas")) {
      if (c.width < 16 || c.height < 16) continue;
      const ctx = c.getContext("2d", { willReadFrequently: true });
      if (!ctx) continue;
      const d = ctx.getImageData(0, 0, c.width, c.height).data;
      let min = 255, max = 0;
      for (let i = 0; i < d.length; i += 4 * 7) { min = Math.min(min, d[i]); max = Math.max(max, d[i]); }
      if (max - min > 20) return true;
    }
    return false;
  }, null, { polling: 20, timeout: 120_000 });
}

async function meridian() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  await signInAs(page, room, "dr-ortiz");
  await page.goto(`${room}/room/studies/${study}?region=us-east`);
  const started = Date.now();
  const [viewer] = await Promise.all([context.waitForEvent("page"), page.locator("#viewer").click()]);
  await firstImage(viewer);
  const ms = Date.now() - started;
  await context.close();
  return ms;
}

async function orthancRun() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const started = Date.now();
  await page.goto(`${local}/room/viewer/viewer/orthanc?StudyInstanceUIDs=${uid}`, { waitUntil: "commit" });
  await firstImage(page);
  const ms = Date.now() - started;
  await context.close();
  return ms;
}

const result = { meridian: [], orthanc: [] };
await report(result, async () => {
  for (let i = 0; i < Number(runs); i++) {
    // Alternating, so neither always runs on a warmer machine.
    if (i % 2 === 0) {
      result.meridian.push(await meridian());
      result.orthanc.push(await orthancRun());
    } else {
      result.orthanc.push(await orthancRun());
      result.meridian.push(await meridian());
    }
  }
}, async () => {
  await browser.close();
  server.close();
});
