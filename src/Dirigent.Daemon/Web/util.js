// Small helpers shared by the web console's views: the API client, element building, formatting.
// The page talks only to the daemon's public API (REST, SSE, the console WebSocket), same origin, with the session
// cookie the login set (on TCP) or nothing (on the Unix socket).

/** A failed API call: the HTTP status (0: the daemon could not be reached) and the problem's one-line detail. */
export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

let unauthorized = () => {};

/** What to do when the session has ended (401 from any call): the app shows the login form. */
export function onUnauthorized(fn) {
  unauthorized = fn;
}

/**
 * One API call; resolves to the parsed JSON body (null when there is none), throws ApiError otherwise. A 401 also
 * shows the login form, unless `quiet401` (the page's first question and the login itself handle theirs).
 */
export async function api(method, path, body, { quiet401 = false } = {}) {
  const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, init);
  } catch {
    throw new ApiError(0, 'the daemon cannot be reached');
  }
  const text = await r.text();
  let json = null;
  if (text && (r.headers.get('Content-Type') || '').includes('json')) {
    try { json = JSON.parse(text); } catch { json = null; }
  }
  if (!r.ok) {
    const err = new ApiError(r.status, (json && json.detail) || `${r.status} ${r.statusText}`);
    if (r.status === 401 && !quiet401) unauthorized(err);
    throw err;
  }
  return json;
}

/** el('button', {class: 'x', onclick: f}, 'text', child...): attributes, properties for on* and a few others. */
export function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'text') e.textContent = v;
    else if (k === 'value' || k === 'checked' || k === 'disabled') e[k] = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

/** 1536 → "1.5 KiB"; binary units, as the CLI and API use. */
export function fmtBytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = Math.abs(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  const s = v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1);
  return `${n < 0 ? '-' : ''}${s} ${units[i]}`;
}

export function fmtMib(mib) {
  return mib >= 1024 && mib % 1024 === 0 ? `${mib / 1024} GiB` : `${mib} MiB`;
}

/** Seconds → "2 d 3 h", "4 h 5 min", "6 min 7 s", "8 s". */
export function fmtDuration(s) {
  if (s === null || s === undefined || s < 0) return '–';
  s = Math.floor(s);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  if (d > 0) return `${d} d ${h} h`;
  if (h > 0) return `${h} h ${m} min`;
  if (m > 0) return `${m} min ${sec} s`;
  return `${sec} s`;
}

/** Uptime of a VM record: from its started_at while it has a worker. */
export function uptimeOf(vm) {
  if (!vm.started_at || !['running', 'paused', 'shutting_down', 'stopping'].includes(vm.state)) return null;
  return Math.max(0, (Date.now() - Date.parse(vm.started_at)) / 1000);
}

/** The state as a badge; the text is the state itself, the colour only repeats it. */
export function stateBadge(state) {
  return el('span', { class: `badge state-${state}`, 'data-state': state }, state.replace('_', ' '));
}

/** Tells screen readers (and the status line) what just happened. */
export function announce(text) {
  const live = document.getElementById('announcer');
  if (live) live.textContent = text;
}
