// Beacon web UI: a small single-page app over Beacon's Consul-compatible HTTP API.
// No framework, no build step. Every view keeps itself current with blocking queries.
'use strict';

const main = document.getElementById('main');
const banner = document.getElementById('banner');
const agent = { dc: null, node: null };
let view = null;          // { ctrl: AbortController } of the current view
let flash = null;         // a message to show once on the next view

// ---------- small helpers ----------

// h('a', {href}, 'text', child...) builds DOM without innerHTML, so API data is never markup.
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid == null || kid === false) continue;
    el.append(kid instanceof Node ? kid : String(kid));
  }
  return el;
}

// Each segment percent-encoded. A '.' or '..' segment would be removed by the browser's URL
// parser (even spelt %2E), so it is joined to its neighbours with %2F, which the server
// decodes back to '/' (as the CLI's kv commands do).
const encKey = (key) => {
  const segs = key.split('/');
  const dot = (s) => s === '.' || s === '..';
  return segs.map((s, i) =>
    (i === 0 ? '' : (dot(segs[i - 1]) || dot(s) ? '%2F' : '/')) +
    (dot(s) ? '%2E'.repeat(s.length) : encodeURIComponent(s))).join('');
};
const decKey = (raw) => raw.split('/').map((s) => { try { return decodeURIComponent(s); } catch { return s; } }).join('/');
const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  signal && signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
});
const isAbort = (e) => e && e.name === 'AbortError';
const ui = (rest) => `/ui/${encodeURIComponent(agent.dc)}/${rest}`;

class HttpError extends Error {
  constructor(status, text) { super(`HTTP ${status}${text ? ': ' + text.trim().slice(0, 200) : ''}`); this.status = status; }
}

// One request. Resolves {status, index, data}; a 404 is data (null) when allow404.
async function api(path, { method = 'GET', body, signal, allow404 = false } = {}) {
  const res = await fetch(path, { method, body, signal, headers: { Accept: 'application/json' }, cache: 'no-store' });
  const text = await res.text();
  if (!res.ok && !(allow404 && res.status === 404)) throw new HttpError(res.status, text);
  const idx = res.headers.get('X-Consul-Index');
  let data = null;
  if (res.ok && text) { try { data = JSON.parse(text); } catch { data = text; } }
  return { status: res.status, index: idx == null ? null : Number(idx), data };
}

// ---------- connection banner ----------

const failing = new Map(); // watcher id -> retry delay (ms)
let failSeq = 0;
function setFailing(id, delay, err) {
  if (delay == null) failing.delete(id); else failing.set(id, { delay, err });
  if (failing.size === 0) { banner.hidden = true; banner.textContent = ''; return; }
  const f = [...failing.values()][0];
  banner.textContent = `Disconnected from Beacon (${f.err}); retrying in ${Math.round(f.delay / 1000)} s…`;
  banner.hidden = false;
}

// Blocking-query loop on `path`: calls onData(data, status) on the first answer and whenever
// X-Consul-Index changes; backs off 1 s → 10 s on errors; stops when `signal` aborts.
// Endpoints without an index (or that answer at once with the same index) are re-polled every 5 s.
// onError(e) may return true to stop the loop (e.g. to fall back to another endpoint).
function watch(signal, path, onData, { allow404 = false, onError } = {}) {
  const id = ++failSeq;
  signal.addEventListener('abort', () => setFailing(id, null), { once: true });
  (async () => {
    let index = 0, delay = 1000, first = true;
    while (!signal.aborted) {
      const started = Date.now();
      try {
        const q = index ? `${path.includes('?') ? '&' : '?'}index=${index}&wait=30s` : '';
        const r = await api(path + q, { signal, allow404 });
        if (signal.aborted) return;
        setFailing(id, null);
        delay = 1000;
        if (r.index == null || !Number.isFinite(r.index)) {
          onData(r.data, r.status);
          index = 0;
          await sleep(5000, signal);
          continue;
        }
        const next = Math.max(r.index, 1);
        const changed = first || next !== index;
        first = false;
        if (changed) onData(r.data, r.status);
        // Consul: an index that goes backwards means start over.
        index = next < index ? 0 : next;
        if (!changed && Date.now() - started < 1000) await sleep(5000, signal);
      } catch (e) {
        if (signal.aborted || isAbort(e)) return;
        if (onError && onError(e)) return setFailing(id, null);
        setFailing(id, delay, e.status ? e.message : 'no connection');
        await sleep(delay, signal);
        delay = Math.min(delay * 2, 10000);
      }
    }
  })();
}

