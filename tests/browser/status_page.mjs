// Real-browser test of wxgate's admin status page.
//
//   node status_page.mjs ADMIN_URL GATEWAY_URL ROUTE_NAME [ROUTE_NAME...]
//
// Opens ADMIN_URL + '/' in Debian's Chromium (driven by playwright-core) and checks
// the page's contract: status 200 with Content-Type "text/html; charset=utf-8",
// title "wxgate", a visible row tr[data-route="NAME"] in table#routes for every
// ROUTE_NAME (with an integer td.requests), an integer span#requests-total, and
// nothing loaded from another host. Then it sends 5 GET requests to GATEWAY_URL + '/public/ping'
// from Node (any HTTP status counts), reloads the page and checks that
// #requests-total grew by at least 5.
//
// Env SCREENSHOT=path.png saves a full-page screenshot (after the reload; on a
// failure, of the page as it was when the check failed).
//
// Prints "status page OK: ..." and exits 0, or prints what was expected and what
// was found and exits 1. Page loads are bounded to 10 s, the whole run to 60 s.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const PAGE_TIMEOUT_MS = 10_000;
const SCRIPT_TIMEOUT_MS = 60_000;
const PINGS = 5;

class CheckFailed extends Error {}

function fail(what, expected, found) {
  throw new CheckFailed(`${what}: expected ${expected}, found ${found}`);
}

const argv = process.argv.slice(2);
if (argv.length < 3) {
  console.error('usage: node status_page.mjs ADMIN_URL GATEWAY_URL ROUTE_NAME [ROUTE_NAME...]');
  process.exit(1);
}
const trimSlash = (u) => u.replace(/\/+$/, '');
const adminUrl = trimSlash(argv[0]);
const gatewayUrl = trimSlash(argv[1]);
const routeNames = argv.slice(2);
const pageUrl = adminUrl + '/';
const pingUrl = gatewayUrl + '/public/ping';
const screenshotPath = process.env.SCREENSHOT || '';

let step = 'starting';
let context = null;
let page = null;
let userDataDir = null;
let screenshotTaken = false;

async function cleanup() {
  const c = context;
  context = null;
  if (c) {
    // A browser that hangs on close must not hang the test.
    await Promise.race([c.close().catch(() => {}), new Promise((r) => setTimeout(r, 5_000))]);
  }
  if (userDataDir) {
    await rm(userDataDir, { recursive: true, force: true, maxRetries: 3 }).catch(() => {});
    userDataDir = null;
  }
}

// Past the deadline: say so, and close the browser, which makes the pending step
// fail at once; the main flow then cleans up and exits (or, if it is stuck, the
// process exits 10 s later anyway).
let timedOut = false;
const deadlineAbort = new AbortController();
const deadline = setTimeout(() => {
  timedOut = true;
  deadlineAbort.abort();
  console.error(`status page FAIL: the whole check took longer than ${SCRIPT_TIMEOUT_MS / 1000} s (while ${step})`);
  context?.close().catch(() => {});
  setTimeout(() => process.exit(1), 10_000).unref();
}, SCRIPT_TIMEOUT_MS);

function setStep(s) {
  if (timedOut) throw new CheckFailed('timed out');
  step = s;
}

// The text of a selector as an integer, or a failure that says what was there.
async function readInt(selector, what) {
  const loc = page.locator(selector);
  const n = await loc.count();
  if (n !== 1) fail(what, `exactly one ${selector}`, `${n}`);
  const text = (await loc.textContent()).trim();
  if (!/^\d+$/.test(text)) fail(what, 'an integer', JSON.stringify(text));
  return Number(text);
}

