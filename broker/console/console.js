// Mailroom web console: a single page over the management HTTP API (/api/...), HTTP Basic auth from the
// login form (kept in sessionStorage for the tab). No framework, no build step, no other origin.
'use strict';

const POLL_MS = 5000;          // how often the overview and queue samples are taken
const KEEP_SAMPLES = 120;      // 10 minutes of samples at POLL_MS
const COLORS = ['#2f6fde', '#e0892b', '#2b9e5a', '#a040c0', '#c03040', '#607080'];

let auth = sessionStorage.getItem('mailroom.auth');
let pollTimer = null;
let vhostsCache = [];
// Samples for the charts: overview totals and per-queue counters, newest last.
const samples = { overview: [], queues: new Map() };

// ---------------------------------------------------------------------------------------------------
// HTTP

class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.reason || body.error)) || ('HTTP ' + status));
    this.status = status;
    this.body = body;
  }
}

async function api(method, path, body) {
  const headers = { 'Authorization': 'Basic ' + auth };
  const init = { method, headers };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const text = await res.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch (_) { data = { reason: text }; }
  }
  if (res.status === 401 && data && data.error === 'not_authorized') {
    showLogin('Your credentials were refused.');
    throw new ApiError(401, data);
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

// Whether an error means the endpoint itself does not exist on this broker (yet).
function missing(e) { return e instanceof ApiError && (e.status === 404 || e.status === 405); }

const enc = encodeURIComponent;
function vq(vhost, name) { return enc(vhost) + '/' + enc(name); }

// ---------------------------------------------------------------------------------------------------
// DOM helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function table(cols, rows, testid) {
  return h('table', { 'data-testid': testid },
    h('thead', {}, h('tr', {}, cols.map(c => h('th', {}, c)))),
    h('tbody', {}, rows));
}

function num(v) { return h('td', { class: 'num' }, v === undefined || v === null ? '' : v); }

function flash(text, isError) {
  const f = document.getElementById('flash');
  f.textContent = text || '';
  f.className = isError ? 'error' : 'ok';
}

function notAvailable(what, testid) {
  return h('p', { class: 'na', 'data-testid': testid }, what + ': not available on this broker yet.');
}

function field(label, input) { return h('label', {}, label, input); }

function vhostSelect(id, selected) {
  return h('select', { id }, vhostsCache.map(v => h('option', { value: v, selected: v === selected }, v)));
}

function parseJsonField(id, what) {
  const text = document.getElementById(id).value.trim();
  if (!text) return undefined;
  try { return JSON.parse(text); } catch (e) { throw new Error(what + ' is not valid JSON: ' + e.message); }
}

// Runs an action from a button or form, reporting its outcome in the flash line. With `redraw`, a success
// draws the page again first and shows the outcome once the new page is in place: a form drawn again loses
// what was typed into it, so whoever sees the message can type into the new form (the console test too).
async function act(fn, okText, redraw) {
  let r;
  try {
    r = await fn();
  } catch (e) {
    flash(e.message, true);
    return undefined;
  }
  if (redraw) await render();
  if (okText) flash(typeof okText === 'function' ? okText(r) : okText);
  return r;
}

// ---------------------------------------------------------------------------------------------------
// Charts: a line chart on a canvas, drawn from [time, value] samples.

function chart(title, series, testid) {
  const canvas = h('canvas', { width: 460, height: 180 });
  const box = h('div', { class: 'chart', 'data-testid': testid },
    h('div', {}, h('b', {}, title)),
    canvas,
    h('div', { class: 'legend' }, series.map((s, i) =>
      h('span', {}, h('i', { style: 'background:' + COLORS[i % COLORS.length] }), s.name))));
  drawChart(canvas, series);
  return box;
}

function drawChart(canvas, series) {
  const ctx = canvas.getContext('2d');
  const W = canvas.width, H = canvas.height, L = 48, B = 18, T = 6, R = 6;
  ctx.clearRect(0, 0, W, H);
  const pts = series.flatMap(s => s.points);
  ctx.font = '11px sans-serif';
  ctx.fillStyle = '#6b7280';
  if (pts.length === 0) {
    ctx.fillText('waiting for samples...', L, H / 2);
    return;
  }
  const now = Date.now();
  const t0 = Math.min(now - 60000, ...pts.map(p => p[0]));
  const maxV = Math.max(1, ...pts.map(p => p[1]));
  const x = t => L + (W - L - R) * (t - t0) / Math.max(1, now - t0);
  const y = v => H - B - (H - B - T) * v / maxV;
  ctx.strokeStyle = '#d8dce3';
  ctx.beginPath();
  ctx.moveTo(L, T); ctx.lineTo(L, H - B); ctx.lineTo(W - R, H - B);
  ctx.stroke();
  ctx.fillText(fmt(maxV), 2, T + 10);
  ctx.fillText('0', 2, H - B);
  ctx.fillText(Math.round((now - t0) / 60000) + ' min ago', L, H - 4);
  ctx.fillText('now', W - R - 22, H - 4);
  series.forEach((s, i) => {
    ctx.strokeStyle = COLORS[i % COLORS.length];
    ctx.lineWidth = 2;
    ctx.beginPath();
    s.points.forEach((p, j) => (j ? ctx.lineTo(x(p[0]), y(p[1])) : ctx.moveTo(x(p[0]), y(p[1]))));
    ctx.stroke();
    ctx.fillStyle = COLORS[i % COLORS.length];
    for (const p of s.points) ctx.fillRect(x(p[0]) - 2, y(p[1]) - 2, 4, 4);
  });
}

function fmt(v) { return v >= 100 ? Math.round(v).toString() : (Math.round(v * 10) / 10).toString(); }