// Runs `fn` (async) now, and again whenever asked; only the latest run's result is rendered.
// A failed run is retried with backoff, showing the banner.
function refresher(signal, fn) {
  let gen = 0, delay = 1000;
  const id = ++failSeq;
  signal.addEventListener('abort', () => setFailing(id, null), { once: true });
  const run = async () => {
    const my = ++gen;
    try {
      const apply = await fn();
      if (my !== gen || signal.aborted) return;
      setFailing(id, null);
      delay = 1000;
      apply();
    } catch (e) {
      if (signal.aborted || isAbort(e) || my !== gen) return;
      setFailing(id, delay, e.status ? e.message : 'no connection');
      await sleep(delay, signal);
      delay = Math.min(delay * 2, 10000);
      if (my === gen && !signal.aborted) run();
    }
  };
  return run;
}

// ---------- health ----------

const RANK = { passing: 0, warning: 1, critical: 2 };
const rank = (s) => (s in RANK ? RANK[s] : 2);
const worst = (checks) => (checks || []).reduce((w, c) => (rank(c.Status) > rank(w) ? c.Status : w), 'passing');
const ICON = { passing: '✓', warning: '!', critical: '✕' };
function badge(status) {
  const s = status in RANK ? status : 'critical';
  return h('span', { class: `badge ${s}` }, h('span', { 'aria-hidden': 'true' }, ICON[s] + ' '), status);
}
function tagList(tags) {
  if (!tags || !tags.length) return h('span', { class: 'muted' }, '—');
  return h('ul', { class: 'tags' }, tags.map((t) => h('li', {}, t)));
}

// ---------- rendering ----------

function setTitle(...parts) { document.title = [...parts, 'Beacon'].join(' - '); }

// Replaces the view's content, keeping keyboard focus on the "same" link if it is re-rendered.
function render(...kids) {
  const a = document.activeElement;
  const keep = a && main.contains(a) && a !== main ? (a.getAttribute('href') || a.id) : null;
  main.replaceChildren(...kids.flat(Infinity).filter(Boolean));
  if (keep) {
    const again = [...main.querySelectorAll('[href],[id]')].find((e) => (e.getAttribute('href') || e.id) === keep);
    if (again) again.focus();
  }
}
function flashEl() {
  if (!flash) return null;
  const el = h('p', { class: 'note ok', role: 'status' }, flash);
  flash = null;
  return el;
}
// Tables scroll sideways inside their own box on narrow screens instead of widening the page.
const table = (caption, heads, rows, attrs = {}) => h('div', { class: 'scroll' },
  h('table', attrs, h('caption', {}, caption),
    h('thead', {}, h('tr', {}, heads.map((x) => h('th', { scope: 'col' }, x)))),
    h('tbody', {}, rows)));
const loading = () => h('p', { class: 'muted' }, 'Loading…');
const empty = (text) => h('p', { class: 'empty' }, text);

// ---------- views ----------

