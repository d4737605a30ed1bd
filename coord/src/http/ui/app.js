// The dashboard: one page, hash routes, no libraries. It reads the HTTP face's JSON
// (Marathon's /v2, Chronos-style jobs and /v1/ui) with the tab's token, starts the
// charts from the master's last hour (/v1/ui/history), samples the overview twice a
// second for the masters page and the charts, and follows /v2/events for the event
// feed. Data goes into the page as text nodes, never as HTML.
'use strict';

const SAMPLE_MS = 500;
const REFRESH_MS = 2000;
const HISTORY_MS = 3600 * 1000;
const FEED_KEPT = 200;

const state = {
  token: sessionStorage.getItem('cluster-token'),
  cert: sessionStorage.getItem('cluster-cert') === '1',
  overview: null,
  samples: [],
  feed: [],
  feedAbort: null,
  logAbort: null,
  refresh: null,
  sampler: null,
  page: null,
};

function loggedIn() {
  return Boolean(state.token) || state.cert;
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (state.token) h.Authorization = 'Bearer ' + state.token;
  return h;
}

async function api(path, opts) {
  const o = Object.assign({}, opts || {});
  o.headers = headers(o.headers);
  const r = await fetch(path, o);
  if (r.status === 401) {
    logout('The credential was refused: log in again.');
    throw new Error('unauthorized');
  }
  const text = await r.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch (_) {
    body = text;
  }
  if (!r.ok) throw new Error((body && body.message) || r.status + ' ' + r.statusText);
  return body;
}

// el('td', {class: 'x'}, 'text', child) — text children become text nodes.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.appendChild(typeof c === 'object' ? c : document.createTextNode(String(c)));
  }
  return e;
}

function table(head, rows) {
  return el('table', {}, el('thead', {}, el('tr', {}, head.map((h) => el('th', {}, h)))),
    el('tbody', {}, rows.length ? rows : [el('tr', {}, el('td', { colspan: head.length, class: 'muted' }, 'none'))]));
}

function bar(used, total) {
  const b = el('div', { class: 'bar', title: used + ' / ' + total });
  const fill = el('div');
  fill.style.width = (total > 0 ? Math.min(100, (100 * used) / total) : 0).toFixed(1) + '%';
  b.appendChild(fill);
  return b;
}

function card(label, value, extra) {
  return el('div', { class: 'card' }, el('div', { class: 'label' }, label), el('div', { class: 'value' }, value), extra);
}

// A sparkline of `points` ({t, v}) over time, scaled to its own range.
function chart(points, id) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('class', 'chart');
  svg.setAttribute('viewBox', '0 0 260 60');
  if (id) svg.setAttribute('id', id);
  const max = Math.max(1, ...points.map((p) => p.v));
  const t0 = points.length ? points[0].t : 0;
  const span = Math.max(1, points.length ? points[points.length - 1].t - t0 : 1);
  const pts = points.map((p) => ((260 * (p.t - t0)) / span).toFixed(1) + ',' + (58 - (56 * p.v) / max).toFixed(1));
  const line = document.createElementNS(ns, 'polyline');
  line.setAttribute('points', pts.join(' '));
  svg.appendChild(line);
  return svg;
}

// Per-second rates of a counter between consecutive samples, at each sample's time.
function rates(key) {
  const out = [];
  for (let i = 1; i < state.samples.length; i++) {
    const a = state.samples[i - 1];
    const b = state.samples[i];
    const dt = (b.t - a.t) / 1000;
    out.push({ t: b.t, v: dt > 0 ? Math.max(0, (b.c[key] - a.c[key]) / dt) : 0 });
  }
  return out;
}

function setStatus(text) {
  document.getElementById('status').textContent = text;
}

// ---- pages ---------------------------------------------------------------------------

