// The daemon's event stream (GET /api/v1/events, Server-Sent Events), one connection for the whole page.
// Views register { event(type, data), resync() }. resync runs each time the stream (re)opens: the daemon subscribes
// before it answers, so what a view reads in resync plus the events after it miss nothing. After a daemon restart
// the browser's EventSource reconnects by itself, and the views read their state again.

import { api } from './util.js';

const TYPES = ['vm-state-changed', 'vm-exited', 'operation-created', 'operation-updated'];
const handlers = new Set();
let source = null;
let open = false;
let retryTimer = null;

export function subscribe(h) {
  handlers.add(h);
  if (open) h.resync?.();
  else connect();
  return () => handlers.delete(h);
}

function setStatus(text, live) {
  const s = document.getElementById('stream-status');
  if (!s) return;
  s.textContent = text;
  s.dataset.live = live ? 'true' : 'false';
}

function connect() {
  if (source || retryTimer) return;
  source = new EventSource('/api/v1/events');
  source.onopen = () => {
    open = true;
    setStatus('Live', true);
    for (const h of [...handlers]) h.resync?.();
  };
  for (const t of TYPES) {
    source.addEventListener(t, (e) => {
      const data = JSON.parse(e.data);
      for (const h of [...handlers]) h.event?.(t, data);
    });
  }
  // Fell too far behind: the daemon ends the stream; start over and re-read.
  source.addEventListener('lagged', () => restart(0));
  source.onerror = () => {
    open = false;
    setStatus('Reconnecting…', false);
    // CONNECTING: the browser retries by itself (daemon restarting). CLOSED: the daemon answered with an error
    // (e.g. 401 after the session ended); ask the session endpoint, which shows the login form on a 401.
    if (source.readyState === EventSource.CLOSED) restart(3000);
  };
}

function restart(delay) {
  source?.close();
  source = null;
  open = false;
  clearTimeout(retryTimer);
  retryTimer = setTimeout(async () => {
    retryTimer = null;
    try { await api('GET', '/api/v1/session'); } catch { /* 401 shows the login form; anything else: retry */ }
    if (handlers.size > 0) connect();
  }, delay);
}

/** Logout: no more events. */
export function closeEvents() {
  handlers.clear();
  source?.close();
  source = null;
  open = false;
  clearTimeout(retryTimer);
  retryTimer = null;
}