function servicesView(signal) {
  setTitle('Services');
  const fl = flashEl();
  render(h('h1', { tabindex: '-1' }, 'Services'), fl, loading());
  let catalog = null;
  const refresh = refresher(signal, async () => {
    const names = Object.keys(catalog).sort();
    const healths = await Promise.all(names.map((n) =>
      api(`/v1/health/service/${encodeURIComponent(n)}`, { signal }).then((r) => r.data || [])));
    return () => {
      const rows = names.map((name, i) => {
        const count = { passing: 0, warning: 0, critical: 0 };
        for (const inst of healths[i]) { const w = worst(inst.Checks); count[w in count ? w : 'critical']++; }
        const overall = healths[i].length ? worst(healths[i].map((x) => ({ Status: worst(x.Checks) }))) : null;
        const cnt = (s) => h('td', { class: `num count-${s}` }, count[s] ? h('span', { class: `count ${s}` }, count[s]) : h('span', { class: 'zero' }, '0'));
        return h('tr', { 'data-service': name },
          h('th', { scope: 'row' }, h('a', { href: ui(`services/${encodeURIComponent(name)}/instances`) }, name)),
          h('td', { class: 'health' }, overall ? badge(overall) : h('span', { class: 'muted' }, 'no instances')),
          cnt('passing'), cnt('warning'), cnt('critical'),
          h('td', {}, tagList(catalog[name])));
      });
      render(h('h1', { tabindex: '-1' }, 'Services'), fl,
        names.length
          ? table(`${names.length} service${names.length === 1 ? '' : 's'}; instance counts by health`,
            ['Service', 'Health', 'Passing', 'Warning', 'Critical', 'Tags'], rows, { class: 'services' })
          : empty('No services are registered.'));
    };
  });
  watch(signal, '/v1/catalog/services', (d) => { catalog = d || {}; refresh(); });
  watch(signal, '/v1/health/state/any', () => { if (catalog) refresh(); });
}

// `byService`: name the service a check belongs to (node view); otherwise say "service"/"node".
function checksTable(caption, checks, { byService = false } = {}) {
  if (!checks.length) return empty('No checks.');
  const rows = checks.map((c) => h('tr', { 'data-check': c.CheckID },
    h('th', { scope: 'row' }, c.Name || c.CheckID, c.Name && c.Name !== c.CheckID ? h('div', { class: 'muted small id' }, c.CheckID) : null),
    h('td', {}, !c.ServiceID ? h('span', { class: 'muted' }, 'node') : byService ? (c.ServiceName || c.ServiceID) : 'service'),
    h('td', { class: 'status' }, badge(c.Status)),
    h('td', { class: 'output' }, c.Output ? h('pre', {}, c.Output) : h('span', { class: 'muted' }, 'no output'))));
  return table(caption, ['Check', byService ? 'Service' : 'Kind', 'Status', 'Output'], rows, { class: 'checks' });
}

function instancesView(signal, name) {
  setTitle(name, 'Services');
  const crumbs = h('nav', { 'aria-label': 'Breadcrumb', class: 'crumbs' }, h('a', { href: ui('services') }, 'Services'));
  const head = () => [crumbs, h('h1', { tabindex: '-1' }, name), h('h2', { class: 'sub' }, 'Instances')];
  render(head(), loading());
  watch(signal, `/v1/health/service/${encodeURIComponent(name)}`, (list) => {
    list = (list || []).slice().sort((a, b) => (a.Node.Node + a.Service.ID).localeCompare(b.Node.Node + b.Service.ID));
    if (!list.length) return render(head(), empty(`No instances of “${name}” are registered.`));
    render(head(), list.map((inst) => {
      const s = inst.Service, n = inst.Node;
      const addr = `${s.Address || n.Address}:${s.Port}`;
      return h('section', { class: 'card instance', 'data-instance': s.ID, 'aria-label': `Instance ${s.ID}` },
        h('h3', {}, s.ID, ' ', badge(worst(inst.Checks))),
        h('dl', { class: 'facts' },
          h('dt', {}, 'Node'), h('dd', {}, h('a', { href: ui(`nodes/${encodeURIComponent(n.Node)}`) }, n.Node)),
          h('dt', {}, 'Address'), h('dd', {}, h('code', {}, addr)),
          h('dt', {}, 'ID'), h('dd', {}, h('code', {}, s.ID)),
          h('dt', {}, 'Tags'), h('dd', {}, tagList(s.Tags))),
        checksTable(`Checks of ${s.ID}`, inst.Checks || []));
    }));
  });
}