// A counter's rate per second between consecutive samples (or the API's own rate when it has one).
function rateSeries(list, get, details) {
  const out = [];
  for (let i = 0; i < list.length; i++) {
    const d = details && details(list[i].data);
    if (typeof d === 'number') { out.push([list[i].t, d]); continue; }
    if (i === 0) continue;
    const a = get(list[i - 1].data), b = get(list[i].data);
    if (typeof a !== 'number' || typeof b !== 'number') continue;
    const dt = (list[i].t - list[i - 1].t) / 1000;
    if (dt > 0) out.push([list[i].t, Math.max(0, (b - a) / dt)]);
  }
  return out;
}

function stat(obj, key) { return obj && obj.message_stats ? obj.message_stats[key] : undefined; }
function statRate(obj, key) {
  const d = obj && obj.message_stats && obj.message_stats[key + '_details'];
  return d && typeof d.rate === 'number' ? d.rate : undefined;
}

function rateCharts(list, testid) {
  const keys = [['publish', 'publish'], ['deliver', 'deliver_get'], ['ack', 'ack'], ['redeliver', 'redeliver']];
  const series = keys.map(([name, key]) => ({
    name: name + '/s',
    points: rateSeries(list, d => stat(d, key), d => statRate(d, key)),
  }));
  const hasStats = list.some(s => s.data && s.data.message_stats && Object.keys(s.data.message_stats).length);
  const c = chart('Message rates', series, testid);
  if (!hasStats && list.length > 0) c.append(h('p', { class: 'muted' }, 'The broker reports no message counters yet.'));
  return c;
}

function lengthChart(list, testid) {
  const get = (d, k) => (d.queue_totals ? d.queue_totals[k] : d[k]);
  return chart('Queued messages', [
    { name: 'ready', points: list.map(s => [s.t, get(s.data, 'messages_ready') || 0]) },
    { name: 'unacked', points: list.map(s => [s.t, get(s.data, 'messages_unacknowledged') || 0]) },
  ], testid);
}

function pushSample(list, data) {
  list.push({ t: Date.now(), data });
  while (list.length > KEEP_SAMPLES) list.shift();
}

async function poll() {
  try {
    const [ov, qs] = await Promise.all([api('GET', '/api/overview'), api('GET', '/api/queues')]);
    pushSample(samples.overview, ov);
    const seen = new Set();
    for (const q of qs) {
      const key = q.vhost + '\u0000' + q.name;
      seen.add(key);
      if (!samples.queues.has(key)) samples.queues.set(key, []);
      pushSample(samples.queues.get(key), q);
    }
    for (const k of [...samples.queues.keys()]) if (!seen.has(k)) samples.queues.delete(k);
    const page = currentPage();
    if (page.name === 'overview' || page.name === 'queue') refreshCharts(page);
  } catch (_) { /* shown by the page itself */ }
}

function refreshCharts(page) {
  const box = document.getElementById('charts');
  if (!box) return;
  box.replaceChildren(...chartsFor(page));
}

function chartsFor(page) {
  if (page.name === 'overview') {
    return [rateCharts(samples.overview, 'chart-rates'), lengthChart(samples.overview, 'chart-lengths')];
  }
  const list = samples.queues.get(page.args[0] + '\u0000' + page.args[1]) || [];
  return [rateCharts(list, 'chart-queue-rates'), lengthChart(list, 'chart-queue-lengths')];
}

// ---------------------------------------------------------------------------------------------------
// Login and navigation

function showLogin(error) {
  auth = null;
  sessionStorage.removeItem('mailroom.auth');
  if (pollTimer) { clearInterval(pollTimer); pollTimer = null; }
  document.getElementById('nav').hidden = true;
  document.getElementById('logout').hidden = true;
  document.getElementById('whoami').textContent = '';
  document.getElementById('main').replaceChildren();
  document.getElementById('login').hidden = false;
  document.getElementById('login-error').textContent = error || '';
}

async function start() {
  const me = await api('GET', '/api/whoami');
  document.getElementById('login').hidden = true;
  document.getElementById('nav').hidden = false;
  document.getElementById('logout').hidden = false;
  document.getElementById('whoami').textContent = me.name + (me.tags && me.tags.length ? ' (' + [].concat(me.tags).join(', ') + ')' : '');
  document.getElementById('whoami').dataset.user = me.name;
  await loadVhosts();
  poll();
  pollTimer = setInterval(poll, POLL_MS);
  if (!location.hash || location.hash === '#' || location.hash === '#/') location.hash = '#/overview';
  else render();
}

async function loadVhosts() {
  try { vhostsCache = (await api('GET', '/api/vhosts')).map(v => v.name); } catch (_) { vhostsCache = ['/']; }
}

document.getElementById('login-form').addEventListener('submit', async ev => {
  ev.preventDefault();
  const u = document.getElementById('login-user').value;
  const p = document.getElementById('login-password').value;
  auth = btoa(unescape(encodeURIComponent(u + ':' + p)));
  try {
    await start();
    sessionStorage.setItem('mailroom.auth', auth);
  } catch (e) {
    showLogin(e.status === 401 ? 'Login failed: ' + e.message : e.message);
  }
});

document.getElementById('logout').addEventListener('click', () => { showLogin(''); location.hash = ''; });

function currentPage() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  return { name: parts[0] || 'overview', args: parts.slice(1) };
}

function link(text, ...parts) {
  return h('a', { href: '#/' + parts.map(enc).join('/') }, text);
}

const pages = {};
let renderSeq = 0;

