// NeuroDiff dashboard: a single-page app over the /v1 API. Vanilla JS, hash routing, no build.
//
// Security: every string from the server (model references, token strings, rule names, audit
// text) is attacker-controlled. It reaches the DOM only through textContent and setAttribute
// (the el() helper), never innerHTML; ECharts tooltips are HTML, so their formatters pass every
// string through esc(). Links are built from ids with encodeURIComponent, never from server URLs.
'use strict';

// Script errors and CSP violations, kept where the browser test reads them (a page that fails
// halfway looks fine in a screenshot).
window.__ndErrors = [];
window.addEventListener('error', (e) => window.__ndErrors.push(`error: ${e.message}`));
window.addEventListener('unhandledrejection', (e) => window.__ndErrors.push(`rejection: ${e.reason}`));
document.addEventListener('securitypolicyviolation', (e) => window.__ndErrors.push(`csp: ${e.violatedDirective} ${e.blockedURI}`));

const TOKEN_KEY = 'neurodiff.token';
const NEXT_KEY = 'neurodiff.next';
const POLL_MS = 2000;
// The fixed lists (analyses, statuses, metrics, hooks, severities) come from the API's
// /v1/vocabulary before the first page renders, so the menus offer exactly what it accepts.
let VOCAB = null;
const PALETTE = ['#2563eb', '#dc2626', '#16a34a', '#d97706', '#7c3aed', '#0891b2', '#db2777', '#4b5563',
  '#65a30d', '#9333ea'];
const RULE_EXAMPLE = [
  { name: 'weights-moved', severity: 'high', scope: 'tensor', metric: 'rel_fro', op: '>', value: 0.05 },
  { name: 'low-rank-large', severity: 'critical', scope: 'tensor', metric: 'rel_fro', op: '>', value: 0.2,
    and: [{ metric: 'stable_rank', op: '<', value: 4.5 }] },
];

// ---------------------------------------------------------------- DOM and formatting helpers

/** Creates an element. Attributes named on* become listeners; children may be nodes, strings,
 *  numbers or (nested) arrays; null/undefined/false are skipped. */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') node.addEventListener(k.slice(2), v);
    else if (k === 'class') node.className = v;
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}
const $ = (sel, root = document) => root.querySelector(sel);
const ESC = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
/** For the few places that build HTML (chart tooltips). */
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ESC[c]);
const classSafe = (s) => String(s).replace(/[^a-zA-Z0-9_-]/g, '');

