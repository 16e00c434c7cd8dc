// The VM's serial console in xterm.js over the daemon's console WebSocket (GET /api/v1/vms/NAME/console, binary
// frames both ways). The daemon replays the last 64 KiB on connect, so every (re)connect starts from a clean
// terminal. While the VM is meant to run, a closed socket is retried with backoff: a daemon restart (or a worker
// that is still starting) ends in a reconnect without a reload.

import { Terminal } from './xterm.mjs';
import { FitAddon } from './addon-fit.mjs';
import { el, announce } from './util.js';

const LIVE = ['running', 'paused', 'shutting_down'];

export function consolePanel(vmName) {
  const status = el('p', { class: 'console-status', role: 'status' }, 'Not connected');
  const box = el('div', { class: 'console-screen', 'aria-label': `Serial console of ${vmName}`, role: 'group' });
  const copyBtn = el('button', { type: 'button', class: 'quiet', title: 'Ctrl+Shift+C' }, 'Copy selection');
  const pasteBtn = el('button', { type: 'button', class: 'quiet', title: 'Ctrl+Shift+V' }, 'Paste');
  const section = el('section', { class: 'console', 'aria-labelledby': 'console-title' },
    el('div', { class: 'section-head' },
      el('h2', { id: 'console-title' }, 'Serial console'),
      el('div', { class: 'tools' }, copyBtn, pasteBtn)),
    status, box,
    el('p', { class: 'help' }, 'Click the console to type. Tab and Ctrl+C go to the guest; F6 leaves the console. ',
      'Ctrl+Shift+C copies the selection, Ctrl+Shift+V pastes.'));

  const term = new Terminal({
    scrollback: 10000,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", "Liberation Mono", monospace',
    fontSize: 14,
    cursorBlink: true,
    theme: { background: '#101418', foreground: '#e6e6e6' },
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  const enc = new TextEncoder();
  let ws = null;
  let timer = null;
  let attempt = 0;
  let state = null;
  let closed = false;
  let opened = false;
  let resize = null;

  function setStatus(text, kind) {
    status.textContent = text;
    status.dataset.kind = kind;
  }

  function send(bytes) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(bytes);
  }
  term.onData((s) => send(enc.encode(s)));
  // Bytes that are not UTF-8 text (e.g. some mouse reports) come as a binary string: one char per byte.
  term.onBinary((s) => send(Uint8Array.from(s, (c) => c.charCodeAt(0) & 0xff)));

  async function copy() {
    const text = term.getSelection();
    if (!text) return announce('Nothing is selected in the console');
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // No async clipboard (plain http to another host is not a secure context): the old way, from a textarea.
      const t = el('textarea', { class: 'visually-hidden' }, text);
      document.body.append(t);
      t.select();
      document.execCommand('copy');
      t.remove();
    }
    announce('Copied');
    term.focus();
  }

  async function paste() {
    try {
      term.paste(await navigator.clipboard.readText());
      term.focus();
    } catch {
      announce('This browser does not let the page read the clipboard: use Ctrl+Shift+V in the console');
    }
  }
  copyBtn.addEventListener('click', copy);
  pasteBtn.addEventListener('click', paste);

  // The keys the terminal would otherwise swallow: copy, paste (the browser's own paste event then goes to xterm),
  // and F6 to leave, since Tab belongs to the guest (no keyboard trap).
  term.attachCustomKeyEventHandler((ev) => {
    if (ev.type !== 'keydown') return true;
    if (ev.ctrlKey && ev.shiftKey && ev.code === 'KeyC') {
      ev.preventDefault();
      copy();
      return false;
    }
    if (ev.ctrlKey && ev.shiftKey && ev.code === 'KeyV') return false;
    if (ev.key === 'F6') {
      ev.preventDefault();
      const all = [...document.querySelectorAll('a[href], button:not([disabled]), input:not([disabled]), select, [tabindex="0"]')]
        .filter((e) => !box.contains(e) && e.offsetParent !== null);
      const after = all.filter((e) => box.compareDocumentPosition(e) & Node.DOCUMENT_POSITION_FOLLOWING);
      const before = all.filter((e) => box.compareDocumentPosition(e) & Node.DOCUMENT_POSITION_PRECEDING);
      (ev.shiftKey ? before[before.length - 1] : after[0] || before[0])?.focus();
      return false;
    }
    return true;
  });

  function connect() {
    timer = null;
    if (closed || ws || !LIVE.includes(state)) return;
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/api/v1/vms/${encodeURIComponent(vmName)}/console`;
    setStatus(attempt === 0 ? 'Connecting…' : 'Reconnecting…', 'pending');
    const s = new WebSocket(url);
    s.binaryType = 'arraybuffer';
    ws = s;
    s.onopen = () => {
      attempt = 0;
      logShown = false;
      // The daemon replays recent output first: start from a clean screen, or it would appear twice.
      term.reset();
      setStatus('Connected', 'ok');
    };
    s.onmessage = (e) => term.write(new Uint8Array(e.data));
    s.onclose = () => {
      if (ws !== s) return;
      ws = null;
      if (closed) return;
      if (LIVE.includes(state)) {
        attempt++;
        setStatus('Disconnected: reconnecting…', 'pending');
        timer = setTimeout(connect, Math.min(5000, 250 * 2 ** Math.min(attempt, 5)));
      } else {
        setStatus(`The VM is ${state.replace('_', ' ')}: the console opens when it runs.`, 'off');
        showLog();
      }
    };
  }

  // A VM that is not running has no console socket: show the end of its persisted log, so its last output (why it
  // stopped, what it printed) is there. This also runs when a live console here ends because the VM stopped: the
  // worker writes its log to the end before it exits, while the live stream can lose the last bytes it printed
  // just before exiting (the socket closes with the worker). A connect clears it for the live replay.
  let logShown = false;
  async function showLog() {
    if (logShown || ws) return;
    logShown = true;
    try {
      const r = await fetch(`/api/v1/vms/${encodeURIComponent(vmName)}/console/log?tail=65536`, { credentials: 'same-origin' });
      if (!r.ok || ws) return;
      const bytes = new Uint8Array(await r.arrayBuffer());
      if (bytes.length === 0 || ws) return;
      term.reset();
      term.write('\x1b[2m(the console log of its last run)\x1b[0m\r\n');
      term.write(bytes);
    } catch { /* no log: nothing to show */ }
  }

  return {
    element: section,
    /** Called once the section is in the document (xterm measures its container). */
    mount() {
      term.open(box);
      fit.fit();
      resize = new ResizeObserver(() => {
        try { fit.fit(); } catch { /* hidden or detached */ }
      });
      resize.observe(box);
      opened = true;
      connect();
    },
    /** The VM's state changed (or was read again): connect when it runs, say why not otherwise. */
    setState(s) {
      state = s;
      if (!opened) return;
      if (LIVE.includes(s)) {
        if (!ws && !timer) connect();
      } else if (!ws) {
        setStatus(`The VM is ${s.replace('_', ' ')}: the console opens when it runs.`, 'off');
        showLog();
      }
    },
    /** All of the terminal's lines (scrollback included), for scripts and tests. */
    text() {
      const b = term.buffer.active;
      const lines = [];
      for (let i = 0; i < b.length; i++) lines.push(b.getLine(i)?.translateToString(true) ?? '');
      return lines.join('\n');
    },
    focus: () => term.focus(),
    destroy() {
      closed = true;
      clearTimeout(timer);
      resize?.disconnect();
      ws?.close();
      term.dispose();
    },
  };
}