function mastersPage() {
  const o = state.overview;
  if (!o) return [el('h1', {}, 'Masters'), el('p', { class: 'muted' }, 'Reading…')];
  const leader = o.members.find((m) => m.leader);
  const leaderText = leader ? leader.name + ' (' + leader.id + ')' : 'none known';
  const writes = rates('committed');
  const places = rates('tasksLaunched');
  const first = state.samples.length ? state.samples[0].c.term : 0;
  const terms = state.samples.map((s) => ({ t: s.t, v: s.c.term - first }));
  const last = (xs) => (xs.length ? xs[xs.length - 1].v.toFixed(1) : '0');
  return [
    el('h1', {}, 'Masters'),
    el('div', { class: 'cards' },
      card('Leader', el('span', { id: 'leader', class: leader ? 'leader' : 'bad' }, leaderText)),
      card('Term', String(o.node.term)),
      card('Committed / applied here', (o.node.commit ?? '-') + ' / ' + (o.node.applied ?? '-')),
      card('This master', o.node.state + ' (' + o.node.id + ')')),
    el('div', { class: 'cards' },
      card('Writes/s (log entries)', last(writes), chart(writes, 'chart-writes')),
      card('Placements/s (tasks launched)', last(places), chart(places, 'chart-placements')),
      card('Leader changes (elections, last hour)', String(terms.length ? terms[terms.length - 1].v : 0),
        chart(terms, 'chart-terms'))),
    table(['Id', 'Name', 'Address', 'Role', 'Leader', 'Matched index', 'Lag'],
      o.members.map((m) => el('tr', {},
        el('td', {}, String(m.id)), el('td', {}, m.name), el('td', { class: 'mono' }, m.addr), el('td', {}, m.role),
        el('td', {}, m.leader ? el('span', { class: 'leader' }, '★ leader') : ''),
        el('td', {}, m.matched ?? '-'),
        el('td', { class: m.lag > 100 ? 'warn' : '' }, m.lag ?? (m.leader ? '0' : 'unknown'))))),
  ];
}

async function agentsPage() {
  const r = await api('/v1/ui/agents');
  return [
    el('h1', {}, 'Agents'),
    table(['Id', 'Name', 'Address', 'State', 'Availability', 'CPUs', 'Memory (MiB)', 'Disk (MiB)', 'Labels', 'Tasks'],
      r.agents.map((a) => el('tr', {},
        el('td', {}, String(a.id)), el('td', {}, a.name), el('td', { class: 'mono' }, a.addr),
        el('td', { class: a.state === 'active' ? 'ok' : 'bad' }, a.state), el('td', {}, a.availability),
        el('td', {}, a.used.cpus.toFixed(2) + ' / ' + a.total.cpus.toFixed(2), bar(a.used.cpus, a.total.cpus)),
        el('td', {}, a.used.memMb + ' / ' + a.total.memMb, bar(a.used.memMb, a.total.memMb)),
        el('td', {}, a.used.diskMb + ' / ' + a.total.diskMb, bar(a.used.diskMb, a.total.diskMb)),
        el('td', {}, Object.entries(a.labels).map(([k, v]) => el('span', { class: 'pill' }, k + '=' + v))),
        el('td', {}, String(a.tasks), ' ',
          Object.entries(a.tasksByState).map(([k, v]) => el('span', { class: 'pill' }, k + ' ' + v)))))),
  ];
}

function message(text, bad) {
  const m = document.getElementById('action-result');
  if (m) {
    m.textContent = text;
    m.className = bad ? 'error' : 'ok';
  }
}

async function scale(id, input) {
  const n = Number(input.value);
  if (!Number.isInteger(n) || n < 0) {
    message('instances: a whole number, 0 or more', true);
    return;
  }
  try {
    const r = await api('/v2/apps' + id, {
      method: 'PUT', body: JSON.stringify({ instances: n }), headers: { 'Content-Type': 'application/json' },
    });
    message(id + ': scaling to ' + n + ' (deployment ' + r.deploymentId + ')');
  } catch (e) {
    message(id + ': ' + e.message, true);
  }
}

async function restart(id) {
  try {
    const r = await api('/v2/apps' + id + '/restart', { method: 'POST' });
    message(id + ': restarting (deployment ' + r.deploymentId + ')');
  } catch (e) {
    message(id + ': ' + e.message, true);
  }
}