function fmt(x) {
  if (x === null || x === undefined || x === '') return '—';
  if (typeof x === 'boolean') return x ? 'yes' : 'no';
  if (typeof x !== 'number') return typeof x === 'object' ? JSON.stringify(x) : String(x);
  if (!Number.isFinite(x) || (Number.isInteger(x) && Math.abs(x) < 1e9)) return String(x);
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return x.toExponential(3);
  return String(Number(x.toPrecision(4)));
}
const when = (s) => (s ? new Date(s).toLocaleString() : '—');
const short = (id) => String(id).slice(0, 8);
const num = (x) => (typeof x === 'number' && Number.isFinite(x) ? x : null);
const maxBy = (xs, f) => xs.reduce((best, x) => (best === null || f(x) > f(best) ? x : best), null);
const uniq = (xs) => [...new Set(xs)];
/** Tokens often carry leading spaces and newlines; show them visibly. */
const visTok = (t) => String(t ?? '').replace(/\n/g, '\\n').replace(/\t/g, '\\t');
function fmtBytes(n) {
  if (typeof n !== 'number') return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

const badge = (kind, word) => el('span', { class: `badge ${kind}-${classSafe(word)}` }, word);
const auditLink = (id) => el('a', { href: '#/audit/' + encodeURIComponent(id), title: id, class: 'mono' }, short(id));
const targetText = (spec) => (spec && spec.target ? `${spec.target.kind}: ${spec.target.reference}` : '—');
const tok = (t, cls, title) => el('span', { class: cls ? `tok ${cls}` : 'tok', title }, visTok(t));
const tokens = (list, cls, hits) => el('div', { class: 'tokens' }, (list || []).map((t) =>
  tok(t.token, hits && hits.has(String(t.token).trim().toLowerCase()) ? 'hit' : cls,
    `id ${t.id}` + (t.prob !== undefined ? `, p = ${fmt(t.prob)}` : '') +
    (t.mean_prob_delta !== undefined ? `, Δp = ${fmt(t.mean_prob_delta)}` : ''))));

function kv(pairs) {
  return el('table', { class: 'kv' }, el('tbody', {}, pairs.filter(Boolean).map(([k, v]) =>
    el('tr', {}, el('th', {}, k), el('td', {}, v === null || v === undefined || v === '' ? '—' : v)))));
}
function section(parent, title, id) {
  const s = el('section', { id }, el('h2', {}, title));
  parent.append(s);
  return s;
}
const field = (label, input, cls) => el('label', { class: cls }, label, input);
const input = (id, attrs = {}) => el('input', { id, name: id, ...attrs });
function select(id, options, value) {
  return el('select', { id, name: id }, options.map((o) => {
    const [v, text] = Array.isArray(o) ? o : [o, o];
    return el('option', { value: v, selected: v === value }, text);
  }));
}
const val = (id) => ($('#' + id).value || '').trim();

/** A table whose headers sort it (numbers numerically, missing values last). columns:
 *  {label, key | value(row), cell(row) -> node/string, num, cls, sort: false}. opts: id, row(r) ->
 *  attributes of the tr, limit (rows shown before a "show all" button), empty. `node.update(rows)`
 *  redraws with new rows, keeping the sort. */
function table(columns, rows, opts = {}) {
  const node = el('table', { id: opts.id });
  const headRow = el('tr');
  const tbody = el('tbody');
  node.append(el('thead', {}, headRow), tbody);
  let data = rows.slice();
  let sortIdx = -1;
  let dir = 1;
  let showAll = !opts.limit;
  const value = (c, r) => (c.value ? c.value(r) : r[c.key]);
  const ths = columns.map((c, i) => {
    const th = el('th', { class: [c.num ? 'num' : '', c.sort === false ? '' : 'sortable'].join(' ').trim() || undefined }, c.label);
    if (c.sort !== false) {
      th.addEventListener('click', () => {
        dir = sortIdx === i ? -dir : (c.num ? -1 : 1); // numbers: largest first on the first click
        sortIdx = i;
        sort();
        draw();
      });
    }
    headRow.append(th);
    return th;
  });
  function sort() {
    if (sortIdx < 0) return;
    const c = columns[sortIdx];
    data.sort((a, b) => {
      const x = value(c, a);
      const y = value(c, b);
      const xn = x === null || x === undefined || Number.isNaN(x);
      const yn = y === null || y === undefined || Number.isNaN(y);
      if (xn || yn) return xn === yn ? 0 : (xn ? 1 : -1);
      if (typeof x === 'number' && typeof y === 'number') return dir * (x - y);
      return dir * String(x).localeCompare(String(y), undefined, { numeric: true });
    });
  }
  function draw() {
    ths.forEach((th, i) => {
      th.classList.toggle('asc', i === sortIdx && dir > 0);
      th.classList.toggle('desc', i === sortIdx && dir < 0);
    });
    const shown = showAll ? data : data.slice(0, opts.limit);
    const trs = shown.map((r) => el('tr', opts.row ? opts.row(r) : {}, columns.map((c) => {
      const v = c.cell ? c.cell(r) : fmt(value(c, r));
      return el('td', { class: [c.num ? 'num' : '', c.cls || ''].join(' ').trim() || undefined }, v);
    })));
    if (!shown.length) trs.push(el('tr', {}, el('td', { colspan: columns.length, class: 'muted' }, opts.empty || 'nothing to show')));
    if (shown.length < data.length) {
      trs.push(el('tr', {}, el('td', { colspan: columns.length },
        el('button', { type: 'button', class: 'secondary', onclick: () => { showAll = true; draw(); } }, `show all ${data.length} rows`))));
    }
    tbody.replaceChildren(...trs);
  }
  node.update = (newRows) => { data = newRows.slice(); sort(); draw(); };
  draw();
  return node;
}
const scroll = (node) => el('div', { class: 'scroll' }, node);

// ---------------------------------------------------------------- API and errors

class ApiError extends Error {
  constructor(status, message, path) {
    super(message);
    this.status = status;
    this.path = path;
  }
}
const token = () => sessionStorage.getItem(TOKEN_KEY) || '';

/** One call to the API with the bearer token; non-2xx answers throw ApiError with the JSON `error`. */
async function request(method, path, body, headers = {}) {
  const init = { method, cache: 'no-store', headers: { Authorization: 'Bearer ' + token(), ...headers } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  if (!res.ok) {
    let message = res.statusText || 'request failed';
    try {
      const j = await res.json();
      if (j && typeof j.error === 'string') message = j.error;
    } catch (_) { /* not JSON: keep the status text */ }
    throw new ApiError(res.status, message, path);
  }
  return res;
}
async function api(method, path, body, headers) {
  const text = await (await request(method, path, body, headers)).text();
  return text ? JSON.parse(text) : null;
}
const enc = encodeURIComponent;

function describe(e) {
  if (e instanceof ApiError) {
    // The API answers 404 alike for a missing id and another team's: say both.
    if (e.status === 404) return `404: not found (or not your team's): ${e.message}`;
    return `${e.status}: ${e.message}`;
  }
  if (e instanceof TypeError) return `network error: ${e.message}`;
  return e && e.message ? e.message : String(e);
}
let keepError = false; // an error shown just before a redirect survives the next render
function showError(e) {
  const box = $('#error');
  box.textContent = describe(e);
  box.hidden = false;
}
function clearError() {
  const box = $('#error');
  box.textContent = '';
  box.hidden = true;
}
/** Shows an error; a 401 outside the login page means the token is gone or revoked: log out. */
function fail(e) {
  showError(e);
  if (e instanceof ApiError && e.status === 401 && !location.hash.startsWith('#/login')) {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.setItem(NEXT_KEY, location.hash);
    keepError = true;
    location.hash = '#/login';
  }
}
function newId() {
  // crypto.randomUUID needs a secure context; getRandomValues works over plain http too.
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}
async function download(path, name) {
  try {
    const blob = await (await request('GET', path)).blob();
    const url = URL.createObjectURL(blob);
    const a = el('a', { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (e) { fail(e); }
}

// ---------------------------------------------------------------- pages, polling, charts

/** The current page: async work checks `alive` after each await, so a late answer never draws
 *  over the page the user moved to; leaving a page stops its polls and disposes its charts. */
let page = null;
function newPage() {
  if (page) page.close();
  page = {
    alive: true,
    charts: [],
    close() { this.alive = false; this.disposeCharts(); },
    disposeCharts() { this.charts.forEach((c) => c.dispose()); this.charts = []; },
    /** Runs fn every ms while the page lives and fn does not return false; errors are shown, and
     *  polling stops on those that will not go away (401, 403, 404). */
    every(ms, fn) {
      const tick = async () => {
        if (!this.alive) return;
        let again = true;
        try { again = await fn(); } catch (e) {
          if (!this.alive) return;
          fail(e);
          again = !(e instanceof ApiError && [401, 403, 404].includes(e.status));
        }
        if (again !== false && this.alive) setTimeout(tick, ms);
      };
      setTimeout(tick, ms);
    },
  };
  return page;
}
window.addEventListener('resize', () => page && page.charts.forEach((c) => c.resize()));

const CHART_DEFAULTS = {
  animation: false,
  color: PALETTE,
  textStyle: { fontFamily: 'system-ui, sans-serif' },
  toolbox: { right: 8, top: 0, feature: { dataZoom: {}, restore: {}, saveAsImage: {} } },
};
/** A chart in a new div under parent (which must be in the document, so it has a width). */
function chart(parent, option, tall) {
  const div = el('div', { class: tall ? 'chart tall' : 'chart' });
  parent.append(div);
  if (!window.echarts) { div.textContent = 'charts unavailable: ECharts did not load'; return null; }
  const c = window.echarts.init(div);
  c.setOption({ ...CHART_DEFAULTS, ...option });
  page.charts.push(c);
  return c;
}
const lastVal = (v) => (Array.isArray(v) ? v[v.length - 1] : v);
function axisTip(params, xName) {
  const list = Array.isArray(params) ? params : [params];
  if (!list.length) return '';
  const head = (xName ? xName + ' ' : '') + (list[0].axisValueLabel ?? list[0].name ?? '');
  return [esc(head)].concat(list.map((p) =>
    `${p.marker || ''}${esc(p.seriesName)}: <b>${esc(fmt(lastVal(p.value)))}</b>`)).join('<br>');
}
/** Line (or bar) chart options. o: title, xName, yName, categories (else a value x axis), logY,
 *  bar, series [{name, data: [y] or [[x, y]]}]. A log axis cannot show 0 or less: those are gaps. */
function lineOption(o) {
  const pos = (v) => (typeof v === 'number' && v > 0 ? v : null);
  const clean = (d) => (Array.isArray(d) ? [d[0], o.logY ? pos(d[1]) : num(d[1])] : (o.logY ? pos(d) : num(d)));
  const top = o.title ? 24 : 0;
  return {
    title: o.title ? { text: o.title, left: 10, top: 0, textStyle: { fontSize: 13, fontWeight: 600 } } : undefined,
    legend: { type: 'scroll', top, left: 10, right: 120 },
    grid: { left: 20, right: 30, top: top + 52, bottom: 56, containLabel: true },
    xAxis: o.categories
      ? { type: 'category', data: o.categories, name: o.xName, nameLocation: 'middle', nameGap: 26 }
      : { type: 'value', name: o.xName, nameLocation: 'middle', nameGap: 26, min: 'dataMin', max: 'dataMax' },
    yAxis: { type: o.logY ? 'log' : 'value', name: o.yName, scale: !o.logY },
    tooltip: { trigger: 'axis', confine: true, formatter: (ps) => axisTip(ps, o.xName) },
    dataZoom: [{ type: 'inside', xAxisIndex: 0 }, { type: 'slider', xAxisIndex: 0, height: 16, bottom: 6 }],
    series: o.series.map((s) => ({
      type: o.bar ? 'bar' : 'line', name: s.name, symbolSize: 5, data: s.data.map(clean), ...(s.extra || {}),
    })),
  };
}
const lines = (parent, o) => chart(parent, lineOption(o), o.tall);
/** Heatmap. o: xs, ys (category labels), cells [[xi, yi, colourValue, ...]], min, max, colors,
 *  tip(cell) -> HTML (escape it!), legend(v) -> text of the colour scale, xName, yName. */
function heatmap(parent, o) {
  return chart(parent, {
    grid: { left: 20, right: 60, top: 30, bottom: 70, containLabel: true },
    xAxis: { type: 'category', data: o.xs, name: o.xName, splitArea: { show: true },
      axisLabel: { interval: 0, rotate: o.xs.length > 8 ? 40 : 0, width: 140, overflow: 'truncate' } },
    yAxis: { type: 'category', data: o.ys, name: o.yName, splitArea: { show: true } },
    visualMap: {
      min: o.min, max: o.max, dimension: 2, calculable: true, orient: 'horizontal', left: 'center', bottom: 2,
      itemHeight: 200, inRange: { color: o.colors || ['#f8fafc', '#93c5fd', '#1e3a8a'] }, formatter: o.legend,
    },
    tooltip: { trigger: 'item', confine: true, formatter: (p) => o.tip(p.data) },
    dataZoom: [{ type: 'inside', xAxisIndex: 0 }, { type: 'inside', yAxisIndex: 0 },
      { type: 'slider', yAxisIndex: 0, right: 8, width: 14 }],
    series: [{ type: 'heatmap', data: o.cells, emphasis: { itemStyle: { borderColor: '#111', borderWidth: 1 } } }],
  }, o.tall);
}
const span = (xs) => [Math.min(...xs), Math.max(...xs)];

// ---------------------------------------------------------------- router

const ROUTES = [
  [/^\/login$/, 'login', pageLogin],
  [/^\/logout$/, 'login', pageLogout],
  [/^\/audits$/, 'audits', pageAudits],
  [/^\/submit$/, 'submit', pageSubmit],
  [/^\/audit\/([^/]+)$/, 'audits', pageAudit],
  [/^\/compare\/([^/]+)\/([^/]+)$/, 'audits', pageCompare],
  [/^\/results$/, 'results', pageResults],
  [/^\/scans$/, 'scans', pageScans],
  [/^\/scan\/([^/]+)$/, 'scans', pageScan],
  [/^\/alerts$/, 'alerts', pageAlerts],
  [/^\/alert\/([^/]+)$/, 'alerts', pageAlert],
];
function decode(s) {
  try { return decodeURIComponent(s); } catch (_) { return s; }
}
async function render() {
  if (keepError) keepError = false; else clearError();
  const ctx = newPage();
  const main = $('#main');
  main.replaceChildren();
  const path = location.hash.replace(/^#/, '') || '/audits';
  const found = ROUTES.map(([re, nav, fn]) => [path.match(re), nav, fn]).find(([m]) => m);
  if (!found) { location.replace('#/audits'); return; }
  const [m, nav, fn] = found;
  if (!token() && fn !== pageLogin) {
    if (fn !== pageLogout) sessionStorage.setItem(NEXT_KEY, location.hash);
    location.replace('#/login');
    return;
  }
  document.body.classList.toggle('logged-out', !token());
  document.querySelectorAll('#nav a').forEach((a) => a.classList.toggle('active', a.dataset.nav === nav));
  try {
    if (!VOCAB) VOCAB = await api('GET', '/v1/vocabulary');
    await fn(ctx, main, ...m.slice(1).map(decode));
  } catch (e) {
    if (ctx.alive) fail(e);
  }
}
window.addEventListener('hashchange', render);

// ---------------------------------------------------------------- login

async function pageLogin(ctx, main) {
  const box = input('token', { type: 'password', autocomplete: 'off', size: 60, placeholder: 'nd_…' });
  const form = el('form', { id: 'login-form', class: 'card' },
    el('h1', {}, 'Sign in'),
    el('p', { class: 'muted' }, 'Paste an API token of your team. It is kept in this tab only (sessionStorage).'),
    el('div', { class: 'row' }, field('API token', box), el('button', { id: 'login', type: 'submit' }, 'Sign in')));
  main.append(form);
  box.focus();
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearError();
    const t = box.value.trim();
    if (!t) { showError(new Error('enter a token')); return; }
    sessionStorage.setItem(TOKEN_KEY, t);
    try {
      await api('GET', '/v1/audits?limit=1'); // any authenticated call validates the token
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      showError(e);
      return;
    }
    const next = sessionStorage.getItem(NEXT_KEY);
    sessionStorage.removeItem(NEXT_KEY);
    location.hash = next && !next.startsWith('#/log') ? next : '#/audits';
  });
}
async function pageLogout() {
  sessionStorage.removeItem(TOKEN_KEY);
  location.replace('#/login');
}

// ---------------------------------------------------------------- audits

const active = (a) => a.status === 'queued' || a.status === 'running';

async function pageAudits(ctx, main) {
  const selected = new Set();
  let audits = [];
  let next = null;
  const compare = el('button', { id: 'compare-btn', type: 'button', disabled: true }, 'Compare selected');
  const more = el('button', { id: 'more', type: 'button', class: 'secondary', hidden: true }, 'Load more');
  const status = select('f-status', [['', 'any status'], ...VOCAB.statuses], '');
  const search = input('f-search', { type: 'search', placeholder: 'search base / target / id', size: 32 });
  main.append(el('div', { class: 'toolbar' }, el('h1', {}, 'Audits'), el('span', { class: 'spacer' }),
    status, search, compare, el('a', { class: 'button', href: '#/submit' }, 'New audit')));
  const pick = (a) => el('input', {
    type: 'checkbox', class: 'pick', 'aria-label': 'select for comparison', checked: selected.has(a.id),
    onchange: (ev) => {
      if (ev.target.checked) selected.add(a.id); else selected.delete(a.id);
      compare.disabled = selected.size !== 2;
    },
  });
  const tbl = table([
    { label: '', sort: false, cell: pick },
    { label: 'audit', key: 'id', cell: (a) => auditLink(a.id) },
    { label: 'status', key: 'status', cls: 'status', cell: (a) => badge('status', a.status) },
    { label: 'progress', sort: false, cell: (a) => (a.progress.shards_total ? `${a.progress.shards_done}/${a.progress.shards_total}` : '') },
    { label: 'base', value: (a) => a.spec.base, cls: 'mono' },
    { label: 'target', value: (a) => targetText(a.spec), cls: 'mono' },
    { label: 'analyses', value: (a) => (a.spec.analyses || []).join(', ') },
    { label: 'created', key: 'created_at', cell: (a) => when(a.created_at) },
    { label: 'finished', key: 'finished_at', cell: (a) => when(a.finished_at) },
  ], [], { id: 'audits', row: (a) => ({ 'data-id': a.id }), empty: 'no audits' });
  main.append(scroll(tbl), el('p', {}, more));

  // The search is client-side (the API filters by exact model only); the status goes to the API.
  const draw = () => {
    const q = search.value.trim().toLowerCase();
    tbl.update(audits.filter((a) => !q || [a.id, a.spec.base, a.spec.target && a.spec.target.reference]
      .some((s) => String(s || '').toLowerCase().includes(q))));
    more.hidden = !next;
  };
  const query = (limit, cursor) => {
    const p = new URLSearchParams({ limit: String(limit) });
    if (status.value) p.set('status', status.value);
    if (cursor) p.set('cursor', cursor);
    return '/v1/audits?' + p;
  };
  const load = async () => {
    // Reload as many as are shown, so polling does not drop the pages loaded with "more".
    const pageData = await api('GET', query(Math.min(500, Math.max(100, audits.length))));
    if (!ctx.alive) return;
    const fresh = pageData.audits;
    // Past 500, the older rows loaded with "more" stay (and so does their cursor).
    const last = fresh.length ? fresh[fresh.length - 1].created_at : null;
    const ids = new Set(fresh.map((a) => a.id));
    const tail = last ? audits.filter((a) => !ids.has(a.id) && a.created_at < last) : [];
    audits = fresh.concat(tail);
    if (!tail.length) next = pageData.next_cursor;
    draw();
  };
  status.addEventListener('change', () => { audits = []; next = null; load().catch(fail); });
  search.addEventListener('input', draw);
  compare.addEventListener('click', () => {
    const [a, b] = [...selected];
    location.hash = `#/compare/${enc(a)}/${enc(b)}`;
  });
  more.addEventListener('click', async () => {
    try {
      const pageData = await api('GET', query(100, next));
      if (!ctx.alive) return;
      audits = audits.concat(pageData.audits);
      next = pageData.next_cursor;
      draw();
    } catch (e) { fail(e); }
  });
  await load();
  // Live status: refresh every 2 s while anything shown is queued or running, and every 30 s
  // otherwise (a scan may start an audit at any time).
  let idle = 0;
  ctx.every(POLL_MS, async () => {
    idle = audits.some(active) ? 0 : idle + 1;
    if (idle === 0 || idle % 15 === 0) await load();
  });
}

// ---------------------------------------------------------------- submit

function parseLayers(text) {
  if (!text) return undefined;
  const out = [];
  for (const part of text.split(/[\s,]+/).filter(Boolean)) {
    const m = part.match(/^(\d+)(?:-(\d+))?$/);
    if (!m) throw new Error(`layers: \`${part}\` is not a block index or a range like 4-7`);
    const [a, b] = [Number(m[1]), Number(m[2] ?? m[1])];
    for (let i = Math.min(a, b); i <= Math.max(a, b); i += 1) out.push(i);
  }
  return uniq(out);
}
function parseJson(text, name) {
  try { return JSON.parse(text); } catch (e) { throw new Error(`${name}: not valid JSON (${e.message})`); }
}

async function pageSubmit(ctx, main) {
  // One Idempotency-Key per request body: a double click (or a retry after a lost answer)
  // submits one audit, and an edited form is a new audit.
  const keys = new Map();
  const analyses = input('f-analyses', { value: 'weights', placeholder: 'weights, activations, …' });
  const chips = el('div', { class: 'chips' });
  const drawChips = () => {
    const on = new Set(analyses.value.split(/[\s,]+/).filter(Boolean));
    chips.replaceChildren(...VOCAB.analyses.map((a) => el('span', {
      class: on.has(a) ? 'chip on' : 'chip', role: 'button', tabindex: 0,
      onclick: () => {
        if (on.has(a)) on.delete(a); else on.add(a);
        analyses.value = VOCAB.analyses.filter((x) => on.has(x)).concat([...on].filter((x) => !VOCAB.analyses.includes(x))).join(', ');
        drawChips();
      },
    }, a)));
  };
  analyses.addEventListener('input', drawChips);
  drawChips();
  const form = el('form', { id: 'submit-form', class: 'card grid' },
    field('Base model', input('f-base', { required: true, placeholder: 'org/model[@rev], directory or s3://…' })),
    field('Fine-tuned checkpoint', input('f-finetuned', { placeholder: 'give this or an adapter' })),
    field('or LoRA adapter', input('f-adapter', { placeholder: 'PEFT adapter on the base' })),
    field('Analyses (comma-separated)', [analyses, chips], 'wide'),
    field('Layers (blocks; empty: all)', input('f-layers', { placeholder: 'e.g. 0,1,2 or 4-7' })),
    field('Corpus source (empty: built-in)', input('f-corpus', { placeholder: 'file or s3://bucket/text.jsonl' })),
    field('Corpus max samples', input('f-max-samples', { type: 'number', min: 1, placeholder: '256' })),
    el('details', { class: 'wide' }, el('summary', {}, 'More options (JSON, merged into the request)'),
      el('textarea', { id: 'f-extra', placeholder: '{"weights": {"spectrum": "full", "top_k": 16}, "logit_lens": {"top_tokens": 20}}' })),
    el('div', { class: 'wide' }, el('button', { id: 'f-submit', type: 'submit' }, 'Submit audit')));
  main.append(el('h1', {}, 'Submit an audit'), form);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearError();
    const button = $('#f-submit');
    try {
      const body = { base: val('f-base') };
      if (val('f-finetuned')) body.finetuned = val('f-finetuned');
      if (val('f-adapter')) body.adapter = val('f-adapter');
      const list = val('f-analyses').split(/[\s,]+/).filter(Boolean);
      if (list.length) body.analyses = list;
      const layers = parseLayers(val('f-layers'));
      if (layers) body.layers = layers;
      const extra = val('f-extra') ? parseJson(val('f-extra'), 'more options') : {};
      if (typeof extra !== 'object' || Array.isArray(extra) || extra === null) throw new Error('more options: give a JSON object');
      Object.assign(body, extra);
      if (val('f-corpus') || val('f-max-samples')) {
        body.corpus = { ...(body.corpus || {}) };
        if (val('f-corpus')) body.corpus.source = val('f-corpus');
        if (val('f-max-samples')) body.corpus.max_samples = Number(val('f-max-samples'));
      }
      button.disabled = true;
      const text = JSON.stringify(body);
      if (!keys.has(text)) keys.set(text, newId());
      const audit = await api('POST', '/v1/audits', body, { 'Idempotency-Key': keys.get(text) });
      location.hash = '#/audit/' + enc(audit.id);
    } catch (e) {
      if (ctx.alive) fail(e);
    } finally {
      button.disabled = false;
    }
  });
}

// ---------------------------------------------------------------- one audit

async function pageAudit(ctx, main, id) {
  const statusEl = el('span', { id: 'audit-status', class: 'badge' });
  const bar = el('progress', { id: 'audit-progress' });
  const barText = el('span', { id: 'audit-progress-text', class: 'muted' });
  const barWrap = el('div', { class: 'progress', hidden: true }, bar, barText);
  const errorEl = el('div', { id: 'audit-error', class: 'pre', hidden: true });
  const cancel = el('button', { id: 'cancel', type: 'button', class: 'danger', hidden: true }, 'Cancel audit');
  const specBox = el('div');
  const results = el('div', { id: 'results' });
  main.append(el('div', { class: 'toolbar' }, el('h1', {}, 'Audit ', el('code', {}, id)), el('span', { class: 'spacer' }), cancel),
    el('div', { class: 'card' }, el('div', { class: 'row' }, el('span', {}, 'Status: ', statusEl), barWrap), errorEl, specBox),
    results);
  let loaded = false;
  const show = async (a) => {
    statusEl.textContent = a.status; // exactly the status word
    statusEl.className = `badge status-${classSafe(a.status)}`;
    barWrap.hidden = !active(a);
    if (a.progress.shards_total > 0) {
      bar.max = a.progress.shards_total;
      bar.value = a.progress.shards_done;
      barText.textContent = `${a.progress.shards_done} / ${a.progress.shards_total} shards`;
    } else {
      bar.removeAttribute('value'); // indeterminate until the audit is planned
      barText.textContent = a.status === 'queued' ? 'waiting for a worker' : 'planning';
    }
    errorEl.hidden = !a.error;
    errorEl.textContent = a.error ? `Error: ${a.error}` : '';
    cancel.hidden = !active(a);
    const s = a.spec;
    specBox.replaceChildren(kv([
      ['base', el('code', {}, s.base)],
      [s.target.kind === 'adapter' ? 'adapter' : 'fine-tuned', el('code', {}, s.target.reference)],
      ['analyses', (s.analyses || []).join(', ')],
      ['layers', s.layers ? s.layers.join(', ') : 'all'],
      s.corpus && s.corpus.source ? ['corpus', el('code', {}, s.corpus.source)] : null,
      ['created', when(a.created_at)],
      ['finished', when(a.finished_at)],
      a.idempotency_key ? ['idempotency key', el('code', {}, a.idempotency_key)] : null,
    ]));
    if (a.status === 'succeeded' && !loaded) {
      loaded = true;
      await showResults(ctx, id, results);
    }
  };
  cancel.addEventListener('click', async () => {
    if (!confirm('Cancel this audit?')) return;
    try { await show(await api('DELETE', `/v1/audits/${enc(id)}`)); } catch (e) { fail(e); }
  });
  let audit = await api('GET', `/v1/audits/${enc(id)}`);
  if (!ctx.alive) return;
  await show(audit);
  ctx.every(POLL_MS, async () => {
    if (!active(audit)) return false;
    audit = await api('GET', `/v1/audits/${enc(id)}`);
    if (ctx.alive) await show(audit);
    return active(audit);
  });
}

async function showResults(ctx, id, root) {
  root.replaceChildren(el('p', { class: 'muted' }, 'Loading results…'));
  const [r, arts] = await Promise.all([
    api('GET', `/v1/audits/${enc(id)}/results`),
    api('GET', `/v1/audits/${enc(id)}/artifacts`),
  ]);
  if (!ctx.alive) return;
  root.replaceChildren();
  const an = r.analyses || {};
  const parts = [
    ['Grades', r.grades, renderGrades], ['Weights', an.weights, renderWeights],
    ['Activations', an.activations, renderActivations], ['Logit lens', an.logit_lens, renderLens],
    ['Traces', an.traces, renderTraces], ['CMAP', an.cmap, renderCmap],
    ['Stitching', an.stitching, renderStitching], ['Steering', an.steering, renderSteering],
    ['Crosscoder', an.crosscoder, renderDictionary], ['SAE on differences', an.sae_diff, renderDictionary],
  ].filter(([, data]) => data);
  const sid = (title) => 'sec-' + title.toLowerCase().replace(/\W+/g, '-');
  // Jump buttons rather than #anchors: the hash is the router's.
  const jump = (title) => el('button', { type: 'button', class: 'secondary', onclick: () => document.getElementById(sid(title)).scrollIntoView() }, title);
  root.append(el('div', { class: 'toolbar' }, parts.map(([t]) => jump(t)), jump('Artifacts'), jump('Report')));
  const o = section(root, 'Overview', 'sec-overview');
  o.append(kv([
    ['base', el('code', {}, `${r.base.reference}  (${r.base.content_hash})`)],
    [r.target && r.target.kind === 'adapter' ? 'adapter' : 'fine-tuned', el('code', {}, `${r.finetuned.reference}  (${r.finetuned.content_hash})`)],
    r.corpus ? ['corpus', `${r.corpus.source}: ${r.corpus.samples_used} of ${r.corpus.samples_total} samples, ≤ ${r.corpus.seq_len} tokens`] : null,
    ['tool', `${r.tool_version} (results schema ${r.schema_version})`],
    ['created', r.created_unix ? new Date(r.created_unix * 1000).toLocaleString() : '—'],
  ]));
  for (const [title, data, fn] of parts) {
    const s = section(root, title, sid(title));
    // One section that cannot be drawn (results of a newer version, say) says so and takes
    // neither the others nor the artifacts with it.
    try {
      fn(s, data, r);
    } catch (e) {
      window.__ndErrors.push(`section ${title}: ${e && e.message}`);
      s.append(el('p', { class: 'error section-error' }, `This section could not be drawn: ${e && e.message}`));
    }
  }
  renderArtifacts(section(root, 'Artifacts', sid('Artifacts')), id, arts.artifacts || []);
  const rep = section(root, 'Report', sid('Report'));
  const frame = el('iframe', { id: 'report-frame', sandbox: '', title: 'report.html' });
  rep.append(frame);
  if ((arts.artifacts || []).some((a) => a.name === 'report.html')) {
    // report.html inlines its plots (SVG); srcdoc in a sandbox without scripts shows it as is.
    const html = await (await request('GET', `/v1/audits/${enc(id)}/artifacts/report.html`)).text();
    if (ctx.alive) frame.srcdoc = html;
  }
}

function renderArtifacts(s, id, arts) {
  s.append(table([
    { label: 'name', key: 'name', cls: 'mono' },
    { label: 'type', key: 'content_type' },
    { label: 'size', key: 'size_bytes', num: true, cell: (a) => fmtBytes(a.size_bytes) },
    { label: 'sha256', key: 'sha256', cls: 'mono', cell: (a) => el('span', { title: a.sha256 }, String(a.sha256 || '').slice(0, 12)) },
    { label: '', sort: false, cell: (a) => el('button', { type: 'button', class: 'secondary download', 'data-name': a.name,
      onclick: () => download(`/v1/audits/${enc(id)}/artifacts/${enc(a.name)}`, a.name) }, 'Download') },
  ], arts, { id: 'artifacts', empty: 'no artifacts' }));
}

function renderWeights(s, w) {
  s.append(el('p', { class: 'muted' }, `${w.tensors.length} tensors compared; ${w.only_in_base.length} only in the base, `
    + `${w.only_in_finetuned.length} only in the fine-tune, ${w.shape_mismatches.length} shape mismatches, ${w.added_rows.length} grown.`));
  // Heatmap of the largest rel_fro per (block, module); log colour, as changes span decades.
  // Unchanged tensors are drawn at a floor below the smallest change, so the changed cells stand
  // out against the whole block × module grid instead of filling it alone.
  const positive = w.tensors.map((t) => t.rel_fro).filter((v) => v > 0);
  const floor = positive.length ? Math.min(...positive) / 100 : 1e-6;
  const best = new Map();
  for (const t of w.tensors) {
    if (t.rel_fro === null || t.rel_fro === undefined || !(t.rel_fro >= 0)) continue;
    const k = `${t.layer ?? 'outside'}\u0000${t.module}`;
    if (!best.has(k) || best.get(k).rel_fro < t.rel_fro) best.set(k, t);
  }
  const ts = [...best.values()];
  if (ts.length) {
    const ys = uniq(ts.map((t) => t.layer)).sort((a, b) => (a ?? 1e9) - (b ?? 1e9)).map((l) => (l === null ? 'outside' : String(l)));
    const xs = uniq(ts.map((t) => t.module)).sort();
    const cells = ts.map((t) => [xs.indexOf(t.module), ys.indexOf(t.layer === null ? 'outside' : String(t.layer)),
      Math.log10(Math.max(t.rel_fro, floor)), t.rel_fro, t.name]);
    const [min, max] = span(cells.map((c) => c[2]));
    s.append(el('h3', {}, 'rel_fro by block × module (largest tensor per cell)'));
    heatmap(s, {
      xs, ys, cells, min, max, xName: 'module', yName: 'block', tall: ys.length > 16,
      legend: (v) => fmt(10 ** Number(v)),
      tip: (d) => `block ${esc(ys[d[1]])} · ${esc(xs[d[0]])}<br>rel_fro <b>${esc(fmt(d[3]))}</b><br>${esc(d[4])}`,
    });
  }
  const layers = w.layers.filter((l) => l.layer !== null).sort((a, b) => a.layer - b.layer);
  if (layers.length) {
    lines(s, { title: 'rel_fro by block', bar: true, xName: 'block', categories: layers.map((l) => String(l.layer)),
      series: [{ name: 'rel_fro', data: layers.map((l) => l.rel_fro) }] });
  }
  const spectra = w.tensors.filter((t) => (t.top_singular_values || []).length).slice(0, 6);
  if (spectra.length) {
    lines(s, { title: 'Singular values of the most changed tensors', xName: 'i', yName: 'σ_i', logY: true,
      series: spectra.map((t) => ({ name: t.name, data: t.top_singular_values.map((v, i) => [i + 1, v]) })) });
  }
  s.append(el('h3', {}, 'Tensors'));
  const filter = input('tensor-filter', { type: 'search', placeholder: 'filter by name or module' });
  const tbl = table([
    { label: 'name', key: 'name', cls: 'mono' }, { label: 'block', key: 'layer', num: true },
    { label: 'module', key: 'module', cls: 'mono' }, { label: 'shape', sort: false, cell: (t) => (t.shape || []).join('×') },
    ...['rel_fro', 'fro', 'base_fro', 'cosine', 'max_abs', 'spectral', 'stable_rank', 'effective_rank', 'rank_90',
      'rank_99', 'numerical_rank'].map((k) => ({ label: k, key: k, num: true })),
    { label: 'method', key: 'method' },
  ], w.tensors, { id: 'tensors', limit: 200 });
  filter.addEventListener('input', () => {
    const q = filter.value.trim().toLowerCase();
    tbl.update(w.tensors.filter((t) => !q || `${t.name} ${t.module}`.toLowerCase().includes(q)));
  });
  s.append(el('div', { class: 'toolbar' }, filter), scroll(tbl));
  for (const [title, list] of [['Only in the base', w.only_in_base], ['Only in the fine-tune', w.only_in_finetuned]]) {
    if (list.length) s.append(el('h3', {}, title), el('ul', {}, list.map((n) => el('li', { class: 'mono' }, n))));
  }
  if (w.shape_mismatches.length) {
    s.append(el('h3', {}, 'Shape mismatches'), table([{ label: 'name', key: 'name', cls: 'mono' },
      { label: 'base', value: (m) => m.base.join('×') }, { label: 'fine-tuned', value: (m) => m.finetuned.join('×') }], w.shape_mismatches));
  }
  if (w.added_rows.length) {
    s.append(el('h3', {}, 'Added rows'), table([{ label: 'name', key: 'name', cls: 'mono' },
      { label: 'base rows', key: 'base_rows', num: true }, { label: 'fine-tuned rows', key: 'finetuned_rows', num: true },
      { label: 'added ‖·‖_F', key: 'added_fro', num: true }], w.added_rows));
  }
}

function renderActivations(s, a) {
  s.append(el('p', { class: 'muted' }, `${a.n_samples} samples, ${a.n_tokens} tokens.`));
  const layers = uniq(a.layers.map((l) => l.layer)).sort((x, y) => x - y);
  const hooks = uniq(a.layers.map((l) => l.hook));
  const metric = select('act-metric', ['mean_rel_diff', 'p95_rel_diff', 'mean_diff_norm', 'p95_diff_norm', 'mean_cosine'], 'mean_rel_diff');
  const opt = () => lineOption({ title: `Trajectory: ${metric.value} by block`, xName: 'block', categories: layers.map(String),
    logY: metric.value !== 'mean_cosine',
    series: hooks.map((h) => ({ name: h, data: layers.map((l) => {
      const row = a.layers.find((x) => x.layer === l && x.hook === h);
      return row ? row[metric.value] : null;
    }) })) });
  s.append(el('div', { class: 'toolbar' }, field('metric', metric)));
  const c = chart(s, opt());
  metric.addEventListener('change', () => c && c.setOption({ ...CHART_DEFAULTS, ...opt() }, true));
  // By position at the block outputs, for up to eight blocks spread over the depth.
  const post = a.layers.filter((l) => l.hook === 'hook_resid_post' && (l.position_rel_diff || []).length);
  const step = Math.max(1, Math.ceil(post.length / 8));
  const chosen = post.filter((_, i) => i % step === 0);
  if (chosen.length) {
    lines(s, { title: 'Relative difference by position (hook_resid_post)', xName: 'position', logY: true,
      series: chosen.map((l) => ({ name: `block ${l.layer}`, data: l.position_rel_diff.map((v, i) => [i, v]) })) });
  }
  if ((a.top_examples || []).length) {
    s.append(el('h3', {}, 'Tokens that differ most'), scroll(table([
      { label: 'block', key: 'layer', num: true }, { label: 'sample', key: 'sample', num: true },
      { label: 'position', key: 'position', num: true }, { label: 'token', key: 'token', cell: (e) => tok(e.token) },
      { label: '‖Δh‖', key: 'diff_norm', num: true }, { label: 'relative', key: 'rel_diff', num: true },
      { label: 'context', key: 'context', cls: 'pre' },
    ], a.top_examples, { limit: 100 })));
  }
}

function renderLens(s, lens) {
  s.append(el('p', { class: 'muted' }, `${lens.n_samples} samples; vocabularies ${lens.vocab.base_size} / `
    + `${lens.vocab.finetuned_size}, ${lens.vocab.shared} shared, ${(lens.vocab.added || []).length} added.`));
  const rows = lens.layers.concat([lens.output]);
  const cats = rows.map((l) => (l.layer === null ? 'output' : String(l.layer)));
  lines(s, { title: 'KL(p_ft ‖ p_base) by block (nats)', xName: 'block', categories: cats, logY: true,
    series: ['kl_mean', 'kl_p50', 'kl_p95'].map((k) => ({ name: k, data: rows.map((l) => l[k]) })) });
  const pick = select('lens-layer', cats.map((c, i) => [String(i), c]), String(rows.length - 1));
  const lists = el('div', { class: 'cols' });
  const drawLists = () => {
    const l = rows[Number(pick.value)];
    lists.replaceChildren(el('div', {}, el('h3', {}, 'Rising (more likely after fine-tuning)'), tokens(l.rising)),
      el('div', {}, el('h3', {}, 'Falling'), tokens(l.falling, 'neg')));
  };
  pick.addEventListener('change', drawLists);
  drawLists();
  s.append(el('div', { class: 'toolbar' }, field('tokens at block', pick)), lists);
  if ((lens.top_samples || []).length) {
    s.append(el('h3', {}, 'Samples of largest output KL'), table([
      { label: 'sample', key: 'sample', num: true }, { label: 'tokens', key: 'n_tokens', num: true },
      { label: 'KL mean', key: 'kl_mean', num: true }, { label: 'text', key: 'text', cls: 'pre' },
    ], lens.top_samples));
  }
  if ((lens.vocab.added || []).length) s.append(el('h3', {}, 'Added tokens'), tokens(lens.vocab.added));
}

function renderTraces(s, tr, r) {
  const gt = tr.ground_truth;
  s.append(el('p', { class: 'muted' }, `Block ${tr.layer}, n̄_ft = ${fmt(tr.nbar_ft)}`
    + (gt ? `; graded against organism ${gt.organism}` : '') + '.'));
  const pos = tr.positions;
  const twin = lineOption({ title: '‖δ_j‖ and half-split agreement by position', xName: 'position',
    categories: pos.map((p) => String(p.position)),
    series: [{ name: '‖δ_j‖', data: pos.map((p) => p.delta_norm) },
      { name: 'half overlap', data: pos.map((p) => p.half_overlap), extra: { yAxisIndex: 1 } }] });
  // The overlap (0..1) gets its own axis on the right.
  twin.yAxis = [{ type: 'value', name: '‖δ‖' }, { type: 'value', name: 'overlap', min: 0, max: 1 }];
  chart(s, twin);
  const ov = tr.position_overlap || [];
  if (ov.length) {
    const labels = pos.map((p) => String(p.position));
    const cells = [];
    ov.forEach((row, i) => row.forEach((v, j) => cells.push([j, i, v])));
    heatmap(s, { xs: labels, ys: labels, cells, min: 0, max: 1, xName: 'position', yName: 'position',
      legend: (v) => Number(v).toFixed(2),
      tip: (d) => `positions ${esc(labels[d[1]])} × ${esc(labels[d[0]])}<br>top-20 overlap <b>${esc(fmt(d[2]))}</b>` });
  }
  const grades = new Map(((r.grades && r.grades.traces) || []).map((g) => [g.position, g]));
  s.append(el('h3', {}, 'Tokens per position'), scroll(table([
    { label: 'position', key: 'position', num: true }, { label: 'samples', key: 'n_samples', num: true },
    { label: '‖δ‖', key: 'delta_norm', num: true }, { label: 'half overlap', key: 'half_overlap', num: true },
    { label: 'logit lens (top 20)', sort: false, cell: (p) => {
      const g = grades.get(p.position);
      return tokens(p.logit_lens.top_tokens.slice(0, 20), '', g && new Set(g.hits.map((h) => h.trim().toLowerCase())));
    } },
    { label: 'negative (top 10)', sort: false, cell: (p) => tokens(p.negative.top_tokens.slice(0, 10), 'neg') },
    { label: 'Patchscope', sort: false, cell: (p) => [el('div', { class: 'muted' }, `scale ${fmt(p.patchscope.scale)}`),
      tokens(p.patchscope.top_tokens.slice(0, 20))] },
    { label: 'p@20 (lens / patchscope)', sort: false, cell: (p) => {
      const g = grades.get(p.position);
      return g ? `${fmt(g.logit_lens_p20)} / ${fmt(g.patchscope_p20)}` : '—';
    } },
  ], pos, { id: 'trace-positions' })));
  const steered = pos.flatMap((p) => (p.steered || []).map((g) => ({ position: p.position, ...g })));
  if (steered.length) s.append(el('details', {}, el('summary', {}, `Steered generations (${steered.length})`), generationsTable(steered, true)));
}

function generationsTable(gens, withPosition) {
  return table([
    withPosition ? { label: 'position', key: 'position', num: true } : null,
    { label: 'model', key: 'model' }, { label: 'block', key: 'layer', num: true }, { label: 'α', key: 'alpha', num: true },
    { label: 'mode', key: 'mode' }, { label: 'prompt', key: 'prompt', cls: 'pre' }, { label: 'continuation', key: 'text', cls: 'pre' },
  ].filter(Boolean), gens);
}

function renderGrades(s, g) {
  s.append(kv([
    ['organism', g.organism], ['domain', g.domain], ['trained blocks', g.trained_blocks ? g.trained_blocks.join(', ') : null],
    ['mean logit-lens p@20', fmt(g.mean_logit_lens_p20)], ['mean Patchscope p@20', fmt(g.mean_patchscope_p20)],
    ['CMAP top cell', g.cmap_top ? `block ${g.cmap_top.layer} ${g.cmap_top.component} (${g.cmap_top.direction}), recovery ${fmt(g.cmap_top.recovery)}` : null],
    ['CMAP top in trained blocks', fmt(g.cmap_in_trained_blocks)],
    ['stitching zero-KL splits', (g.stitching_zero_kl || []).map(([d, ks]) => `${d}: ${ks.join(', ') || 'none'}`).join('; ')],
    ['stitching matches', fmt(g.stitching_matches)], ['steering domain gain', fmt(g.steering_domain_gain)],
    g.llm !== undefined ? ['LLM grader', el('code', {}, JSON.stringify(g.llm))] : null,
  ]));
  if ((g.traces || []).length) {
    s.append(el('h3', {}, 'Trace grades'), table([
      { label: 'position', key: 'position', num: true }, { label: 'logit-lens p@20', key: 'logit_lens_p20', num: true },
      { label: 'Patchscope p@20', key: 'patchscope_p20', num: true },
      { label: 'domain hits', sort: false, cell: (t) => el('div', { class: 'tokens' }, t.hits.map((h) => tok(h, 'hit'))) },
    ], g.traces, { id: 'trace-grades' }));
  }
}

function renderCmap(s, cm) {
  s.append(el('p', { class: 'muted' }, `${cm.n_samples} samples, ${cm.n_tokens} tokens; gaps KL(ft‖base) = ${fmt(cm.kl_ft_base)}, `
    + `KL(base‖ft) = ${fmt(cm.kl_base_ft)}.`));
  const xs = uniq(cm.cells.map((c) => c.layer)).sort((a, b) => a - b).map(String);
  const ys = uniq(cm.cells.map((c) => `${c.direction} · ${c.component}`)).sort();
  const cells = cm.cells.map((c) => [xs.indexOf(String(c.layer)), ys.indexOf(`${c.direction} · ${c.component}`), c.recovery, c.kl]);
  if (!cells.length) return;
  const [lo, hi] = span(cells.map((c) => c[2]));
  heatmap(s, { xs, ys, cells, min: Math.min(0, lo), max: Math.max(1, hi), xName: 'block', legend: (v) => Number(v).toFixed(2),
    tip: (d) => `block ${esc(xs[d[0]])} · ${esc(ys[d[1]])}<br>recovery <b>${esc(fmt(d[2]))}</b><br>KL after patching ${esc(fmt(d[3]))}` });
}

function renderStitching(s, st) {
  s.append(el('p', { class: 'muted' }, `${st.n_samples} samples, ${st.n_tokens} tokens; loss base ${fmt(st.loss_base)}, fine-tune ${fmt(st.loss_ft)} nats.`));
  const dirs = uniq(st.points.map((p) => p.direction));
  const of = (d) => st.points.filter((p) => p.direction === d).sort((a, b) => a.k - b.k);
  lines(s, { title: 'Stitching landscape: KL by split k', xName: 'k (blocks from the first model)', yName: 'KL (nats)',
    series: dirs.flatMap((d) => ['kl_to_base', 'kl_to_ft'].map((m) => ({ name: `${d} ${m}`, data: of(d).map((p) => [p.k, p[m]]) }))) });
  lines(s, { title: 'Loss by split k', xName: 'k', yName: 'nats',
    series: dirs.map((d, i) => ({ name: d, data: of(d).map((p) => [p.k, p.loss]),
      extra: i ? {} : { markLine: { silent: true, symbol: 'none', label: { formatter: '{b}' },
        data: [{ name: 'base', yAxis: st.loss_base }, { name: 'fine-tune', yAxis: st.loss_ft }] } } })) });
}

function renderSteering(s, st) {
  const v = st.vector || {};
  s.append(el('p', { class: 'muted' }, `Vector ${v.kind}${v.position !== undefined ? ' at position ' + v.position : ''}; `
    + `${st.n_samples} samples; α chosen within ${fmt(st.ppl_factor)}× the unsteered perplexity.`));
  const groups = uniq(st.curves.map((c) => `${c.target} · block ${c.layer}`));
  const curve = (k) => groups.map((g) => ({ name: g, data: st.curves.filter((c) => `${c.target} · block ${c.layer}` === g)
    .sort((a, b) => a.alpha - b.alpha).map((c) => [c.alpha, c[k]]) }));
  const cols = el('div', { class: 'cols' });
  s.append(cols);
  const left = el('div');
  const right = el('div');
  cols.append(left, right);
  lines(left, { title: 'KL(p_ft ‖ p_steered) by α', xName: 'α', series: curve('kl_to_ft') });
  lines(right, { title: 'Perplexity by α', xName: 'α', logY: true, series: curve('perplexity') });
  if (st.curves.some((c) => typeof c.domain_mass === 'number')) lines(s, { title: 'Domain-token mass by α', xName: 'α', series: curve('domain_mass') });
  s.append(el('h3', {}, 'Chosen α'), table([{ label: 'target', key: 'target' }, { label: 'block', key: 'layer', num: true },
    { label: 'α', key: 'alpha', num: true }, { label: 'perplexity', key: 'perplexity', num: true }], st.chosen || []));
  if ((st.generations || []).length) s.append(el('h3', {}, 'Generations'), generationsTable(st.generations, false));
}

/** A crosscoder or an SAE on differences: metrics, training curves, the Δ histogram, the ν
 *  scatter of fine-tune-only latents, and a card per reported latent. */
function renderDictionary(s, d) {
  const crosscoder = d.delta_histogram && d.delta_histogram.length > 0;
  s.append(el('p', { class: 'muted' }, `Block ${d.layer} (${d.hook}), width ${d.d_model}: ${d.dict_size} latents, k = ${d.k}; `
    + `${d.steps} steps of ${d.batch} tokens on ${d.train_tokens} tokens (store ${d.store.id}, ${d.store.chunks} chunks`
    + `${d.store.chunks_reused ? ', ' + d.store.chunks_reused + ' reused' : ''}); metrics on ${d.eval_tokens} held-back tokens`
    + `${d.resumed_at ? '; resumed at step ' + d.resumed_at : ''}.`));
  s.append(kv([
    crosscoder ? ['FVE base / fine-tune', `${fmt(d.fve_base)} / ${fmt(d.fve_ft)}`] : ['FVE (h_ft − h_base)', fmt(d.fve_ft)],
    ['L0', fmt(d.l0)], ['dead', fmt(100 * d.dead_fraction) + '%'],
    typeof d.output_kl === 'number' ? ['output KL(P_ft ‖ P_base)', fmt(d.output_kl) + ' nats per token (held-back samples)'] : null,
    crosscoder ? ['classes', `${d.classes.ft_only} fine-tune only (${d.ft_only_low_nu} with low ν), ${d.classes.base_only} base only, `
      + `${d.classes.shared} shared, ${d.classes.other} other`] : null,
    typeof d.min_delta === 'number' ? ['fine-tune-leaning tail', `the ${(d.tail || []).length} lowest-Δ latents (smallest Δ ${fmt(d.min_delta)})`
      + (typeof d.tail_domain_share === 'number' ? `; ${fmt(100 * d.tail_domain_share)}% name the domain` : '')] : null,
    typeof d.domain_share === 'number' ? ['domain share (low-ν fine-tune-only)', fmt(100 * d.domain_share) + '%'] : null,
  ]));
  const cols = el('div', { class: 'cols' });
  s.append(cols);
  const left = el('div');
  const right = el('div');
  cols.append(left, right);
  lines(left, { title: 'Training', xName: 'step', series: [
    { name: 'loss', data: d.training.map((p) => [p.step, p.loss]) },
    { name: 'FVE (batch)', data: d.training.map((p) => [p.step, p.fve]) },
    { name: 'dead fraction', data: d.training.map((p) => [p.step, p.dead_fraction]) }] });
  if (crosscoder) {
    chart(right, {
      title: { text: 'Decoder-norm ratio Δ (0: fine-tune only, 1: base only)', textStyle: { fontSize: 13 } },
      grid: { left: 20, right: 20, top: 40, bottom: 30, containLabel: true },
      tooltip: { trigger: 'axis' },
      xAxis: { type: 'category', name: 'Δ', data: d.delta_histogram.map((_, i) => (i / 20).toFixed(2)) },
      yAxis: { type: 'value', name: 'latents' },
      series: [{ type: 'bar', data: d.delta_histogram }],
    });
    const ft = d.latents.filter((l) => l.class === 'ft_only' && typeof l.nu_eps === 'number' && typeof l.nu_r === 'number');
    if (ft.length) {
      const real = (l) => l.nu_eps < 0.2 && l.nu_r < 0.5;
      chart(s, {
        title: { text: 'Latent scaling of fine-tune-only latents (ν_ε < 0.2 and ν_r < 0.5: real)', textStyle: { fontSize: 13 } },
        grid: { left: 20, right: 20, top: 40, bottom: 30, containLabel: true },
        tooltip: { trigger: 'item', formatter: (p) => esc(`latent ${p.data[2]}: ν_ε ${fmt(p.data[0])}, ν_r ${fmt(p.data[1])}`) },
        legend: { top: 20 },
        xAxis: { type: 'value', name: 'ν_ε' }, yAxis: { type: 'value', name: 'ν_r' },
        dataZoom: [{ type: 'inside' }],
        series: [
          { name: 'real', type: 'scatter', data: ft.filter(real).map((l) => [l.nu_eps, l.nu_r, l.id]) },
          { name: 'sparsity artifact', type: 'scatter', data: ft.filter((l) => !real(l)).map((l) => [l.nu_eps, l.nu_r, l.id]) },
        ],
      });
    }
  }
  s.append(el('h3', {}, 'Latents'), table([
    { label: 'id', key: 'id', num: true },
    { label: 'class', key: 'class' },
    { label: 'Δ', key: 'delta_norm', num: true, cell: (l) => fmt(l.delta_norm) },
    { label: 'ν_ε', key: 'nu_eps', num: true, cell: (l) => fmt(l.nu_eps) },
    { label: 'ν_r', key: 'nu_r', num: true, cell: (l) => fmt(l.nu_r) },
    { label: 'freq', key: 'frequency', num: true, cell: (l) => fmt(l.frequency) },
    { label: 'KL share', key: 'kl_share', num: true, cell: (l) => (typeof l.kl_share === 'number' ? fmt(100 * l.kl_share) + '%' : '—') },
    { label: 'decoder lens', value: (l) => l.top_tokens.map((t) => t.token).join(' '), sort: false,
      cell: (l) => el('code', {}, l.top_tokens.slice(0, 8).map((t) => JSON.stringify(t.token)).join(' ')) },
    { label: 'top examples', value: (l) => l.examples.length, sort: false,
      cell: (l) => el('div', {}, l.examples.slice(0, 3).map((e) => el('div', {}, `…${e.context}  [${e.token}] (${fmt(e.activation)})`))) },
    { label: 'domain', value: (l) => (l.domain_hit === true ? 1 : l.domain_hit === false ? 0 : null), num: true,
      cell: (l) => (l.domain_hit === true ? 'yes' : l.domain_hit === false ? 'no' : '—') },
  ], d.latents, { limit: 40 }));
}

// ---------------------------------------------------------------- compare

/** The few numbers that summarise an audit, for side-by-side comparison. */
function headline(r) {
  const an = (r && r.analyses) || {};
  const w = an.weights;
  const blocks = w ? w.layers.filter((l) => l.layer !== null) : [];
  const top = w && w.tensors.length ? w.tensors[0] : null;
  const post = an.activations ? an.activations.layers.filter((l) => l.hook === 'hook_resid_post') : [];
  const maxPost = maxBy(post, (l) => l.mean_rel_diff);
  const maxBlock = maxBy(blocks, (l) => l.rel_fro);
  return [
    ['tensors compared', w ? w.tensors.length : null],
    ['most changed tensor', top ? `${top.name} (${fmt(top.rel_fro)})` : null],
    ['max block rel_fro', maxBlock ? `${fmt(maxBlock.rel_fro)} (block ${maxBlock.layer})` : null],
    ['mean block rel_fro', blocks.length ? fmt(blocks.reduce((t, l) => t + l.rel_fro, 0) / blocks.length) : null],
    ['max activation rel. diff (resid_post)', maxPost ? `${fmt(maxPost.mean_rel_diff)} (block ${maxPost.layer})` : null],
    ['logit-lens output KL', an.logit_lens ? fmt(an.logit_lens.output.kl_mean) : null],
    ['stitching loss base / ft', an.stitching ? `${fmt(an.stitching.loss_base)} / ${fmt(an.stitching.loss_ft)}` : null],
    ['grades: mean logit-lens p@20', r && r.grades ? fmt(r.grades.mean_logit_lens_p20) : null],
  ];
}

async function pageCompare(ctx, main, a, b) {
  main.append(el('h1', {}, 'Compare audits'));
  const audits = await Promise.all([a, b].map((id) => api('GET', `/v1/audits/${enc(id)}`)));
  // Results exist only for succeeded audits; one missing must not hide the other.
  const results = await Promise.all(audits.map((x) => (x.status === 'succeeded'
    ? api('GET', `/v1/audits/${enc(x.id)}/results`).catch((e) => { fail(e); return null; }) : null)));
  if (!ctx.alive) return;
  const label = (i) => `${'AB'[i]}: ${short(audits[i].id)}`;
  main.append(el('div', { class: 'cols' }, audits.map((x, i) => el('div', { class: 'card' },
    el('h2', {}, `${'AB'[i]}: `, auditLink(x.id)),
    kv([['status', badge('status', x.status)], ['base', el('code', {}, x.spec.base)],
      ['target', el('code', {}, targetText(x.spec))], ['analyses', x.spec.analyses.join(', ')],
      ['layers', x.spec.layers ? x.spec.layers.join(', ') : 'all'], ['created', when(x.created_at)],
      ['finished', when(x.finished_at)], x.error ? ['error', x.error] : null])))));
  const heads = results.map(headline);
  main.append(el('h2', {}, 'Headline metrics'), el('table', { id: 'compare-metrics' },
    el('thead', {}, el('tr', {}, el('th', {}, 'metric'), el('th', {}, label(0)), el('th', {}, label(1)))),
    el('tbody', {}, heads[0].map(([k], i) => el('tr', {}, el('td', {}, k),
      el('td', { class: 'num' }, fmt(heads[0][i][1])), el('td', { class: 'num' }, fmt(heads[1][i][1])))))));
  // One overlay per quantity both audits may have; drawn when either has it.
  const overlay = (title, xName, yName, logY, pick) => {
    const series = results.map((r, i) => ({ name: label(i), data: r ? pick(r.analyses || {}) : [] }));
    if (!series.some((x) => x.data.length)) return;
    main.append(el('h2', {}, title));
    lines(main, { xName, yName, logY, series });
  };
  const rows = (x, key) => (x && Array.isArray(x[key]) ? x[key] : []);
  overlay('rel_fro by block', 'block', 'rel_fro', true, (an) => rows(an.weights, 'layers')
    .filter((l) => l.layer !== null).map((l) => [l.layer, l.rel_fro]));
  overlay('Activation difference by block (resid_post)', 'block', 'mean_rel_diff', false, (an) => rows(an.activations, 'layers')
    .filter((l) => l.hook === 'hook_resid_post').map((l) => [l.layer, l.mean_rel_diff]));
  overlay('Logit-lens KL by block', 'block', 'kl_mean', false, (an) => rows(an.logit_lens, 'layers')
    .filter((l) => l.layer != null && (l.hook || 'hook_resid_post') === 'hook_resid_post').map((l) => [l.layer, l.kl_mean]));
  overlay('Stitching: KL to the fine-tune, base blocks [0, k) then the fine-tune', 'k', 'kl_to_ft', false, (an) => rows(an.stitching, 'points')
    .filter((p) => p.direction === 'base_then_ft').map((p) => [p.k, p.kl_to_ft]));
}

// ---------------------------------------------------------------- results query

async function pageResults(ctx, main) {
  const numAttrs = { type: 'number', step: 'any' };
  const tForm = el('form', { id: 'results-form', class: 'card grid' },
    field('metric', select('q-metric', VOCAB.tensor_metrics, 'rel_fro')), field('model (exact reference)', input('q-model')),
    field('block', input('q-layer', { type: 'number', min: 0 })), field('module', input('q-module', { placeholder: 'e.g. self_attn.q_proj' })),
    field('min value', input('q-min', numAttrs)), field('limit', input('q-limit', { type: 'number', min: 1, max: 1000, value: 100 })),
    el('div', {}, el('button', { id: 'q-submit', type: 'submit' }, 'Query tensors')));
  const bForm = el('form', { id: 'blocks-form', class: 'card grid' },
    field('metric', select('b-metric', VOCAB.block_metrics, 'mean_rel_diff')), field('model (exact reference)', input('b-model')),
    field('analysis', select('b-analysis', [['', 'any'], ...VOCAB.block_analyses], '')),
    field('block', input('b-layer', { type: 'number', min: 0 })), field('hook', select('b-hook', [['', 'any'], ...VOCAB.block_sites], '')),
    field('min value', input('b-min', numAttrs)), field('limit', input('b-limit', { type: 'number', min: 1, max: 1000, value: 100 })),
    el('div', {}, el('button', { id: 'b-submit', type: 'submit' }, 'Query blocks')));
  const lForm = el('form', { id: 'latents-form', class: 'card grid' },
    field('analysis', select('l-analysis', [['', 'any'], ...VOCAB.dictionaries], '')),
    field('class', select('l-class', [['', 'any'], 'ft_only', 'base_only', 'shared', 'other', 'diff'], '')),
    field('token (lens or examples)', input('l-token', { placeholder: 'e.g. garlic' })), field('model (exact reference)', input('l-model')),
    field('max ν_ε', input('l-nu-eps', numAttrs)), field('max ν_r', input('l-nu-r', numAttrs)),
    field('limit', input('l-limit', { type: 'number', min: 1, max: 1000, value: 100 })),
    el('div', {}, el('button', { id: 'l-submit', type: 'submit' }, 'Query latents')));
  const tOut = el('div');
  const bOut = el('div');
  const lOut = el('div');
  main.append(el('h1', {}, 'Results across audits'), el('h2', {}, 'Tensors (weights)'), tForm, tOut,
    el('h2', {}, 'Blocks (activations, logit lens)'), bForm, bOut,
    el('h2', {}, 'Latents (crosscoders, SAEs on differences)'), lForm, lOut);
  const params = (pairs) => {
    const p = new URLSearchParams();
    for (const [k, id] of pairs) if (val(id)) p.set(k, val(id));
    return p;
  };
  const common = [
    { label: 'audit', key: 'audit_id', cell: (h) => auditLink(h.audit_id) },
    { label: 'base', key: 'base', cls: 'mono' }, { label: 'target', key: 'target', cls: 'mono' },
  ];
  tForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearError();
    try {
      const p = params([['metric', 'q-metric'], ['model', 'q-model'], ['layer', 'q-layer'], ['module', 'q-module'], ['min', 'q-min'], ['limit', 'q-limit']]);
      const res = await api('GET', '/v1/results?' + p);
      if (!ctx.alive) return;
      tOut.replaceChildren(scroll(table([...common,
        { label: 'tensor', value: (h) => h.tensor.name, cls: 'mono' }, { label: 'block', value: (h) => h.tensor.layer, num: true },
        { label: 'module', value: (h) => h.tensor.module, cls: 'mono' }, { label: val('q-metric'), key: 'value', num: true },
        { label: 'rel_fro', value: (h) => h.tensor.rel_fro, num: true }, { label: 'fro', value: (h) => h.tensor.fro, num: true },
        { label: 'audit created', key: 'audit_created_at', cell: (h) => when(h.audit_created_at) },
      ], res.results, { id: 'results-table', empty: 'no matching tensors' })));
    } catch (e) { fail(e); }
  });
  bForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearError();
    try {
      const p = params([['metric', 'b-metric'], ['model', 'b-model'], ['analysis', 'b-analysis'], ['layer', 'b-layer'], ['hook', 'b-hook'], ['min', 'b-min'], ['limit', 'b-limit']]);
      const res = await api('GET', '/v1/results/blocks?' + p);
      if (!ctx.alive) return;
      bOut.replaceChildren(scroll(table([...common,
        { label: 'analysis', key: 'analysis' }, { label: 'block', key: 'layer', num: true }, { label: 'hook', key: 'hook', cls: 'mono' },
        { label: val('b-metric'), key: 'value', num: true },
        ...VOCAB.block_metrics.map((k) => ({ label: k, key: k, num: true })),
        { label: 'audit created', key: 'audit_created_at', cell: (h) => when(h.audit_created_at) },
      ], res.results, { id: 'blocks-table', empty: 'no matching blocks' })));
    } catch (e) { fail(e); }
  });
  lForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearError();
    try {
      const p = params([['analysis', 'l-analysis'], ['class', 'l-class'], ['token', 'l-token'], ['model', 'l-model'],
        ['max_nu_eps', 'l-nu-eps'], ['max_nu_r', 'l-nu-r'], ['limit', 'l-limit']]);
      const res = await api('GET', '/v1/results/latents?' + p);
      if (!ctx.alive) return;
      const words = (list) => (list || []).slice(0, 8).join(' · ');
      lOut.replaceChildren(scroll(table([...common,
        { label: 'analysis', key: 'analysis' }, { label: 'block', key: 'layer', num: true },
        { label: 'latent', key: 'latent', num: true }, { label: 'class', key: 'class' },
        { label: 'Δ', key: 'delta_norm', num: true }, { label: 'ν_ε', key: 'nu_eps', num: true }, { label: 'ν_r', key: 'nu_r', num: true },
        { label: 'frequency', key: 'frequency', num: true },
        { label: 'decoder lens', value: (h) => words(h.top_tokens), cls: 'mono' },
        { label: 'top examples', value: (h) => words(h.example_tokens), cls: 'mono' },
        { label: 'domain hit', value: (h) => (h.domain_hit == null ? '—' : h.domain_hit ? 'yes' : 'no') },
        { label: 'audit created', key: 'audit_created_at', cell: (h) => when(h.audit_created_at) },
      ], res.results, { id: 'latents-table', empty: 'no matching latents' })));
    } catch (e) { fail(e); }
  });
}