function summary(checks) {
  if (!checks.length) return h('span', { class: 'muted' }, 'no checks');
  const n = { passing: 0, warning: 0, critical: 0 };
  for (const c of checks) n[c.Status in n ? c.Status : 'critical']++;
  return Object.keys(n).filter((s) => n[s]).map((s) => `${n[s]} ${s}`).join(', ');
}

function nodesView(signal) {
  setTitle('Nodes');
  render(h('h1', { tabindex: '-1' }, 'Nodes'), loading());
  let nodes = null, checks = [];
  const draw = () => {
    if (!nodes) return;
    const by = new Map();
    for (const c of checks) (by.get(c.Node) || by.set(c.Node, []).get(c.Node)).push(c);
    const rows = nodes.slice().sort((a, b) => a.Node.localeCompare(b.Node)).map((n) => {
      const cs = by.get(n.Node) || [];
      return h('tr', { 'data-node': n.Node },
        h('th', { scope: 'row' }, h('a', { href: ui(`nodes/${encodeURIComponent(n.Node)}`) }, n.Node)),
        h('td', {}, h('code', {}, n.Address)),
        h('td', { class: 'health' }, badge(worst(cs))),
        h('td', { class: 'summary' }, summary(cs)));
    });
    render(h('h1', { tabindex: '-1' }, 'Nodes'),
      rows.length ? table(`${rows.length} node${rows.length === 1 ? '' : 's'}; health is the worst check on the node`,
        ['Node', 'Address', 'Health', 'Checks'], rows, { class: 'nodes' }) : empty('No nodes are registered.'));
  };
  watch(signal, '/v1/catalog/nodes', (d) => { nodes = d || []; draw(); });
  watch(signal, '/v1/health/state/any', (d) => { checks = d || []; draw(); });
}

function nodeView(signal, name) {
  setTitle(name, 'Nodes');
  const crumbs = h('nav', { 'aria-label': 'Breadcrumb', class: 'crumbs' }, h('a', { href: ui('nodes') }, 'Nodes'));
  render(crumbs, h('h1', { tabindex: '-1' }, name), loading());
  let info, checks;
  const draw = () => {
    if (info === undefined || checks === undefined) return;
    if (!info || !info.Node) return render(crumbs, h('h1', { tabindex: '-1' }, name), empty(`No node named “${name}” is registered.`));
    const svcs = Object.values(info.Services || {}).sort((a, b) => a.ID.localeCompare(b.ID));
    render(crumbs, h('h1', { tabindex: '-1' }, name, ' ', badge(worst(checks))),
      h('dl', { class: 'facts' }, h('dt', {}, 'Address'), h('dd', {}, h('code', {}, info.Node.Address))),
      h('h2', {}, 'Checks'), checksTable(`Checks on ${name}`, checks, { byService: true }),
      h('h2', {}, 'Services'),
      svcs.length ? table(`Services on ${name}`, ['Service', 'ID', 'Address', 'Tags'], svcs.map((s) => h('tr', { 'data-service': s.Service },
        h('th', { scope: 'row' }, h('a', { href: ui(`services/${encodeURIComponent(s.Service)}/instances`) }, s.Service)),
        h('td', {}, h('code', {}, s.ID)),
        h('td', {}, h('code', {}, `${s.Address || info.Node.Address}:${s.Port}`)),
        h('td', {}, tagList(s.Tags)))), { class: 'node-services' }) : empty('No services on this node.'));
  };
  watch(signal, `/v1/catalog/node/${encodeURIComponent(name)}`, (d) => { info = d; draw(); });
  watch(signal, `/v1/health/node/${encodeURIComponent(name)}`, (d) => { checks = d || []; draw(); });
}

function kvCrumbs(prefix, last) {
  const parts = prefix.split('/').filter((_, i, a) => i < a.length - 1);
  const kids = [h('a', { href: ui('kv/') }, 'Key/Value')];
  let acc = '';
  parts.forEach((p, i) => {
    acc += p + '/';
    kids.push(' / ');
    kids.push(!last && i === parts.length - 1 ? h('span', { 'aria-current': 'page' }, p) : h('a', { href: ui(`kv/${encKey(acc)}`) }, p));
  });
  return h('nav', { 'aria-label': 'Breadcrumb', class: 'crumbs' }, kids);
}