async function render() {
  if (!auth) return;
  const page = currentPage();
  const seq = ++renderSeq;
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('active', a.dataset.page === page.name || (a.dataset.page === 'exchanges' && page.name === 'exchange') || (a.dataset.page === 'queues' && page.name === 'queue'));
  }
  const fn = pages[page.name] || pages.overview;
  const main = document.getElementById('main');
  try {
    const content = await fn(...page.args);
    if (seq !== renderSeq) return;
    main.replaceChildren(...[].concat(content));
    main.dataset.page = page.name;
  } catch (e) {
    if (seq !== renderSeq) return;
    main.replaceChildren(h('p', { class: 'error' }, e.message));
  }
}

window.addEventListener('hashchange', () => { flash(''); render(); });

// ---------------------------------------------------------------------------------------------------
// Overview

pages.overview = async () => {
  const ov = await api('GET', '/api/overview');
  let nodes = [];
  try { nodes = await api('GET', '/api/nodes'); } catch (_) { /* monitoring tag needed */ }
  const t = ov.object_totals || {}, q = ov.queue_totals || {};
  const card = (label, v, id) => h('div', { class: 'card' }, label, h('b', { 'data-testid': id }, v));
  const alarms = nodes.flatMap(n => [n.mem_alarm && 'memory alarm', n.disk_free_alarm && 'disk alarm']).filter(Boolean);
  return [
    h('h1', {}, 'Overview ', h('span', { class: 'muted' }, ov.product_name + ' ' + ov.product_version + ' on ' + ov.node)),
    h('div', { class: 'cards' },
      card('Connections', t.connections, 'count-connections'),
      card('Channels', t.channels, 'count-channels'),
      card('Exchanges', t.exchanges, 'count-exchanges'),
      card('Queues', t.queues, 'count-queues'),
      card('Consumers', t.consumers, 'count-consumers'),
      card('Messages ready', q.messages_ready, 'count-ready'),
      card('Unacked', q.messages_unacknowledged, 'count-unacked')),
    h('h2', {}, 'Alarms'),
    alarms.length ? alarms.map(a => h('span', { class: 'alarm', 'data-testid': 'alarm' }, a, ' '))
      : h('p', { class: 'ok', 'data-testid': 'alarms-none' }, nodes.length ? 'No alarms.' : 'Alarms need the monitoring tag.'),
    h('h2', {}, 'Last minutes'),
    h('div', { class: 'charts', id: 'charts' }, chartsFor({ name: 'overview' })),
    h('h2', {}, 'Listeners'),
    table(['protocol', 'address', 'port'], (ov.listeners || []).map(l => h('tr', {}, h('td', {}, l.protocol), h('td', {}, l.ip_address), num(l.port))), 'listeners'),
  ];
};

// ---------------------------------------------------------------------------------------------------
// Exchanges and the binding editor

pages.exchanges = async () => {
  const xs = await api('GET', '/api/exchanges');
  const rows = xs.map(x => h('tr', {},
    h('td', {}, x.vhost),
    h('td', {}, link(x.name || '(AMQP default)', 'exchange', x.vhost, x.name || 'amq.default')),
    h('td', {}, x.type), h('td', {}, x.durable ? 'D' : ''), h('td', {}, JSON.stringify(x.arguments || {}))));
  const form = h('form', { class: 'inline', id: 'exchange-add', onsubmit: async ev => {
    ev.preventDefault();
    const vhost = document.getElementById('x-vhost').value, name = document.getElementById('x-name').value;
    await act(() => api('PUT', '/api/exchanges/' + vq(vhost, name), {
      type: document.getElementById('x-type').value, durable: true, auto_delete: false, internal: false, arguments: parseJsonField('x-args', 'Arguments') || {},
    }), 'Exchange ' + name + ' declared.', true);
  } },
  field('Vhost', vhostSelect('x-vhost', '/')), field('Name', h('input', { id: 'x-name', required: true })),
  field('Type', h('select', { id: 'x-type' }, ['direct', 'fanout', 'topic', 'headers'].map(t => h('option', {}, t)))),
  field('Arguments (JSON)', h('textarea', { id: 'x-args' })), h('button', { type: 'submit' }, 'Add exchange'));
  return [h('h1', {}, 'Exchanges'), table(['vhost', 'name', 'type', 'durable', 'arguments'], rows, 'exchanges'), h('h2', {}, 'Add an exchange'), form];
};