// ---------------------------------------------------------------- scans

const schedule = (sc) => (sc.cron ? `cron ${sc.cron}` : (sc.every_s ? `every ${sc.every_s} s` : '—'));
const ruleText = (r) => {
  const cond = (c) => (c.metric ? `${c.metric} ${c.op || ''} ${c.value ?? ''}`.trim() : '');
  const parts = [cond(r), ...(r.and || []).map(cond)].filter(Boolean);
  const where = ['module', 'analysis', 'hook', 'pointer'].filter((k) => r[k]).map((k) => `${k}=${r[k]}`);
  if ((r.tokens || []).length) where.push(`tokens=${r.tokens.join(',')}`);
  return parts.join(' and ') + (where.length ? `  [${where.join(' ')}]` : '');
};
/** Pause / resume / trigger / delete, then `done()` to redraw. */
function scanActions(sc, done) {
  const act = (label, method, path, cls, ask) => el('button', { type: 'button', class: cls || 'secondary', 'data-action': label,
    onclick: async () => {
      if (ask && !confirm(ask)) return;
      try { await api(method, path); await done(label); } catch (e) { fail(e); }
    } }, label);
  const base = `/v1/scans/${enc(sc.id)}`;
  return el('span', { class: 'row' },
    sc.paused ? act('resume', 'POST', base + '/resume') : act('pause', 'POST', base + '/pause'),
    act('trigger', 'POST', base + '/trigger'),
    act('delete', 'DELETE', base, 'danger', `Delete scan “${sc.name}” and stop its schedule?`));
}