function kvFolderView(signal, prefix) {
  setTitle(prefix || 'Key/Value', ...(prefix ? ['Key/Value'] : []));
  const fl = flashEl();
  const title = prefix ? prefix : 'Key/Value';
  const tools = h('p', { class: 'tools' }, h('a', { class: 'button', href: ui('kv/create') + (prefix ? `?parent=${encodeURIComponent(prefix)}` : '') }, 'Create'));
  const head = () => [kvCrumbs(prefix, false), h('h1', { tabindex: '-1' }, title), fl, tools];
  render(head(), loading());
  watch(signal, `/v1/kv/${encKey(prefix)}?keys&separator=/`, (keys) => {
    keys = (keys || []).filter((k) => k !== prefix).sort();
    if (!keys.length) return render(head(), empty(prefix ? 'No keys in this folder.' : 'No keys yet. Use “Create” to add one.'));
    render(head(), table(`${keys.length} item${keys.length === 1 ? '' : 's'} in ${prefix || 'the root'}`, ['Name', 'Kind'], keys.map((k) => {
      const folder = k.endsWith('/');
      const label = k.slice(prefix.length);
      return h('tr', { 'data-key': k },
        h('th', { scope: 'row' }, h('a', { href: ui(`kv/${encKey(k)}${folder ? '' : '/edit'}`), class: folder ? 'folder' : 'key' }, label)),
        h('td', {}, folder ? 'Folder' : 'Key'));
    }), { class: 'kv' }));
  }, { allow404: true });
}

function decodeValue(b64) {
  if (!b64) return { text: '', binary: false };
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  try { return { text: new TextDecoder('utf-8', { fatal: true }).decode(bytes), binary: false }; } catch { return { text: b64, binary: true }; }
}