async function servicesPage() {
  const [apps, deps] = await Promise.all([api('/v2/apps'), api('/v2/deployments')]);
  const rows = apps.apps.map((a) => {
    const input = el('input', { class: 'small', type: 'number', min: '0', value: a.instances, 'aria-label': 'instances' });
    const health = a.tasksHealthy + ' healthy, ' + a.tasksUnhealthy + ' unhealthy';
    return el('tr', {},
      el('td', { class: 'mono' }, a.id), el('td', {}, a.tasksRunning + ' / ' + a.instances + ' running', bar(a.tasksRunning, a.instances)),
      el('td', { class: a.tasksUnhealthy > 0 ? 'warn' : '' }, health),
      el('td', {}, a.deployments.length ? a.deployments.map((d) => el('span', { class: 'pill' }, 'deploying ' + d.id)) : 'none'),
      el('td', { class: 'mono' }, a.cmd || ''),
      el('td', {}, input, el('button', { class: 'small', onclick: () => scale(a.id, input) }, 'Scale'),
        el('button', { class: 'small', onclick: () => restart(a.id) }, 'Restart')));
  });
  return [
    el('h1', {}, 'Services'),
    el('p', { id: 'action-result' }),
    table(['Id', 'Instances', 'Health', 'Deployments', 'Command', 'Actions'], rows),
    el('h2', {}, 'Deployments in progress'),
    table(['Id', 'Apps', 'Action', 'Since'], deps.map((d) => el('tr', {},
      el('td', {}, d.id), el('td', { class: 'mono' }, d.affectedApps.join(', ')),
      el('td', {}, d.currentActions.map((x) => x.action).join(', ')), el('td', {}, d.version)))),
  ];
}

function stopLogs() {
  if (state.logAbort) state.logAbort.abort();
  state.logAbort = null;
}

async function showLogs(id, follow) {
  stopLogs();
  const panel = document.getElementById('logs');
  if (!panel) return;
  panel.replaceChildren(el('h2', {}, 'Logs of ' + id + (follow ? ' (following)' : ' (last 16 KiB)')),
    el('button', { class: 'small', onclick: () => { stopLogs(); } }, 'Stop'));
  const pre = el('pre', { class: 'logs', id: 'log-text' });
  panel.appendChild(pre);
  const ctl = new AbortController();
  state.logAbort = ctl;
  try {
    const q = follow ? '?follow=true&tail_bytes=16384' : '?tail_bytes=16384';
    const r = await fetch('/v1/tasks/' + encodeURIComponent(id) + '/logs' + q, { headers: headers(), signal: ctl.signal });
    if (!r.ok) {
      const b = await r.json().catch(() => ({}));
      pre.textContent = 'no logs: ' + (b.message || r.statusText);
      return;
    }
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      pre.appendChild(document.createTextNode(dec.decode(value, { stream: true })));
      pre.scrollTop = pre.scrollHeight;
    }
  } catch (e) {
    if (e.name !== 'AbortError') pre.appendChild(document.createTextNode('\n[' + e.message + ']'));
  }
}

async function tasksPage() {
  const r = await api('/v2/tasks');
  const rows = r.tasks.map((t) => el('tr', {},
    el('td', { class: 'mono' }, t.id), el('td', { class: 'mono' }, t.appId),
    el('td', { class: t.state === 'TASK_RUNNING' ? 'ok' : t.state === 'TASK_FAILED' ? 'bad' : '' },
      t.state + (t.healthCheckResults.length ? (t.healthCheckResults[0].alive ? ' (healthy)' : ' (unhealthy)') : '')),
    el('td', {}, t.slaveId + ' ' + t.host), el('td', { class: 'mono' }, t.ipAddresses.map((i) => i.ipAddress).join(', ')),
    el('td', { class: 'mono' }, t.ports.join(', ')),
    el('td', {}, el('button', { class: 'small', onclick: () => showLogs(t.id, false) }, 'Tail'),
      el('button', { class: 'small', onclick: () => showLogs(t.id, true) }, 'Follow'))));
  return [el('h1', {}, 'Tasks'), table(['Id', 'Service', 'State', 'Agent', 'IP', 'Ports', 'Logs'], rows)];
}

