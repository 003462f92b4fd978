// Browser test of Beacon's web UI: headless Debian Chromium driven by playwright-core.
//   BEACON_HTTP=http://127.0.0.1:18500 SCREENSHOT_DIR=/tmp/shots node run.mjs
// Prints one line per passed step; exits non-zero with a message on the first failure.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import path from 'node:path';

const BASE = (process.env.BEACON_HTTP || '').replace(/\/+$/, '');
const SHOTS = process.env.SCREENSHOT_DIR || 'screenshots';
const T = 15000; // every wait is bounded by this
const SVC = 'web-ui-test', SVC_ID = 'web-ui-test-1', CHECK = 'web-ui-test-ttl';
const KEY = 'ui-test/folder/key1';

if (!BASE) { console.error('FAIL: set BEACON_HTTP to the Beacon base URL, e.g. http://127.0.0.1:18500'); process.exit(2); }
mkdirSync(SHOTS, { recursive: true });

// ---------- HTTP API from Node ----------
async function http(method, p, body) {
  const res = await fetch(BASE + p, { method, body, redirect: 'manual' });
  const text = await res.text();
  return { status: res.status, text, headers: res.headers, json: () => JSON.parse(text) };
}
async function apiOk(method, p, body) {
  const r = await http(method, p, body);
  if (r.status !== 200) throw new Error(`${method} ${p} answered ${r.status}: ${r.text.trim().slice(0, 200)}`);
  return r;
}
const kvRaw = async (key) => { const r = await http('GET', `/v1/kv/${key}?raw`); return r.status === 200 ? r.text : { status: r.status }; };
const esc = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
function assert(cond, msg) { if (!cond) throw new Error(msg); }
async function cleanup() {
  await http('PUT', `/v1/agent/service/deregister/${SVC_ID}`).catch(() => {});
  await http('DELETE', '/v1/kv/ui-test/?recurse').catch(() => {});
}

// ---------- browser ----------
const problems = []; // console errors and page errors, with the step they happened in
// Chromium itself logs every 404 response as a console error, even one a fetch() handles.
// In Consul's KV API a 404 is the normal answer for "no keys under this prefix" / "no such key"
// (an empty folder, a key just deleted), so exactly that browser line, for a /v1/kv/ URL, is
// expected; any other console error (including any console.error from app.js) fails the run.
let kv404s = 0;
function expectedKv404(m) {
  if (m.text() !== 'Failed to load resource: the server responded with a status of 404 (Not Found)') return false;
  try { return new URL(m.location().url).pathname.startsWith('/v1/kv/'); } catch { return false; }
}
let current = 'start';
let page, browser, loads = 0;

async function waitText(sel, re, what) {
  try {
    await page.waitForFunction(([s, src, fl]) => {
      const el = document.querySelector(s);
      return !!el && new RegExp(src, fl).test(el.textContent.replace(/\s+/g, ' ').trim());
    }, [sel, re.source, re.flags], { timeout: T, polling: 100 });
  } catch {
    const got = await page.evaluate((s) => { const el = document.querySelector(s); return el ? el.textContent.replace(/\s+/g, ' ').trim() : null; }, sel).catch(() => null);
    throw new Error(`${what}: waited ${T / 1000} s for ${sel} to match ${re}; it is ${got == null ? 'missing' : JSON.stringify(got)} (at ${page.url()})`);
  }
}
async function waitValue(sel, expected, what) {
  try {
    await page.waitForFunction(([s, v]) => { const el = document.querySelector(s); return !!el && el.value === v; }, [sel, expected], { timeout: T, polling: 100 });
  } catch {
    const got = await page.$eval(sel, (el) => el.value).catch(() => null);
    throw new Error(`${what}: waited for ${sel} to hold ${JSON.stringify(expected)}; it holds ${JSON.stringify(got)}`);
  }
}
async function waitPath(p, what) {
  try { await page.waitForURL((u) => u.pathname === p, { timeout: T }); } catch { throw new Error(`${what}: expected the URL path ${p}, the page is at ${page.url()}`); }
}
async function click(sel, what) {
  try { await page.locator(sel).first().click({ timeout: T }); } catch (e) { throw new Error(`${what}: could not click ${sel}: ${e.message.split('\n')[0]}`); }
}
async function noReload(what) {
  const marker = await page.evaluate(() => window.__marker);
  assert(marker === 1 && loads === 1, `${what}: the page reloaded (window.__marker=${marker}, page loads=${loads})`);
}
async function current_nav(section) {
  const cur = await page.$$eval('nav[aria-label="Main"] a[aria-current="page"]', (as) => as.map((a) => a.textContent.trim()));
  assert(cur.length === 1 && cur[0] === section, `nav should mark "${section}" as current, marks ${JSON.stringify(cur)}`);
}
async function shot(name) { await page.screenshot({ path: path.join(SHOTS, name), fullPage: true }); }