pages.exchange = async (vhost, name) => {
  const path = '/api/exchanges/' + vq(vhost, name);
  const [x, bindings] = await Promise.all([api('GET', path), api('GET', path + '/bindings/source')]);
  const bindingRows = bindings.map(b => h('tr', {},
    h('td', {}, b.destination_type), h('td', {}, b.destination_type === 'queue' ? link(b.destination, 'queue', vhost, b.destination) : b.destination),
    h('td', {}, b.routing_key), h('td', {}, JSON.stringify(b.arguments || {})),
    h('td', {}, h('button', { class: 'danger', 'data-testid': 'unbind', onclick: async () => {
      const kind = b.destination_type === 'queue' ? 'q' : 'e';
      await act(() => api('DELETE', '/api/bindings/' + enc(vhost) + '/e/' + enc(b.source) + '/' + kind + '/' + enc(b.destination) + '/' + enc(b.properties_key)), 'Binding removed.', true);
    } }, 'Remove'))));
  const bindForm = h('form', { class: 'inline', id: 'binding-add', onsubmit: async ev => {
    ev.preventDefault();
    const kind = document.getElementById('b-kind').value, dest = document.getElementById('b-dest').value;
    await act(() => api('POST', '/api/bindings/' + enc(vhost) + '/e/' + enc(name) + '/' + kind + '/' + enc(dest), {
      routing_key: document.getElementById('b-key').value, arguments: parseJsonField('b-args', 'Arguments') || {},
    }), 'Binding added.', true);
  } },
  field('To', h('select', { id: 'b-kind' }, h('option', { value: 'q' }, 'queue'), h('option', { value: 'e' }, 'exchange'))),
  field('Destination', h('input', { id: 'b-dest', required: true })),
  field('Routing key', h('input', { id: 'b-key' })),
  field('Arguments (JSON)', h('textarea', { id: 'b-args' })),
  h('button', { type: 'submit', id: 'b-submit' }, 'Bind'));
  const routeOut = h('div', { id: 'route-result', 'data-testid': 'route-result' });
  const routeForm = h('form', { class: 'inline', id: 'route-test', onsubmit: async ev => {
    ev.preventDefault();
    routeOut.replaceChildren();
    try {
      const r = await api('POST', path + '/route', { routing_key: document.getElementById('r-key').value, headers: parseJsonField('r-headers', 'Headers') });
      routeOut.replaceChildren(r.queues.length
        ? h('ul', {}, r.queues.map(q => h('li', { 'data-testid': 'route-queue' }, q)))
        : h('p', { 'data-testid': 'route-none' }, 'Reaches no queue' + (r.used_alternate ? ' (alternate exchange used)' : '') + '.'));
    } catch (e) {
      routeOut.replaceChildren(missing(e) ? notAvailable('Test route', 'route-na') : h('p', { class: 'error' }, e.message));
    }
  } },
  field('Routing key', h('input', { id: 'r-key' })), field('Headers (JSON)', h('textarea', { id: 'r-headers' })),
  h('button', { type: 'submit', id: 'r-submit' }, 'Test route'));
  const pubForm = h('form', { class: 'inline', id: 'publish', onsubmit: async ev => {
    ev.preventDefault();
    const props = { delivery_mode: 2 };
    const headers = parseJsonField('p-headers', 'Headers');
    if (headers) props.headers = headers;
    for (const k of ['message_id', 'correlation_id']) {
      const v = document.getElementById('p-' + k).value;
      if (v) props[k] = v;
    }
    await act(() => api('POST', path + '/publish', {
      routing_key: document.getElementById('p-key').value, payload: document.getElementById('p-payload').value, payload_encoding: 'string', properties: props,
    }), r => (r.routed ? 'Message published and routed.' : 'Message published but routed to no queue.'));
  } },
  field('Routing key', h('input', { id: 'p-key' })), field('Payload', h('textarea', { id: 'p-payload' })),
  field('Headers (JSON)', h('textarea', { id: 'p-headers' })), field('message_id', h('input', { id: 'p-message_id' })),
  field('correlation_id', h('input', { id: 'p-correlation_id' })), h('button', { type: 'submit', id: 'p-submit' }, 'Publish'));
  return [
    h('h1', {}, 'Exchange ', h('span', { 'data-testid': 'exchange-name' }, name), h('span', { class: 'muted' }, ' in ' + vhost + ' (' + x.type + ')')),
    h('h2', {}, 'Bindings from this exchange'), table(['to', 'destination', 'routing key', 'arguments', ''], bindingRows, 'bindings'),
    h('h2', {}, 'Add a binding'), bindForm,
    h('h2', {}, 'Test route'), h('p', { class: 'muted' }, 'Which queues would a message with this routing key (and headers) reach? Nothing is published.'), routeForm, routeOut,
    h('h2', {}, 'Publish a message'), pubForm,
    h('p', {}, h('button', { class: 'danger', onclick: async () => {
      if (await act(() => api('DELETE', path), 'Exchange deleted.') !== undefined) location.hash = '#/exchanges';
    } }, 'Delete this exchange')),
  ];
};

// ---------------------------------------------------------------------------------------------------
// Queues, one queue (charts, browser, get, purge)

pages.queues = async () => {
  const qs = await api('GET', '/api/queues');
  const rows = qs.map(q => h('tr', { 'data-queue': q.name },
    h('td', {}, q.vhost), h('td', {}, link(q.name, 'queue', q.vhost, q.name)),
    num(q.messages_ready), num(q.messages_unacknowledged), h('td', { class: 'num', 'data-testid': 'queue-messages' }, q.messages), num(q.consumers),
    h('td', {}, q.policy || ''), h('td', {}, JSON.stringify(q.arguments || {}))));
  const form = h('form', { class: 'inline', id: 'queue-add', onsubmit: async ev => {
    ev.preventDefault();
    const vhost = document.getElementById('q-vhost').value, name = document.getElementById('q-name').value;
    await act(() => api('PUT', '/api/queues/' + vq(vhost, name), { durable: true, auto_delete: false, arguments: parseJsonField('q-args', 'Arguments') || {} }), 'Queue ' + name + ' declared.', true);
  } },
  field('Vhost', vhostSelect('q-vhost', '/')), field('Name', h('input', { id: 'q-name', required: true })),
  field('Arguments (JSON)', h('textarea', { id: 'q-args', placeholder: '{"x-dead-letter-exchange": ""}' })), h('button', { type: 'submit', id: 'q-submit' }, 'Add queue'));
  return [h('h1', {}, 'Queues'), table(['vhost', 'name', 'ready', 'unacked', 'total', 'consumers', 'policy', 'arguments'], rows, 'queues'), h('h2', {}, 'Add a queue'), form];
};