async function jobsPage() {
  const r = await api('/v1/ui/jobs');
  const out = [el('h1', {}, 'Jobs'),
    table(['Name', 'Schedule', 'Next run', 'Last run', 'Succeeded', 'Failed', 'Skipped'],
      r.jobs.map((j) => el('tr', {},
        el('td', { class: 'mono' }, j.name), el('td', {}, j.kind + (j.disabled ? ' (disabled)' : '')),
        el('td', {}, j.nextRun || '-'), el('td', { class: j.lastRunState === 'failed' ? 'bad' : '' }, j.lastRunState || '-'),
        el('td', {}, String(j.successCount)), el('td', {}, String(j.errorCount)), el('td', {}, String(j.skippedCount)))))];
  for (const j of r.jobs) {
    out.push(el('h2', {}, 'History of ' + j.name));
    out.push(table(['Instant', 'Trigger', 'State', 'Attempts', 'Exit', 'Duration', 'Reason'],
      j.runs.map((x) => el('tr', {},
        el('td', {}, x.instant), el('td', {}, x.trigger), el('td', { class: x.state === 'failed' ? 'bad' : '' }, x.state),
        el('td', {}, String(x.attempts)), el('td', {}, x.exitCode === null ? '-' : String(x.exitCode)),
        el('td', {}, x.durationMs ? (x.durationMs / 1000).toFixed(1) + ' s' : '-'), el('td', {}, x.reason)))));
  }
  return out;
}

async function networksPage() {
  const r = await api('/v1/ui/networks');
  const rows = [];
  for (const n of r.networks) {
    for (const p of n.pools) {
      rows.push(el('tr', {}, el('td', {}, n.name), el('td', { class: 'mono' }, p.subnet),
        el('td', {}, p.allocated + ' / ' + p.usable, bar(p.allocated, p.usable)), el('td', {}, String(p.quarantined))));
    }
  }
  return [el('h1', {}, 'Networks'), table(['Network', 'Pool', 'Allocated / usable', 'Quarantined'], rows)];
}

function eventsPage() {
  return [el('h1', {}, 'Events'), el('p', { class: 'muted' }, 'Live from /v2/events, newest first.'),
    el('ul', { class: 'feed', id: 'feed' }, state.feed.map(feedItem))];
}

function feedItem(e) {
  const d = e.data;
  const what = d.taskStatus ? d.taskId + ' ' + d.taskStatus : d.alive !== undefined ? d.taskId + (d.alive ? ' healthy' : ' unhealthy')
    : d.appId || (d.plan && d.plan.id) || d.id || d.remoteAddress || '';
  return el('li', {}, el('span', { class: 'muted mono' }, d.timestamp || ''), ' ', el('span', { class: 'pill' }, e.type), ' ', what);
}

// ---- the event feed ------------------------------------------------------------------

async function followEvents() {
  while (loggedIn()) {
    const ctl = new AbortController();
    state.feedAbort = ctl;
    try {
      const r = await fetch('/v2/events', { headers: headers({ Accept: 'text/event-stream' }), signal: ctl.signal });
      if (r.ok) {
        const reader = r.body.getReader();
        const dec = new TextDecoder();
        let buf = '';
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let cut;
          while ((cut = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, cut);
            buf = buf.slice(cut + 2);
            let type = 'message';
            let data = '';
            for (const line of block.split('\n')) {
              if (line.startsWith('event:')) type = line.slice(6).trim();
              else if (line.startsWith('data:')) data += line.slice(5).trim();
            }
            if (!data) continue;
            try {
              const ev = { type, data: JSON.parse(data) };
              state.feed.unshift(ev);
              state.feed.length = Math.min(state.feed.length, FEED_KEPT);
              const list = document.getElementById('feed');
              if (list) list.insertBefore(feedItem(ev), list.firstChild);
            } catch (_) { /* not JSON: skip */ }
          }
        }
      }
    } catch (e) {
      if (e.name === 'AbortError') return;
    }
    await new Promise((ok) => setTimeout(ok, 2000));
  }
}