const steps = [];
const step = (id, name, fn) => steps.push({ id, name, fn });

let dc, nodeName;

step('a', 'GET /ui/ lands on the services list', async () => {
  const self = (await apiOk('GET', '/v1/agent/self')).json();
  dc = self.Config.Datacenter; nodeName = self.Config.NodeName;
  assert(dc && nodeName, `/v1/agent/self has no Config.Datacenter/NodeName: ${JSON.stringify(self.Config)}`);
  // What Beacon serves for the UI.
  const redirect = await http('GET', '/ui');
  assert(redirect.status >= 300 && redirect.status < 400 && /\/ui\/$/.test(redirect.headers.get('location') || ''),
    `GET /ui should redirect to /ui/, got ${redirect.status} Location=${redirect.headers.get('location')}`);
  for (const [p, type] of [['/ui/assets/app.js', /javascript/], ['/ui/assets/app.css', /css/], [`/ui/${dc}/kv/a/b/edit`, /html/]]) {
    const r = await http('GET', p);
    assert(r.status === 200 && type.test(r.headers.get('content-type') || ''), `GET ${p} should be 200 ${type}, got ${r.status} ${r.headers.get('content-type')}`);
  }
  await page.goto(`${BASE}/ui/`);
  await waitPath(`/ui/${dc}/services`, 'opening /ui/');
  await waitText('main h1', /^Services$/, 'services heading');
  await page.waitForSelector('main table.services, main .empty', { timeout: T });
  await current_nav('Services');
  assert(/Services/.test(await page.title()), `title should name Services: ${await page.title()}`);
  return `/ui/ -> /ui/${dc}/services`;
});

step('b', 'a registered service appears live with 1 passing', async () => {
  await page.evaluate(() => { window.__marker = 1; });
  await apiOk('PUT', '/v1/agent/service/register', JSON.stringify({
    Name: SVC, ID: SVC_ID, Port: 8080, Tags: ['v1'],
    Check: { CheckID: CHECK, Name: 'web ttl', TTL: '10m', Status: 'passing' },
  }));
  const row = `tr[data-service="${SVC}"]`;
  await waitText(`${row} td.count-passing`, /^1$/, 'passing count');
  await waitText(`${row} td.count-critical`, /^0$/, 'critical count');
  await waitText(`${row} td.health`, /passing/, 'health badge');
  await waitText(`${row} td:last-child`, /v1/, 'tags');
  await noReload('after registering');
  return `${SVC} shown with 1 passing, no reload`;
});

step('c', 'a failed check shows critical live; instances view shows it', async () => {
  await apiOk('PUT', `/v1/agent/check/fail/${CHECK}?note=boom`);
  const row = `tr[data-service="${SVC}"]`;
  await waitText(`${row} td.count-critical`, /^1$/, 'critical count');
  await waitText(`${row} td.count-passing`, /^0$/, 'passing count');
  await waitText(`${row} td.health`, /critical/, 'health badge');
  await noReload('after failing the check');
  await click(`${row} a`, 'service link');
  await waitPath(`/ui/${dc}/services/${SVC}/instances`, 'instances link');
  const chk = `section[data-instance="${SVC_ID}"] tr[data-check="${CHECK}"]`;
  await waitText(`${chk} th`, /web ttl/, 'check name');
  await waitText(`${chk} td.status`, /critical/, 'check status');
  await waitText(`${chk} td.output`, /^boom$/, 'check output');
  await waitText(`section[data-instance="${SVC_ID}"] dl`, new RegExp(`^Node${esc(nodeName)}Address.+:8080ID${esc(SVC_ID)}Tagsv1$`), 'instance facts');
  await noReload('after clicking into instances');
  return 'critical in list and in instances view (output "boom")';
});