async function pageScans(ctx, main) {
  const notice = el('div', { id: 'scan-created', class: 'notice', hidden: true });
  const holder = el('div');
  main.append(el('h1', {}, 'Scans'), notice, holder);
  const load = async () => {
    const res = await api('GET', '/v1/scans');
    if (!ctx.alive) return;
    holder.replaceChildren(scroll(table([
      { label: 'name', key: 'name', cell: (sc) => el('a', { href: '#/scan/' + enc(sc.id) }, sc.name) },
      { label: 'source', key: 'source', cls: 'mono' }, { label: 'target', key: 'target' },
      { label: 'schedule', value: schedule }, { label: 'state', value: (sc) => (sc.paused ? 'paused' : 'active'),
        cell: (sc) => badge('state', sc.paused ? 'paused' : 'active') },
      { label: 'next run', key: 'next_run_at', cell: (sc) => when(sc.next_run_at) },
      { label: 'runs', key: 'runs_total', num: true },
      { label: 'open alerts', key: 'alerts_open', num: true,
        cell: (sc) => (sc.alerts_open ? el('a', { href: '#/alerts', class: 'badge sev-high' }, String(sc.alerts_open)) : '0') },
      { label: 'last poll said', key: 'last_error', cls: 'pre' },
      { label: '', sort: false, cell: (sc) => scanActions(sc, load) },
    ], res.scans || [], { id: 'scans', row: (sc) => ({ 'data-id': sc.id }), empty: 'no scans yet' })));
  };
  // A new scan: JSON for the audit options and the rules keeps the form small and exact.
  const form = el('form', { id: 'scan-form', class: 'grid' },
    field('Name', input('s-name', { required: true })),
    field('Source (where checkpoints appear)', input('s-source', { required: true, placeholder: 's3://bucket/run/ or org/model' })),
    field('Base (for a fixed base)', input('s-base')),
    field('Base mode', select('s-base-mode', [['fixed', 'fixed: always this base'], ['previous', 'previous: the last checkpoint']], 'fixed')),
    field('Target', select('s-target', ['checkpoint', 'adapter'], 'checkpoint')),
    field('Every (seconds)', input('s-every', { type: 'number', min: 1, placeholder: '3600' })),
    field('or cron', input('s-cron', { placeholder: '0 * * * *' })),
    field('Webhook URL (optional)', input('s-webhook-url', { type: 'url' })),
    field('Webhook secret (optional)', input('s-webhook-secret', { type: 'password', autocomplete: 'off' })),
    field('Audit options (JSON)', el('textarea', { id: 's-audit' }, JSON.stringify({ analyses: ['weights'] }, null, 2)), 'wide'),
    field('Rules (JSON array)', el('textarea', { id: 's-rules' }, JSON.stringify(RULE_EXAMPLE, null, 2)), 'wide'),
    el('div', { class: 'wide' }, el('button', { id: 's-submit', type: 'submit' }, 'Create scan')));
  main.append(el('details', { class: 'card' }, el('summary', {}, 'New scan'), form));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearError();
    try {
      const body = { name: val('s-name'), source: val('s-source'), base_mode: val('s-base-mode'), target: val('s-target'),
        audit: parseJson(val('s-audit') || '{}', 'audit options'), rules: parseJson(val('s-rules') || '[]', 'rules') };
      if (!Array.isArray(body.rules)) throw new Error('rules: give a JSON array');
      if (val('s-base')) body.base = val('s-base');
      if (val('s-every') && val('s-cron')) throw new Error('give a period in seconds or a cron expression, not both');
      if (val('s-every')) body.every_s = Number(val('s-every'));
      if (val('s-cron')) body.cron = val('s-cron');
      if (val('s-webhook-url')) body.webhook_url = val('s-webhook-url');
      if (val('s-webhook-secret')) body.webhook_secret = val('s-webhook-secret');
      const sc = await api('POST', '/v1/scans', body);
      if (!ctx.alive) return;
      // The secret is in this answer only: show it now.
      notice.replaceChildren(el('span', {}, 'Created scan ', el('a', { href: '#/scan/' + enc(sc.id) }, sc.name), '.',
        sc.webhook_secret ? [' Webhook secret (shown once, store it now): ', el('code', { id: 'webhook-secret' }, sc.webhook_secret)] : []));
      notice.hidden = false;
      form.reset();
      await load();
    } catch (e) { fail(e); }
  });
  await load();
}