// Loads (or reloads) the page and checks what every load must show.
async function loadPage(reload) {
  setStep(reload ? `reloading ${pageUrl}` : `loading ${pageUrl}`);
  let resp;
  try {
    resp = reload
      ? await page.reload({ waitUntil: 'load', timeout: PAGE_TIMEOUT_MS })
      : await page.goto(pageUrl, { waitUntil: 'load', timeout: PAGE_TIMEOUT_MS });
  } catch (e) {
    fail(`GET ${pageUrl}`, `the page within ${PAGE_TIMEOUT_MS / 1000} s`, e.message.split('\n')[0]);
  }
  if (!resp) fail(`GET ${pageUrl}`, 'an HTTP response', 'none');
  if (resp.status() !== 200) fail(`GET ${pageUrl}`, 'status 200', `status ${resp.status()}`);
  const ctype = (resp.headers()['content-type'] || '').toLowerCase().replace(/\s+/g, '');
  if (ctype !== 'text/html;charset=utf-8') {
    const found = resp.headers()['content-type'];
    fail(`Content-Type of ${pageUrl}`, '"text/html; charset=utf-8"', found === undefined ? '(none)' : JSON.stringify(found));
  }

  setStep('checking the title');
  const title = await page.title();
  if (title !== 'wxgate') fail('<title>', '"wxgate"', JSON.stringify(title));

  setStep('checking the routes table');
  const table = page.locator('table#routes');
  if ((await table.count()) !== 1) fail('<table id="routes">', 'one on the page', `${await table.count()}`);
  const present = await page
    .locator('table#routes tr[data-route]')
    .evaluateAll((rows) => rows.map((r) => r.getAttribute('data-route')));
  for (const name of routeNames) {
    const sel = `table#routes tr[data-route="${name.replace(/["\\]/g, '\\$&')}"]`;
    const row = page.locator(sel);
    const n = await row.count();
    if (n !== 1) fail(`row for route "${name}"`, `one ${sel}`, `${n} (rows present: ${JSON.stringify(present)})`);
    if (!(await row.isVisible())) fail(`row for route "${name}"`, 'a visible row', 'a hidden one');
    await readInt(`${sel} td.requests`, `requests of route "${name}"`);
  }

  setStep('reading #requests-total');
  const total = await readInt('span#requests-total', '#requests-total');
  return { total };
}

async function ping(i) {
  setStep(`sending GET ${pingUrl} (${i + 1} of ${PINGS})`);
  try {
    const signal = AbortSignal.any([AbortSignal.timeout(PAGE_TIMEOUT_MS), deadlineAbort.signal]);
    const res = await fetch(pingUrl, { signal });
    await res.arrayBuffer();
    return res.status;
  } catch (e) {
    fail(`GET ${pingUrl}`, 'an HTTP answer', `${e.name}: ${e.cause?.message ?? e.message}`);
  }
}

async function screenshot() {
  if (!screenshotPath || !page) return;
  setStep(`saving the screenshot to ${screenshotPath}`);
  await page.screenshot({ path: screenshotPath, fullPage: true, timeout: PAGE_TIMEOUT_MS });
  screenshotTaken = true;
}

let exitCode = 1;
try {
  setStep(`starting ${CHROMIUM}`);
  userDataDir = await mkdtemp(join(tmpdir(), 'wxgate-chromium-'));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: PAGE_TIMEOUT_MS,
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(PAGE_TIMEOUT_MS);
  page.setDefaultNavigationTimeout(PAGE_TIMEOUT_MS);

  // The page must not load anything from another host.
  const adminOrigin = new URL(pageUrl).origin;
  const foreign = new Set();
  page.on('request', (req) => {
    const u = req.url();
    if (u.startsWith('data:') || u.startsWith('about:')) return;
    try {
      if (new URL(u).origin !== adminOrigin) foreign.add(u);
    } catch {
      foreign.add(u);
    }
  });

  const before = await loadPage(false);
  const statuses = [];
  for (let i = 0; i < PINGS; i++) statuses.push(await ping(i));
  const after = await loadPage(true);
  if (after.total < before.total + PINGS) {
    fail(
      '#requests-total after reload',
      `at least ${before.total} + ${PINGS} = ${before.total + PINGS} (gateway answered ${PINGS} GET ${pingUrl} with statuses ${statuses.join(',')})`,
      `${after.total}`,
    );
  }
  if (foreign.size) fail('assets of the page', `none from another host than ${adminOrigin}`, [...foreign].join(' '));
  await screenshot();

  setStep('done');
  console.log(`status page OK: requests-total ${before.total} -> ${after.total}, routes: ${routeNames.join(', ')}`);
  exitCode = 0;
} catch (e) {
  if (timedOut) {
    // Already said.
  } else if (e instanceof CheckFailed) {
    console.error(`status page FAIL: ${e.message}`);
  } else {
    console.error(`status page FAIL: error while ${step}: ${e.message}`);
  }
  if (screenshotPath && page && !screenshotTaken && !timedOut) {
    await page
      .screenshot({ path: screenshotPath, fullPage: true, timeout: 5_000 })
      .then(() => console.error(`status page: screenshot of the failing page in ${screenshotPath}`))
      .catch(() => {});
  }
} finally {
  await cleanup();
  clearTimeout(deadline);
}
process.exit(exitCode);