pages.queue = async (vhost, name) => {
  const path = '/api/queues/' + vq(vhost, name);
  const q = await api('GET', path);
  const getOut = h('div', { id: 'get-result' });
  const getForm = h('form', { class: 'inline', id: 'get', onsubmit: async ev => {
    ev.preventDefault();
    const r = await act(() => api('POST', path + '/get', { count: Number(document.getElementById('g-count').value) || 1, ackmode: document.getElementById('g-ackmode').value, encoding: 'auto', truncate: 50000 }),
      r => r.length + ' message(s) taken.');
    if (r !== undefined) {
      getOut.replaceChildren(messagesTable(r.map(m => ({ ...m, payload_preview: m.payload })), 'get-messages'));
      refreshCounts(vhost, name);
    }
  } },
  field('Count', h('input', { id: 'g-count', type: 'number', value: 1, min: 1 })),
  field('Ack mode', h('select', { id: 'g-ackmode' },
    h('option', { value: 'ack_requeue_true' }, 'Requeue'),
    h('option', { value: 'reject_requeue_false' }, 'Reject: dead-letter'),
    h('option', { value: 'ack_requeue_false' }, 'Ack: remove'))),
  h('button', { type: 'submit', id: 'g-submit' }, 'Get messages'));
  return [
    h('h1', {}, 'Queue ', h('span', { 'data-testid': 'queue-name' }, name), h('span', { class: 'muted' }, ' in ' + vhost)),
    h('div', { class: 'cards', id: 'queue-counts' }, countCards(q)),
    h('div', { class: 'charts', id: 'charts' }, chartsFor({ name: 'queue', args: [vhost, name] })),
    h('h2', {}, 'Details'),
    table(['arguments', 'policy', 'effective policy', 'durable'], [h('tr', {}, h('td', {}, JSON.stringify(q.arguments || {})), h('td', {}, q.policy || ''), h('td', {}, JSON.stringify(q.effective_policy_definition || {})), h('td', {}, q.durable ? 'yes' : 'no'))], 'queue-details'),
    h('h2', {}, 'Browse (messages stay in the queue)'), browser(vhost, name, 'browse'),
    h('h2', {}, 'Get messages (takes them from the queue)'), getForm, getOut,
    h('p', {},
      link('Dead-letter view of this queue', 'dlq', vhost, name), ' ',
      h('button', { class: 'danger', id: 'purge', onclick: async () => { await act(() => api('DELETE', path + '/contents'), 'Queue purged.'); refreshCounts(vhost, name); } }, 'Purge'), ' ',
      h('button', { class: 'danger', onclick: async () => { if (await act(() => api('DELETE', path), 'Queue deleted.') !== undefined) location.hash = '#/queues'; } }, 'Delete')),
  ];
};

function countCards(q) {
  const card = (label, v, id) => h('div', { class: 'card' }, label, h('b', { 'data-testid': id }, v));
  return [card('Ready', q.messages_ready, 'q-ready'), card('Unacked', q.messages_unacknowledged, 'q-unacked'), card('Total', q.messages, 'q-total'), card('Consumers', q.consumers, 'q-consumers')];
}

async function refreshCounts(vhost, name) {
  try {
    const q = await api('GET', '/api/queues/' + vq(vhost, name));
    const box = document.getElementById('queue-counts');
    if (box) box.replaceChildren(...countCards(q));
  } catch (_) { /* the page shows errors on its next render */ }
}

// A message's x-death summary: the latest death first, as RabbitMQ keeps them.
function deathSummary(m) {
  if (m.x_death) return m.x_death;
  const xd = m.properties && m.properties.headers && m.properties.headers['x-death'];
  if (!Array.isArray(xd)) return [];
  return xd.map(d => ({ queue: d.queue, reason: d.reason, count: d.count, exchange: d.exchange, 'routing-keys': d['routing-keys'], time: d.time }));
}

function deathText(m) {
  return deathSummary(m).map(d => (d.reason || '?') + ' from ' + (d.queue || '?') + ' x' + (d.count || 1)).join('; ');
}

function messagesTable(msgs, testid) {
  const rows = msgs.map((m, i) => {
    const p = m.properties || {};
    return h('tr', { 'data-testid': 'message' },
      num(m.position !== undefined ? m.position : i), h('td', {}, p.message_id || ''), h('td', {}, p.correlation_id || ''),
      h('td', {}, m.routing_key || ''), h('td', {}, JSON.stringify(p.headers ? Object.fromEntries(Object.entries(p.headers).filter(([k]) => k !== 'x-death')) : {})),
      h('td', { 'data-testid': 'x-death' }, deathText(m)), h('td', {}, m.redelivered ? 'yes' : ''),
      h('td', {}, h('pre', { 'data-testid': 'payload' }, m.payload_preview !== undefined ? m.payload_preview : (m.payload !== undefined ? m.payload : ''))));
  });
  return table(['#', 'message_id', 'correlation_id', 'routing key', 'headers', 'x-death', 'redelivered', 'payload'], rows, testid);
}