step('d', 'KV create, browse, edit, CAS conflict and delete through the UI', async () => {
  await click('nav[aria-label="Main"] a[data-section="kv"]', 'Key/Value nav');
  await waitPath(`/ui/${dc}/kv/`, 'Key/Value nav');
  await current_nav('Key/Value');
  await click('main a.button:text("Create")', 'Create button');
  await waitPath(`/ui/${dc}/kv/create`, 'Create button');
  await page.getByLabel('Key', { exact: true }).fill(KEY);
  await page.getByLabel('Value', { exact: true }).fill('hello');
  await click('main button[type=submit]', 'Create submit');
  await waitPath(`/ui/${dc}/kv/ui-test/folder/`, 'after create');
  await waitText('main .note', /Created key/, 'created note');
  let v = await kvRaw(KEY);
  assert(v === 'hello', `after create, ${KEY} via the API is ${JSON.stringify(v)}, expected "hello"`);

  await click('nav.crumbs a:text("Key/Value")', 'breadcrumb root');
  await waitPath(`/ui/${dc}/kv/`, 'breadcrumb root');
  await click('tr[data-key="ui-test/"] a', 'folder ui-test/');
  await waitPath(`/ui/${dc}/kv/ui-test/`, 'folder ui-test/');
  await click('tr[data-key="ui-test/folder/"] a', 'folder folder/');
  await waitPath(`/ui/${dc}/kv/ui-test/folder/`, 'folder folder/');
  await click(`tr[data-key="${KEY}"] a`, 'key link');
  await waitPath(`/ui/${dc}/kv/${KEY}/edit`, 'key link');
  await waitValue('#kv-value', 'hello', 'loaded value');

  await page.fill('#kv-value', 'world');
  await click('main button:text("Save")', 'Save');
  await waitText('main .msg.ok', /Saved/, 'saved message');
  v = await kvRaw(KEY);
  assert(v === 'world', `after save, ${KEY} via the API is ${JSON.stringify(v)}, expected "world"`);

  await apiOk('PUT', `/v1/kv/${KEY}`, 'changed-by-api');
  await page.fill('#kv-value', 'from-the-page');
  await click('main button:text("Save")', 'Save (conflict)');
  await waitText('main .msg.error', /changed since you loaded it/, 'CAS conflict message');
  v = await kvRaw(KEY);
  assert(v === 'changed-by-api', `after the refused save, ${KEY} via the API is ${JSON.stringify(v)}, expected "changed-by-api"`);
  await waitValue('#kv-value', 'changed-by-api', 'value reloaded after conflict');

  await click('main button.danger:text("Delete")', 'Delete');
  await click('main button:text("Confirm delete")', 'Confirm delete');
  await waitPath(`/ui/${dc}/kv/ui-test/folder/`, 'after delete');
  await waitText('main .note', /Deleted key/, 'deleted note');
  const gone = await http('GET', `/v1/kv/${KEY}`);
  assert(gone.status === 404, `after delete, GET /v1/kv/${KEY} answered ${gone.status}, expected 404`);
  await noReload('during the KV round trip');
  return 'create=hello, edit=world, CAS conflict refused, delete -> 404';
});