// ---- sampling, routing, login ----------------------------------------------------------

async function sample() {
  try {
    const o = await api('/v1/ui/overview');
    state.overview = o;
    state.samples.push({ t: o.nowMs, c: o.counters });
    while (state.samples.length && state.samples[0].t < o.nowMs - HISTORY_MS) state.samples.shift();
    const leader = o.members.find((m) => m.leader);
    setStatus((leader ? 'leader ' + leader.name + ' (' + leader.id + ')' : 'no leader') + ' · term ' + o.node.term +
      ' · via ' + o.node.state + ' ' + o.node.id);
    if (state.page === 'masters') draw();
  } catch (e) {
    setStatus('cannot reach this master: ' + e.message);
  }
}

const PAGES = {
  masters: mastersPage, agents: agentsPage, services: servicesPage, tasks: tasksPage, jobs: jobsPage,
  networks: networksPage, events: eventsPage,
};

let drawing = false;

async function draw() {
  if (drawing) return;
  drawing = true;
  const page = document.getElementById('page');
  try {
    const nodes = await PAGES[state.page]();
    let content = document.getElementById('content');
    if (!content) {
      content = el('div', { id: 'content' });
      page.replaceChildren(content, el('div', { id: 'logs' }));
    }
    content.replaceChildren(...nodes);
    page.dataset.loaded = state.page;
  } catch (e) {
    if (e.message !== 'unauthorized') {
      const content = document.getElementById('content');
      if (content) content.replaceChildren(el('p', { class: 'error' }, 'Could not read ' + state.page + ': ' + e.message));
    }
  } finally {
    drawing = false;
  }
}

function route() {
  clearInterval(state.refresh);
  stopLogs();
  if (!loggedIn()) {
    document.getElementById('login').hidden = false;
    document.getElementById('page').hidden = true;
    return;
  }
  document.getElementById('login').hidden = true;
  const page = document.getElementById('page');
  page.hidden = false;
  const name = (location.hash.replace(/^#\//, '') || 'masters').split('/')[0];
  state.page = PAGES[name] ? name : 'masters';
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.getAttribute('href') === '#/' + state.page);
  page.replaceChildren();
  delete page.dataset.loaded;
  draw();
  // The masters page redraws on every sample; the others refresh on their own.
  if (state.page !== 'masters' && state.page !== 'events') state.refresh = setInterval(draw, REFRESH_MS);
}

async function start() {
  clearInterval(state.sampler);
  try {
    const h = await api('/v1/ui/history');
    state.samples = h.samples;
  } catch (_) {
    state.samples = [];
  }
  state.sampler = setInterval(sample, SAMPLE_MS);
  sample();
  if (!state.feedAbort) followEvents();
  route();
}

function logout(why) {
  sessionStorage.removeItem('cluster-token');
  sessionStorage.removeItem('cluster-cert');
  state.token = null;
  state.cert = false;
  clearInterval(state.sampler);
  if (state.feedAbort) state.feedAbort.abort();
  state.feedAbort = null;
  document.getElementById('login-error').textContent = why || '';
  route();
}

async function login(token, cert) {
  state.token = token || null;
  state.cert = cert;
  try {
    await api('/v1/ui/overview');
  } catch (e) {
    if (e.message !== 'unauthorized') document.getElementById('login-error').textContent = e.message;
    return;
  }
  if (token) sessionStorage.setItem('cluster-token', token);
  if (cert) sessionStorage.setItem('cluster-cert', '1');
  document.getElementById('login-error').textContent = '';
  start();
}

document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    login(document.getElementById('token').value.trim(), false);
  });
  document.getElementById('use-cert').addEventListener('click', () => login(null, true));
  document.getElementById('logout').addEventListener('click', () => logout('Logged out.'));
  window.addEventListener('hashchange', route);
  if (loggedIn()) start();
  else route();
});