async function pageScan(ctx, main, id) {
  let refresh = null;
  const holder = el('div');
  main.append(holder);
  const load = async () => {
    const [sc, al] = await Promise.all([api('GET', `/v1/scans/${enc(id)}`), api('GET', `/v1/alerts?scan=${enc(id)}&state=all`)]);
    if (!ctx.alive) return false;
    ctx.disposeCharts();
    holder.replaceChildren();
    const runs = sc.runs || [];
    holder.append(el('div', { class: 'toolbar' }, el('h1', {}, 'Scan ', sc.name), el('span', { class: 'spacer' }),
      scanActions(sc, (what) => (what === 'delete' ? (location.hash = '#/scans') : refresh()))));
    holder.append(el('div', { class: 'card' }, kv([
      ['id', el('code', {}, sc.id)], ['state', badge('state', sc.paused ? 'paused' : 'active')],
      ['source', el('code', {}, sc.source)], ['base', sc.base ? el('code', {}, sc.base) : null], ['base mode', sc.base_mode],
      ['target', sc.target], ['schedule', schedule(sc)], ['next run', when(sc.next_run_at)],
      ['last polled', when(sc.last_polled_at)], ['last poll said', sc.last_error],
      ['webhook', sc.webhook_url], // text, never a link: the URL is the user's input
      ['created', when(sc.created_at)], ['runs', sc.runs_total], ['open alerts', sc.alerts_open],
      ['audit options', el('code', { class: 'pre' }, JSON.stringify(sc.audit))],
    ])));
    holder.append(el('h2', {}, 'Rules'), table([
      { label: 'name', key: 'name', cls: 'mono' },
      { label: 'severity', key: 'severity', cell: (r) => badge('sev', r.severity) },
      { label: 'scope', key: 'scope' }, { label: 'condition', value: ruleText, cls: 'mono' },
    ], sc.rules || [], { id: 'rules' }));
    // Trend: one line per rule of its observed value over the runs, oldest first.
    const chrono = runs.slice().reverse();
    const names = uniq((sc.rules || []).map((r) => r.name).concat(chrono.flatMap((r) => Object.keys(r.observed || {}))));
    holder.append(el('h2', {}, 'Trend'));
    if (chrono.length) {
      lines(holder, { xName: 'run', categories: chrono.map((r) => when(r.created_at)),
        series: names.map((n) => ({ name: n, data: chrono.map((r) => (r.observed || {})[n] ?? null) })) });
    } else holder.append(el('p', { class: 'muted' }, 'no runs yet'));
    holder.append(el('h2', {}, 'Runs'), scroll(table([
      { label: 'created', key: 'created_at', cell: (r) => when(r.created_at) },
      { label: 'checkpoint', key: 'checkpoint_id', cls: 'mono' }, { label: 'location', key: 'location', cls: 'mono' },
      { label: 'audit', key: 'audit_id', cell: (r) => (r.audit_id ? auditLink(r.audit_id) : '—') },
      { label: 'status', key: 'audit_status', cls: 'status', cell: (r) => (r.audit_status ? badge('status', r.audit_status) : '—') },
      { label: 'run', key: 'state' },
      ...names.map((n) => ({ label: n, num: true, value: (r) => num((r.observed || {})[n]) })),
      { label: 'alerts', key: 'alerts', num: true }, { label: 'error', key: 'error', cls: 'pre' },
    ], runs, { id: 'runs', row: (r) => ({ 'data-id': r.id || r.checkpoint_id }), empty: 'no runs yet' })));
    holder.append(el('h2', {}, 'Alerts'), alertsTable(al.alerts || [], 'scan-alerts'));
    return runs.some((r) => r.audit_status === 'queued' || r.audit_status === 'running');
  };
  // Refresh while a run's audit is in flight (also after "trigger"), more slowly than an audit's page.
  let polling = false;
  refresh = async () => {
    const busy = await load();
    if (busy && !polling) {
      polling = true;
      ctx.every(5000, async () => {
        polling = await load();
        return polling;
      });
    }
  };
  await refresh();
}

