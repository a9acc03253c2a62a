// Drives weir's flow page (/ui) in Debian's Chromium through playwright-core
// and prints what the page showed, as JSON, for integration/tests/flow_page.rs
// to assert on. It also makes one request of its own (from the frontend's
// address) while the page is open, to see a flow arrive live.
//
//   node flow_page.mjs ADMIN_URL LISTENER_URL FRONTEND_ADDRESS OUT_DIR
import { chromium } from "playwright-core";
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import os from "node:os";

const [admin, listener, frontend, out] = process.argv.slice(2);
fs.mkdirSync(out, { recursive: true });
const profile = fs.mkdtempSync(path.join(os.tmpdir(), "weir-chromium-"));

// the flags that work on these machines (../shared/docs/toolchain.md):
// without the background-networking ones Chromium floods a closed network
// (a fresh profile each run: playwright passes it as --user-data-dir)
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1400, height: 900 },
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const seen = {};
try {
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(`${admin}/ui`);
  await page.waitForFunction(() => document.querySelectorAll("#rows tr").length > 0, null, { timeout: 15000 });
  const rows = () => page.$$eval("#rows tr", (trs) => trs.map((tr) => ({
    verdict: tr.dataset.verdict,
    protocol: tr.dataset.protocol,
    cells: [...tr.children].map((td) => td.textContent),
  })));
  seen.initial = await rows();

  // a request while the page is open: its row must appear without a reload
  const live = "/public/live-from-the-browser-test";
  await new Promise((resolve, reject) => {
    const req = http.get(`${listener}${live}`, { localAddress: frontend }, (res) => { res.resume(); res.on("end", resolve); });
    req.on("error", reject);
  });
  await page.waitForFunction((p) => [...document.querySelectorAll("#rows td.what")].some((td) => td.textContent.includes(p)),
    live, { timeout: 15000 });
  seen.live = (await rows()).filter((r) => r.cells.some((c) => c.includes(live)));
  await page.screenshot({ path: path.join(out, "flow-page.png"), fullPage: true });

  // the filters narrow the rows
  await page.selectOption("#f-verdict", "denied");
  await page.waitForFunction(() => [...document.querySelectorAll("#rows tr")].every((tr) => tr.dataset.verdict === "denied"));
  seen.denied = await rows();
  await page.screenshot({ path: path.join(out, "flow-page-denied.png"), fullPage: true });
  await page.selectOption("#f-verdict", "");
  await page.fill("#f-pod", "crawler");
  await page.waitForFunction(() => [...document.querySelectorAll("#rows tr")].length > 0
    && [...document.querySelectorAll("#rows tr")].every((tr) => tr.children[3].textContent.includes("crawler")
      || tr.children[4].textContent.includes("crawler")));
  seen.crawler = await rows();
  await page.fill("#f-pod", "");
  await page.fill("#f-what", "/admin");
  await page.waitForFunction(() => [...document.querySelectorAll("#rows td.what")].every((td) => td.textContent.includes("/admin")));
  seen.admin = await rows();
  await page.fill("#f-what", "");

  // the service map and the policies
  seen.edges = await page.$$eval("[data-edge-label]", (ts) => ts.map((t) => ({
    edge: t.dataset.edgeLabel, allowed: +t.dataset.allowed, refused: +t.dataset.refused, audited: +t.dataset.audited,
  })));
  await page.waitForFunction(() => document.querySelectorAll("#policy-list .policy").length > 0);
  seen.policies = await page.$$eval("#policy-list .policy", (ds) => ds.map((d) => ({ name: d.dataset.policy, mode: d.dataset.mode })));
  seen.generation = await page.textContent("#generation");
  seen.status = await page.textContent("#status");
  seen.errors = errors;
} finally {
  await context.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(seen));