function kvEditView(signal, key) {
  setTitle(key, 'Key/Value');
  const parent = key.includes('/') ? key.slice(0, key.lastIndexOf('/') + 1) : '';
  const msg = h('div', { class: 'msg', role: 'alert' });
  const stale = h('div', { class: 'msg', role: 'status' });
  const value = h('textarea', { id: 'kv-value', name: 'value', rows: '10', spellcheck: 'false' });
  const meta = h('p', { class: 'muted small', id: 'kv-meta' });
  const save = h('button', { type: 'submit', class: 'primary' }, 'Save');
  const del = h('button', { type: 'button', class: 'danger', onclick: () => { confirmBox.hidden = false; confirmBtn.focus(); } }, 'Delete');
  const confirmBtn = h('button', { type: 'button', class: 'danger', onclick: () => doDelete() }, 'Confirm delete');
  const confirmBox = h('div', { class: 'confirm', role: 'group', 'aria-label': 'Confirm delete' },
    h('p', {}, 'Delete ', h('code', {}, key), '? This cannot be undone.'), confirmBtn, ' ',
    h('button', { type: 'button', onclick: () => { confirmBox.hidden = true; del.focus(); } }, 'Cancel'));
  confirmBox.hidden = true;
  let loaded = null, latest = null, busy = false;
  const say = (el, cls, text) => { el.className = `msg ${cls}`; el.textContent = text; };

  const fill = (entry) => {
    loaded = entry;
    const v = decodeValue(entry.Value);
    value.value = v.text;
    value.readOnly = v.binary;
    save.disabled = v.binary;
    meta.textContent = `ModifyIndex ${entry.ModifyIndex} · CreateIndex ${entry.CreateIndex} · Flags ${entry.Flags}` +
      (entry.Session ? ` · locked by session ${entry.Session}` : '') + (v.binary ? ' · binary value shown as base64 (read-only)' : '');
    checkStale();
  };
  const checkStale = () => {
    if (busy || !loaded) return;
    if (latest === 'gone') say(stale, 'warn', 'This key has been deleted by someone else.');
    else if (latest && latest.ModifyIndex !== loaded.ModifyIndex) {
      say(stale, 'warn', 'This key has changed elsewhere since you loaded it. ');
      stale.append(h('button', { type: 'button', onclick: () => { fill(latest); say(msg, 'info', 'Loaded the latest value.'); } }, 'Load latest value'));
    } else { stale.className = 'msg'; stale.textContent = ''; }
  };
  const reload = async () => {
    const r = await api(`/v1/kv/${encKey(key)}`, { signal, allow404: true });
    if (r.status === 404) { latest = 'gone'; return false; }
    latest = r.data[0];
    fill(latest);
    return true;
  };

  const form = h('form', {
    class: 'kv-form', onsubmit: async (e) => {
      e.preventDefault();
      if (busy || !loaded) return;
      busy = true; save.disabled = true;
      say(msg, 'info', 'Saving…');
      try {
        const r = await api(`/v1/kv/${encKey(key)}?cas=${loaded.ModifyIndex}`, { method: 'PUT', body: value.value, signal });
        if (r.data === true) {
          await reload();
          say(msg, 'ok', 'Saved.');
        } else {
          const exists = await reload();
          say(msg, 'error', exists
            ? 'Not saved: this key was changed since you loaded it. The latest value is now shown; make your edit again and save.'
            : 'Not saved: this key was deleted since you loaded it.');
        }
      } catch (err) {
        if (!isAbort(err)) say(msg, 'error', `Not saved: ${err.message}`);
      } finally { busy = false; save.disabled = !!value.readOnly; checkStale(); }
    },
  },
  h('label', { for: 'kv-value' }, 'Value'), value, meta,
  h('div', { class: 'actions' }, save, ' ', del), confirmBox);

  async function doDelete() {
    confirmBtn.disabled = true;
    try {
      await api(`/v1/kv/${encKey(key)}`, { method: 'DELETE', signal });
      flash = `Deleted key “${key}”.`;
      navigate(ui(`kv/${encKey(parent)}`));
    } catch (err) {
      if (!isAbort(err)) { say(msg, 'error', `Not deleted: ${err.message}`); confirmBtn.disabled = false; }
    }
  }

  const fl = flashEl();
  render(kvCrumbs(key, true), h('h1', { tabindex: '-1' }, h('span', { class: 'muted' }, 'Key '), h('code', {}, key)), fl, loading());
  watch(signal, `/v1/kv/${encKey(key)}`, (d, status) => {
    latest = status === 404 ? 'gone' : d[0];
    if (loaded || busy) return checkStale();
    if (latest === 'gone') return render(kvCrumbs(key, true), h('h1', { tabindex: '-1' }, h('code', {}, key)), empty('This key does not exist.'),
      h('p', {}, h('a', { href: ui('kv/create') + `?parent=${encodeURIComponent(parent)}` }, 'Create a key')));
    render(kvCrumbs(key, true), h('h1', { tabindex: '-1' }, h('span', { class: 'muted' }, 'Key '), h('code', {}, key)), fl, stale, msg, form);
    fill(latest);
  }, { allow404: true });
}