// ---------------------------------------------------------------- alerts

function alertsTable(alerts, id) {
  return scroll(table([
    { label: 'created', key: 'created_at', cell: (a) => when(a.created_at) },
    { label: 'severity', value: (a) => severityRank(a.severity), cell: (a) => badge('sev', a.severity) },
    { label: 'scan', key: 'scan_name', cell: (a) => el('a', { href: '#/scan/' + enc(a.scan_id) }, a.scan_name || short(a.scan_id)) },
    { label: 'rule', key: 'rule', cls: 'mono' },
    { label: 'observed', key: 'observed', num: true }, { label: 'threshold', key: 'threshold', num: true },
    { label: 'message', key: 'message' },
    { label: 'audit', key: 'audit_id', cell: (a) => (a.audit_id ? auditLink(a.audit_id) : '—') },
    { label: 'state', value: (a) => (a.acknowledged_at ? 'acknowledged' : 'open') },
  ], alerts, {
    id,
    empty: 'no alerts',
    row: (a) => ({ 'data-id': a.id, class: 'clickable', onclick: (ev) => {
      if (!ev.target.closest('a, button, input')) location.hash = '#/alert/' + enc(a.id);
    } }),
  }));
}
/** Sorts the most severe first (the vocabulary lists severities least first); unknown last. */
function severityRank(severity) {
  const i = VOCAB.severities.indexOf(severity);
  return i < 0 ? 9 : VOCAB.severities.length - 1 - i;
}