// The queue browser: pages through messages without consuming them (GET .../browse?from=&count=).
function browser(vhost, name, testid) {
  const out = h('div', { 'data-testid': testid + '-out' });
  // `from`: 0 (the head) or the `next` cursor of the previous page; `back` holds the pages before.
  let from = 0;
  const back = [];
  const pageSize = 20;
  const load = async () => {
    try {
      const r = await api('GET', '/api/queues/' + vq(vhost, name) + '/browse?from=' + enc(from) + '&count=' + pageSize);
      const msgs = Array.isArray(r) ? r : (r.messages || []);
      const next = Array.isArray(r) ? null : r.next;
      const total = !Array.isArray(r) && typeof r.message_count === 'number' ? ' of ' + r.message_count + ' ready' : '';
      out.replaceChildren(
        h('p', { class: 'muted' }, msgs.length ? msgs.length + ' message(s)' + total + ', left in place:' : 'No messages here.'),
        messagesTable(msgs, testid + '-messages'),
        h('p', {},
          h('button', { disabled: back.length === 0, onclick: () => { from = back.pop(); load(); } }, 'Previous'), ' ',
          h('button', { disabled: next === null || next === undefined, onclick: () => { back.push(from); from = next; load(); } }, 'Next'), ' ',
          h('button', { 'data-testid': testid + '-refresh', onclick: () => { from = 0; back.length = 0; load(); } }, 'Refresh')));
    } catch (e) {
      out.replaceChildren(missing(e) ? notAvailable('Browsing without consuming', testid + '-na') : h('p', { class: 'error' }, e.message));
    }
  };
  out.append(h('button', { 'data-testid': testid + '-load', onclick: load }, 'Browse messages'));
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Dead letters: which queues are dead-letter targets, their messages with x-death, redrive with progress

async function deadLetterQueues() {
  const [qs, bindings] = await Promise.all([api('GET', '/api/queues'), api('GET', '/api/bindings')]);
  const dlx = new Map();    // vhost -> [{exchange, key}]
  for (const q of qs) {
    const a = q.arguments || {}, p = q.effective_policy_definition || {};
    const x = a['x-dead-letter-exchange'] !== undefined ? a['x-dead-letter-exchange'] : p['dead-letter-exchange'];
    if (x === undefined) continue;
    const key = a['x-dead-letter-routing-key'] !== undefined ? a['x-dead-letter-routing-key'] : p['dead-letter-routing-key'];
    if (!dlx.has(q.vhost)) dlx.set(q.vhost, []);
    dlx.get(q.vhost).push({ exchange: x, key, from: q.name });
  }
  const targets = new Map();
  for (const [vhost, list] of dlx) {
    for (const d of list) {
      const hit = bindings.filter(b => b.vhost === vhost && b.destination_type === 'queue' && b.source === d.exchange &&
        (d.exchange !== '' || b.routing_key === (d.key !== undefined ? d.key : d.from)));
      for (const b of hit) {
        const k = vhost + '\u0000' + b.destination;
        if (!targets.has(k)) targets.set(k, { vhost, name: b.destination, from: new Set() });
        targets.get(k).from.add(d.from);
      }
    }
  }
  return { qs, targets };
}

pages.dlq = async (vhost, name) => {
  if (vhost !== undefined && name !== undefined) return dlqPage(vhost, name);
  const { qs, targets } = await deadLetterQueues();
  const byKey = new Map(qs.map(q => [q.vhost + '\u0000' + q.name, q]));
  const rows = [...targets.values()].map(t => {
    const q = byKey.get(t.vhost + '\u0000' + t.name) || {};
    return h('tr', {}, h('td', {}, t.vhost), h('td', {}, link(t.name, 'dlq', t.vhost, t.name)), num(q.messages), h('td', {}, [...t.from].join(', ')));
  });
  return [h('h1', {}, 'Dead-letter queues'),
    h('p', { class: 'muted' }, 'Queues that receive the dead letters of other queues (from their x-dead-letter-exchange argument or policy). Any queue can be opened here from its page.'),
    table(['vhost', 'queue', 'messages', 'dead letters from'], rows, 'dlq-list')];
};

async function dlqPage(vhost, name) {
  const path = '/api/queues/' + vq(vhost, name);
  const q = await api('GET', path);
  const progress = h('progress', { id: 'redrive-progress', max: 1, value: 0, hidden: true });
  const status = h('span', { id: 'redrive-status', 'data-testid': 'redrive-status' });
  const cancel = h('button', { id: 'redrive-cancel', hidden: true }, 'Cancel');
  const form = h('form', { class: 'inline', id: 'redrive', onsubmit: async ev => {
    ev.preventDefault();
    const body = {};
    const to = document.getElementById('rd-to').value, count = document.getElementById('rd-count').value, rate = document.getElementById('rd-rate').value;
    if (to) body.to = to;
    if (count) body.count = Number(count);
    if (rate) body.rate = Number(rate);
    status.textContent = 'Starting...';
    status.dataset.state = 'starting';
    let r;
    try {
      r = await api('POST', path + '/redrive', body);
    } catch (e) {
      status.textContent = missing(e) ? 'Redrive: not available on this broker yet.' : e.message;
      status.dataset.state = 'failed';
      return;
    }
    if (r && r.id !== undefined) followTask(r, progress, status, cancel, () => refreshDlq(vhost, name));
    else {
      // The synchronous form: everything moved in one call.
      progress.hidden = false;
      progress.max = Math.max(1, (r.moved || 0) + (r.kept || 0));
      progress.value = r.moved || 0;
      status.textContent = 'Done: ' + (r.moved || 0) + ' moved' + (r.kept ? ', ' + r.kept + ' kept (no destination)' : '') + '.';
      status.dataset.state = 'done';
      refreshDlq(vhost, name);
    }
  } },
  field('To queue (empty: back where each died)', h('input', { id: 'rd-to' })),
  field('Count (empty: all)', h('input', { id: 'rd-count', type: 'number', min: 1 })),
  field('Rate limit (msg/s, empty: none)', h('input', { id: 'rd-rate', type: 'number', min: 1 })),
  h('button', { type: 'submit', id: 'rd-submit' }, 'Redrive'));
  return [
    h('h1', {}, 'Dead letters in ', h('span', { 'data-testid': 'dlq-name' }, name), h('span', { class: 'muted' }, ' (' + vhost + ')')),
    h('div', { class: 'cards', id: 'queue-counts' }, countCards(q)),
    h('h2', {}, 'Send them back'), form, h('p', {}, progress, ' ', status, ' ', cancel),
    h('h2', {}, 'Messages and their x-death'), browser(vhost, name, 'dlq-browse'),
  ];
}

function refreshDlq(vhost, name) {
  refreshCounts(vhost, name);
  const refresh = document.querySelector('[data-testid="dlq-browse-refresh"]');
  if (refresh) refresh.click();
}

// Follows a redrive task (GET /api/tasks/{id}) until it is done, failed or cancelled.
function followTask(task, progress, status, cancel, done) {
  progress.hidden = false;
  cancel.hidden = false;
  cancel.onclick = () => act(() => api('DELETE', '/api/tasks/' + enc(task.id)), 'Cancel requested.');
  const show = t => {
    const total = typeof t.total === 'number' ? t.total : 0;
    progress.max = Math.max(1, total);
    progress.value = t.state === 'done' ? progress.max : Math.min(progress.max, (t.moved || 0) + (t.kept || 0));
    status.dataset.state = t.state;
    status.textContent = t.state + ': ' + (t.moved || 0) + ' of ' + (total || 0) + ' moved' + (t.kept ? ', ' + t.kept + ' kept (no destination)' : '') +
      (t.rate_limit ? ' (at most ' + t.rate_limit + '/s)' : '') + (t.error ? ' - ' + t.error : '') + '.';
  };
  show(task);
  const tick = async () => {
    let t;
    try { t = await api('GET', '/api/tasks/' + enc(task.id)); } catch (e) { status.textContent = e.message; setTimeout(tick, 2000); return; }
    show(t);
    if (t.state === 'running' || t.state === 'pending') setTimeout(tick, 500);
    else { cancel.hidden = true; done(); }
  };
  setTimeout(tick, 300);
}

// ---------------------------------------------------------------------------------------------------
// Connections and channels

pages.connections = async () => {
  const [conns, chans] = await Promise.all([api('GET', '/api/connections'), api('GET', '/api/channels')]);
  const rows = conns.map(c => h('tr', { 'data-connection': c.name },
    h('td', {}, c.name), h('td', {}, c.user), h('td', {}, c.vhost), h('td', {}, c.protocol || ''), h('td', {}, c.ssl ? 'TLS' : ''), num(c.channels),
    h('td', {}, h('button', { class: 'danger', 'data-testid': 'close-connection', onclick: async () => {
      await act(() => api('DELETE', '/api/connections/' + enc(c.name)), 'Connection closed.', true);
    } }, 'Close'))));
  const chRows = chans.map(c => h('tr', {},
    h('td', {}, c.name), h('td', {}, c.user), h('td', {}, c.vhost), num(c.prefetch_count), num(c.messages_unacknowledged), num(c.consumer_count),
    h('td', {}, c.confirm ? 'confirm' : (c.transactional ? 'tx' : '')),
    h('td', {}, c.connection_details ? h('button', { class: 'danger', onclick: async () => {
      await act(() => api('DELETE', '/api/connections/' + enc(c.connection_details.name)), 'Connection closed.', true);
    } }, 'Close its connection') : '')));
  return [h('h1', {}, 'Connections'), table(['name', 'user', 'vhost', 'protocol', 'TLS', 'channels', ''], rows, 'connections'),
    h('h2', {}, 'Channels'), table(['name', 'user', 'vhost', 'prefetch', 'unacked', 'consumers', 'mode', ''], chRows, 'channels')];
};

// ---------------------------------------------------------------------------------------------------
// Users and permissions

pages.users = async () => {
  const [users, perms] = await Promise.all([api('GET', '/api/users'), api('GET', '/api/permissions')]);
  const rows = users.map(u => h('tr', {}, h('td', {}, u.name), h('td', {}, [].concat(u.tags || []).join(', ')),
    h('td', {}, h('button', { class: 'danger', onclick: async () => { await act(() => api('DELETE', '/api/users/' + enc(u.name)), 'User deleted.', true); } }, 'Delete'))));
  const pRows = perms.map(p => h('tr', {}, h('td', {}, p.user), h('td', {}, p.vhost), h('td', {}, p.configure), h('td', {}, p.write), h('td', {}, p.read),
    h('td', {}, h('button', { class: 'danger', onclick: async () => { await act(() => api('DELETE', '/api/permissions/' + vq(p.vhost, p.user)), 'Permission removed.', true); } }, 'Remove'))));
  const userForm = h('form', { class: 'inline', id: 'user-add', onsubmit: async ev => {
    ev.preventDefault();
    const name = document.getElementById('u-name').value;
    await act(() => api('PUT', '/api/users/' + enc(name), { password: document.getElementById('u-password').value, tags: document.getElementById('u-tags').value }), 'User ' + name + ' saved.', true);
  } },
  field('Name', h('input', { id: 'u-name', required: true })), field('Password', h('input', { id: 'u-password', type: 'password', autocomplete: 'new-password' })),
  field('Tags (comma-separated)', h('input', { id: 'u-tags', placeholder: 'management' })), h('button', { type: 'submit' }, 'Save user'));
  const permForm = h('form', { class: 'inline', id: 'permission-set', onsubmit: async ev => {
    ev.preventDefault();
    await act(() => api('PUT', '/api/permissions/' + vq(document.getElementById('pm-vhost').value, document.getElementById('pm-user').value), {
      configure: document.getElementById('pm-configure').value, write: document.getElementById('pm-write').value, read: document.getElementById('pm-read').value,
    }), 'Permission set.', true);
  } },
  field('User', h('select', { id: 'pm-user' }, users.map(u => h('option', {}, u.name)))), field('Vhost', vhostSelect('pm-vhost', '/')),
  field('Configure', h('input', { id: 'pm-configure', value: '.*' })), field('Write', h('input', { id: 'pm-write', value: '.*' })), field('Read', h('input', { id: 'pm-read', value: '.*' })),
  h('button', { type: 'submit' }, 'Set permission'));
  return [h('h1', {}, 'Users'), table(['name', 'tags', ''], rows, 'users'), h('h2', {}, 'Add or update a user'), userForm,
    h('h2', {}, 'Permissions'), table(['user', 'vhost', 'configure', 'write', 'read', ''], pRows, 'permissions'), permForm];
};

// ---------------------------------------------------------------------------------------------------
// Policies

pages.policies = async () => {
  const ps = await api('GET', '/api/policies');
  const rows = ps.map(p => h('tr', {}, h('td', {}, p.vhost), h('td', {}, p.name), h('td', {}, p.pattern), h('td', {}, p['apply-to']), num(p.priority), h('td', {}, JSON.stringify(p.definition)),
    h('td', {}, h('button', { class: 'danger', onclick: async () => { await act(() => api('DELETE', '/api/policies/' + vq(p.vhost, p.name)), 'Policy deleted.', true); } }, 'Delete'))));
  const form = h('form', { class: 'inline', id: 'policy-set', onsubmit: async ev => {
    ev.preventDefault();
    await act(() => api('PUT', '/api/policies/' + vq(document.getElementById('po-vhost').value, document.getElementById('po-name').value), {
      pattern: document.getElementById('po-pattern').value, 'apply-to': document.getElementById('po-apply').value,
      priority: Number(document.getElementById('po-priority').value) || 0, definition: parseJsonField('po-definition', 'Definition') || {},
    }), 'Policy saved.', true);
  } },
  field('Vhost', vhostSelect('po-vhost', '/')), field('Name', h('input', { id: 'po-name', required: true })), field('Pattern', h('input', { id: 'po-pattern', value: '.*' })),
  field('Apply to', h('select', { id: 'po-apply' }, ['queues', 'exchanges', 'all'].map(t => h('option', {}, t)))),
  field('Priority', h('input', { id: 'po-priority', type: 'number', value: 0 })),
  field('Definition (JSON)', h('textarea', { id: 'po-definition', placeholder: '{"max-length": 1000}' })), h('button', { type: 'submit' }, 'Save policy'));
  return [h('h1', {}, 'Policies'), table(['vhost', 'name', 'pattern', 'apply to', 'priority', 'definition', ''], rows, 'policies'), h('h2', {}, 'Add or update a policy'), form];
};

// ---------------------------------------------------------------------------------------------------
// Trace: a message's timeline (GET /api/trace?correlation_id=|message_id=), tracing switch per vhost

pages.trace = async () => {
  const vhosts = await api('GET', '/api/vhosts');
  const switches = vhosts.map(v => {
    const box = h('input', { type: 'checkbox', 'data-testid': 'tracing-' + v.name, checked: !!v.tracing, onchange: async () => {
      const r = await act(() => api('PUT', '/api/vhosts/' + enc(v.name), { tracing: box.checked }), 'Tracing ' + (box.checked ? 'on' : 'off') + ' for ' + v.name + '.');
      if (r === undefined) box.checked = !box.checked;
    } });
    return h('tr', {}, h('td', {}, v.name), h('td', {}, h('label', {}, box, ' tracing')));
  });
  const out = h('div', { id: 'trace-result', 'data-testid': 'trace-result' });
  const form = h('form', { class: 'inline', id: 'trace', onsubmit: async ev => {
    ev.preventDefault();
    const kind = document.getElementById('t-kind').value, id = document.getElementById('t-id').value;
    out.replaceChildren(h('p', { class: 'muted' }, 'Looking...'));
    try {
      const r = await api('GET', '/api/trace?' + kind + '=' + enc(id));
      const events = (r.events || []).slice().sort((a, b) => a.time - b.time);
      const rows = events.map(e => h('tr', { 'data-testid': 'trace-event' },
        h('td', {}, new Date(e.time).toISOString().replace('T', ' ').replace('Z', '')), h('td', {}, e.event), h('td', {}, e.vhost || ''),
        h('td', {}, e.exchange !== undefined ? (e.exchange || '(default)') : ''), h('td', {}, e.routing_key || ''),
        h('td', {}, e.queue || (e.queues || []).join(', ')), h('td', {}, [e.user, e.connection, e.channel !== undefined ? 'ch ' + e.channel : '', e.consumer_tag].filter(Boolean).join(' ')),
        h('td', {}, [e.redelivered ? 'redelivered' : '', e.delivery_count ? 'delivery ' + e.delivery_count : '', e.reason || '', e.target ? '-> ' + e.target : ''].filter(Boolean).join(', '))));
      out.replaceChildren(events.length ? table(['time (UTC)', 'event', 'vhost', 'exchange', 'routing key', 'queue(s)', 'who', 'details'], rows, 'trace-events')
        : h('p', { 'data-testid': 'trace-none' }, 'No events for this id (is tracing on for its vhost?).'));
    } catch (e) {
      out.replaceChildren(missing(e) ? notAvailable('Message tracing', 'trace-na') : h('p', { class: 'error' }, e.message));
    }
  } },
  field('Find by', h('select', { id: 't-kind' }, h('option', { value: 'correlation_id' }, 'correlation id'), h('option', { value: 'message_id' }, 'message id'))),
  field('Id', h('input', { id: 't-id', required: true })), h('button', { type: 'submit', id: 't-submit' }, 'Trace'));
  return [h('h1', {}, 'Trace'), h('h2', {}, 'Tracing per vhost'), table(['vhost', ''], switches, 'tracing'), h('h2', {}, 'A message\'s timeline'), form, out];
};

// ---------------------------------------------------------------------------------------------------

if (auth) start().catch(() => showLogin('')); else showLogin('');