step('e', 'each view opened by URL (with screenshots)', async () => {
  // Data for the KV views.
  await apiOk('PUT', '/v1/kv/ui-test/folder/config.json', JSON.stringify({ replicas: 3, image: 'web:1.4.2', env: { LOG_LEVEL: 'info' } }, null, 2));
  await apiOk('PUT', '/v1/kv/ui-test/folder/nested/deep', 'x');
  await apiOk('PUT', '/v1/kv/ui-test/folder/motd', 'Welcome to Beacon');
  const u = (p) => `${BASE}/ui/${dc}/${p}`;
  const checked = [];
  const visit = async (p, name, fn) => {
    await page.goto(u(p));
    await fn();
    await shot(name);
    checked.push(name.replace('.png', ''));
  };
  await visit('services', 'services.png', async () => {
    await waitText('main h1', /^Services$/, 'services heading');
    await waitText(`tr[data-service="${SVC}"] td.count-critical`, /^1$/, 'services: critical count');
    await current_nav('Services');
  });
  await visit(`services/${SVC}/instances`, 'instances.png', async () => {
    await waitText('main h1', new RegExp(`^${SVC}$`), 'instances heading');
    await waitText(`section[data-instance="${SVC_ID}"] tr[data-check="${CHECK}"] td.output`, /^boom$/, 'instances: check output');
    assert((await page.title()).includes(SVC), 'instances title names the service');
  });
  await visit('nodes', 'nodes.png', async () => {
    await waitText('main h1', /^Nodes$/, 'nodes heading');
    await waitText(`tr[data-node="${nodeName}"] td.health`, /critical/, 'nodes: node health is its worst check');
    await current_nav('Nodes');
  });
  await visit(`nodes/${encodeURIComponent(nodeName)}`, 'node.png', async () => {
    await waitText('main h1', new RegExp(`^${esc(nodeName)}\\b`), 'node heading');
    await waitText(`table.checks tr[data-check="${CHECK}"] td.status`, /critical/, 'node: check');
    await waitText(`table.node-services tr[data-service="${SVC}"] th`, new RegExp(SVC), 'node: service');
  });
  await visit('kv/ui-test/folder/', 'kv-folder.png', async () => {
    await waitText('main h1', /^ui-test\/folder\/$/, 'kv folder heading');
    await waitText('tr[data-key="ui-test/folder/nested/"] td', /Folder/, 'kv folder: subfolder');
    await waitText('tr[data-key="ui-test/folder/config.json"] td', /Key/, 'kv folder: key');
    await current_nav('Key/Value');
  });
  await visit('kv/ui-test/folder/config.json/edit', 'kv-edit.png', async () => {
    await waitText('main h1', /ui-test\/folder\/config\.json/, 'kv edit heading');
    await page.waitForFunction(() => /"replicas": 3/.test(document.querySelector('#kv-value')?.value || ''), null, { timeout: T });
  });
  await visit('overview/server-status', 'server-status.png', async () => {
    const leader = (await apiOk('GET', '/v1/status/leader')).json();
    await waitText('main h1', /^Server status$/, 'server status heading');
    await waitText('#leader', new RegExp(esc(leader)), 'server status: leader');
    await waitText('table.servers tbody tr', /leader/, 'server status: leader row');
    await current_nav('Servers');
  });
  await visit('no/such/page', 'not-found.png', async () => {
    await waitText('main h1', /^Page not found$/, 'not-found heading');
    await page.waitForSelector(`main a[href="/ui/${dc}/services"]`, { timeout: T });
  });
  return `${checked.join(', ')} OK; screenshots in ${SHOTS}`;
});

step('f', 'no console errors or page errors', async () => {
  assert(problems.length === 0, `${problems.length} browser error(s):\n  ${problems.join('\n  ')}`);
  return `none${kv404s ? ` (${kv404s} expected KV 404 network line${kv404s === 1 ? '' : 's'} from Chromium not counted)` : ''}`;
});

step('g', 'screenshots written', async () => {
  const { statSync } = await import('node:fs');
  const names = ['services', 'instances', 'nodes', 'node', 'kv-folder', 'kv-edit', 'server-status', 'not-found'];
  for (const n of names) assert(statSync(path.join(SHOTS, `${n}.png`)).size > 1000, `${n}.png is missing or empty`);
  return names.map((n) => `${n}.png`).join(' ');
});

// ---------- run ----------
let failed = null;
try {
  await cleanup();
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
  page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    if (expectedKv404(m)) { kv404s++; return; }
    problems.push(`[step ${current}] console error: ${m.text()} (${m.location().url}:${m.location().lineNumber})`);
  });
  page.on('pageerror', (e) => problems.push(`[step ${current}] page error: ${e.message}`));
  page.on('load', () => { loads++; });
  for (const s of steps) {
    current = s.id;
    if (s.id === 'b') loads = 1; // the load of step a is the one page load we expect from here on
    const detail = await s.fn();
    console.log(`ok ${s.id} - ${s.name}${detail ? ': ' + detail : ''}`);
  }
} catch (e) {
  failed = e;
  if (page) await page.screenshot({ path: path.join(SHOTS, 'failure.png'), fullPage: true }).catch(() => {});
} finally {
  if (browser) await browser.close().catch(() => {});
  await cleanup().catch(() => {});
}
if (failed) {
  console.error(`FAIL at step ${current}: ${failed.message}`);
  if (problems.length) console.error(`browser errors so far:\n  ${problems.join('\n  ')}`);
  process.exit(1);
}
console.log(`${steps.length} passed, 0 failed`);