async function pageAlerts(ctx, main) {
  const state = select('alert-state', ['open', 'acknowledged', 'all'], 'open');
  const holder = el('div');
  main.append(el('div', { class: 'toolbar' }, el('h1', {}, 'Alerts'), el('span', { class: 'spacer' }), field('show', state)), holder);
  const load = async () => {
    const res = await api('GET', '/v1/alerts?state=' + enc(state.value));
    if (ctx.alive) holder.replaceChildren(alertsTable(res.alerts || [], 'alerts'));
  };
  state.addEventListener('change', () => load().catch(fail));
  await load();
}

async function pageAlert(ctx, main, id) {
  const detail = el('div', { id: 'alert-detail' });
  main.append(el('h1', {}, 'Alert'), detail);
  const show = (a) => {
    const ack = el('button', { id: 'ack', type: 'button', disabled: !!a.acknowledged_at }, a.acknowledged_at ? 'Acknowledged' : 'Acknowledge');
    ack.addEventListener('click', async () => {
      ack.disabled = true;
      try {
        const res = await api('POST', `/v1/alerts/${enc(id)}/ack`);
        if (ctx.alive) show(res && res.id ? res : await api('GET', `/v1/alerts/${enc(id)}`));
      } catch (e) { ack.disabled = false; fail(e); }
    });
    detail.replaceChildren(el('div', { class: 'card' }, kv([
      ['rule', el('code', {}, a.rule)], ['severity', badge('sev', a.severity)],
      ['observed', fmt(a.observed)], ['threshold', fmt(a.threshold)], ['message', a.message],
      ['scan', el('a', { href: '#/scan/' + enc(a.scan_id) }, a.scan_name || a.scan_id)],
      ['audit', a.audit_id ? auditLink(a.audit_id) : null], ['checkpoint', a.checkpoint_id ? el('code', {}, a.checkpoint_id) : null],
      ['location', a.location ? el('code', {}, a.location) : null], ['created', when(a.created_at)],
      ['acknowledged', when(a.acknowledged_at)],
      (a.details || []).length ? ['details', el('ul', {}, a.details.map((d) => el('li', { class: 'pre' }, fmt(d))))] : null,
    ]), el('p', {}, ack)), el('h2', {}, 'Webhook deliveries'), table([
      { label: 'delivery', key: 'id', cls: 'mono' }, { label: 'attempts', key: 'attempts', num: true },
      { label: 'delivered', key: 'delivered_at', cell: (d) => when(d.delivered_at) },
      { label: 'last status', key: 'last_status', num: true }, { label: 'last error', key: 'last_error', cls: 'pre' },
      { label: 'next attempt', key: 'next_attempt_at', cell: (d) => (d.delivered_at || d.gave_up_at ? '—' : when(d.next_attempt_at)) },
      { label: 'gave up', key: 'gave_up_at', cell: (d) => when(d.gave_up_at) },
    ], a.deliveries || [], { id: 'deliveries', empty: 'no deliveries (no webhook)' }));
  };
  const a = await api('GET', `/v1/alerts/${enc(id)}`);
  if (ctx.alive) show(a);
}

render();