function kvCreateView(signal) {
  setTitle('Create key', 'Key/Value');
  const parent = new URLSearchParams(location.search).get('parent') || '';
  const keyIn = h('input', { id: 'kv-key', name: 'key', type: 'text', required: true, autocomplete: 'off', spellcheck: 'false', 'aria-describedby': 'kv-key-help' });
  keyIn.value = parent;
  const value = h('textarea', { id: 'kv-value', name: 'value', rows: '10', spellcheck: 'false' });
  const msg = h('div', { class: 'msg', role: 'alert' });
  const save = h('button', { type: 'submit', class: 'primary' }, 'Create');
  const form = h('form', {
    class: 'kv-form', onsubmit: async (e) => {
      e.preventDefault();
      const key = keyIn.value;
      if (!key || key.startsWith('/')) return say('error', 'Enter a key name that does not start with “/”.');
      save.disabled = true;
      say('info', 'Creating…');
      try {
        const folder = key.endsWith('/');
        const r = await api(`/v1/kv/${encKey(key)}?cas=0`, { method: 'PUT', body: folder ? '' : value.value, signal });
        if (r.data !== true) { say('error', `Not created: “${key}” already exists.`); save.disabled = false; return; }
        flash = `Created ${folder ? 'folder' : 'key'} “${key}”.`;
        navigate(ui(`kv/${encKey(folder ? key : key.slice(0, key.lastIndexOf('/') + 1))}`));
      } catch (err) {
        if (!isAbort(err)) { say('error', `Not created: ${err.message}`); save.disabled = false; }
      }
    },
  },
  h('label', { for: 'kv-key' }, 'Key'), keyIn,
  h('p', { id: 'kv-key-help', class: 'muted small' }, 'Use “/” to nest keys in folders; end with “/” to create a folder.'),
  h('label', { for: 'kv-value' }, 'Value'), value,
  h('div', { class: 'actions' }, save, ' ', h('a', { href: ui(`kv/${encKey(parent)}`) }, 'Cancel')), msg);
  const say = (cls, text) => { msg.className = `msg ${cls}`; msg.textContent = text; };
  render(kvCrumbs(parent, true), h('h1', { tabindex: '-1' }, 'Create key'), form);
}

function serverStatusView(signal) {
  setTitle('Server status');
  render(h('h1', { tabindex: '-1' }, 'Server status'), loading());
  let leader, servers;
  const draw = () => {
    if (leader === undefined || servers === undefined) return;
    const rows = servers.map((s) => h('tr', { 'data-server': s.Node || s.Address, class: s.Leader ? 'leader' : null },
      h('th', { scope: 'row' }, s.Node || h('span', { class: 'muted' }, 'unknown')),
      h('td', {}, h('code', {}, s.Address)),
      h('td', {}, s.Leader ? h('span', { class: 'badge leader' }, h('span', { 'aria-hidden': 'true' }, '★ '), 'leader') : 'follower'),
      h('td', {}, s.Voter == null ? '—' : s.Voter ? 'yes' : 'no'),
      h('td', {}, s.ID ? h('code', { class: 'small' }, s.ID) : '—')));
    render(h('h1', { tabindex: '-1' }, 'Server status'),
      h('dl', { class: 'facts' }, h('dt', {}, 'Datacenter'), h('dd', {}, agent.dc),
        h('dt', {}, 'Leader'), h('dd', { id: 'leader' }, leader ? h('code', {}, leader) : h('span', { class: 'badge critical' }, 'no leader'))),
      rows.length ? table(`${rows.length} server${rows.length === 1 ? '' : 's'} in the Raft configuration`, ['Node', 'Address', 'Role', 'Voter', 'ID'], rows, { class: 'servers' })
        : empty('No servers are known.'));
  };
  watch(signal, '/v1/status/leader', (d) => { leader = d || ''; draw(); });
  let fellBack = false;
  watch(signal, '/v1/operator/raft/configuration', (d) => { servers = (d && d.Servers) || []; draw(); }, {
    // Not there, or no operator permission: fall back to the peer list (once).
    onError: (e) => {
      if (fellBack || !e.status || e.status >= 500 && e.status !== 501) return false;
      fellBack = true;
      watch(signal, '/v1/status/peers', (d) => { servers = (d || []).map((a) => ({ Address: a, Leader: a === leader })); draw(); });
      return true;
    },
  });
}

function notFoundView(text) {
  setTitle('Not found');
  render(h('h1', { tabindex: '-1' }, 'Page not found'),
    h('p', {}, text || `Nothing lives at ${location.pathname}.`),
    h('p', {}, h('a', { href: agent.dc ? ui('services') : '/ui/' }, 'Go to the services list')));
}

// ---------- routing ----------

function setSection(section) {
  document.querySelectorAll('nav[aria-label="Main"] a').forEach((a) => {
    if (a.dataset.section === section) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  });
}

function navigate(url, replace = false, focus = !replace) {
  history[replace ? 'replaceState' : 'pushState'](null, '', url);
  route(focus);
}

function route(moveFocus = false) {
  if (view) view.ctrl.abort();
  view = { ctrl: new AbortController() };
  const signal = view.ctrl.signal;
  const rest = location.pathname.replace(/^\/ui\/?/, '');
  const segs = rest.split('/');
  const dc = decKey(segs[0]);
  if (rest === '' || (segs.length <= 2 && !segs[1])) return navigate(ui('services'), true, moveFocus);
  const [section, a, b] = segs.slice(1);
  setSection({ services: 'services', nodes: 'nodes', kv: 'kv', overview: 'servers' }[section] || null);
  if (dc !== agent.dc) {
    notFoundView(`Datacenter “${dc}” is not known to this agent (it serves “${agent.dc}”).`);
  } else if (section === 'services' && (a === undefined || (a === '' && b === undefined))) {
    servicesView(signal);
  } else if (section === 'services' && a && (b === undefined || b === '') && segs.length <= 4) {
    return navigate(ui(`services/${a}/instances`), true, moveFocus);
  } else if (section === 'services' && a && b === 'instances' && segs.length === 4) {
    instancesView(signal, decKey(a));
  } else if (section === 'nodes' && (a === undefined || (a === '' && segs.length === 3))) {
    nodesView(signal);
  } else if (section === 'nodes' && a && segs.length === 3) {
    nodeView(signal, decKey(a));
  } else if (section === 'kv') {
    const kv = segs.slice(2).join('/');
    if (kv === 'create') kvCreateView(signal);
    else if (kv.endsWith('/edit') && kv.length > 5) kvEditView(signal, decKey(kv.slice(0, -5)));
    else if (kv === '' || kv.endsWith('/')) kvFolderView(signal, decKey(kv));
    else return navigate(ui(`kv/${kv}/`), true, moveFocus);
  } else if (section === 'overview' && (a === undefined || a === '') && segs.length <= 3) {
    return navigate(ui('overview/server-status'), true, moveFocus);
  } else if (section === 'overview' && a === 'server-status' && segs.length === 3) {
    serverStatusView(signal);
  } else {
    setSection(null);
    notFoundView();
  }
  if (moveFocus) {
    window.scrollTo(0, 0);
    const h1 = main.querySelector('h1');
    (h1 || main).focus({ preventScroll: true });
  }
}

// Same-origin links under /ui/ are handled here; modified clicks open normally.
document.addEventListener('click', (e) => {
  if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  const a = e.target.closest('a[href]');
  if (!a || a.target || a.hasAttribute('download') || a.origin !== location.origin) return;
  if (!a.pathname.startsWith('/ui/') || a.pathname.startsWith('/ui/assets/')) return;
  if (a.getAttribute('href').startsWith('#')) return;
  e.preventDefault();
  if (a.pathname + a.search === location.pathname + location.search) return route(true);
  navigate(a.pathname + a.search + a.hash);
});
window.addEventListener('popstate', () => route(false));

// Start: learn the datacenter (retrying with backoff), then route.
(async function start() {
  const ctrl = new AbortController();
  let delay = 1000;
  for (;;) {
    try {
      const self = (await api('/v1/agent/self', { signal: ctrl.signal })).data;
      agent.dc = self.Config.Datacenter;
      agent.node = self.Config.NodeName;
      setFailing(0, null);
      break;
    } catch (e) {
      setFailing(0, delay, e.status ? e.message : 'no connection');
      await sleep(delay);
      delay = Math.min(delay * 2, 10000);
    }
  }
  document.getElementById('dc').textContent = agent.dc;
  const links = { services: 'services', nodes: 'nodes', kv: 'kv/', servers: 'overview/server-status' };
  document.querySelectorAll('nav[aria-label="Main"] a').forEach((a) => { a.href = ui(links[a.dataset.section]); });
  document.getElementById('brand').href = ui('services');
  route(false);
}());
