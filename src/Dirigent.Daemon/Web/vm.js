// One VM: its record, the action buttons (enabled only in the states the daemon accepts them in), the operation an
// action started with its progress as the daemon reports it, the serial console and the graphs. Everything after
// the first read comes from the event stream (vm-state-changed, operation-created/updated for "vms/NAME").

import { api, el, fmtMib, fmtDuration, uptimeOf, stateBadge, announce } from './util.js';
import { subscribe } from './events.js';
import { consolePanel } from './console.js';
import { chartsPanel } from './charts.js';

// The states each action is accepted in (VmManager's prechecks) and the right it needs.
const ACTIONS = [
  { id: 'start', label: 'Start', states: ['stopped', 'crashed', 'lost'], right: 'operate', primary: true },
  { id: 'stop', label: 'Stop', states: ['running', 'paused', 'shutting_down', 'starting', 'stopping'], right: 'operate' },
  { id: 'shutdown', label: 'Shut down', states: ['running'], right: 'operate' },
  { id: 'reboot', label: 'Reboot', states: ['running', 'paused'], right: 'operate' },
  { id: 'pause', label: 'Pause', states: ['running'], right: 'operate' },
  { id: 'resume', label: 'Resume', states: ['paused'], right: 'operate' },
  { id: 'snapshot', label: 'Snapshot…', states: ['running', 'paused'], right: 'operate', form: 'Snapshot name' },
  { id: 'clone', label: 'Clone…', states: ['stopped', 'crashed'], right: 'admin', form: 'Name of the clone' },
  { id: 'delete', label: 'Delete', states: ['stopped', 'crashed', 'lost'], right: 'admin', danger: true },
];
const NAME = /^[a-z0-9][a-z0-9-]{0,62}$/;

export function vmPage(main, name, session) {
  document.title = `${name} · Dirigent`;
  const path = `/api/v1/vms/${encodeURIComponent(name)}`;
  const target = `vms/${name}`;
  let vm = null;
  let op = null;

  const badge = el('span', { id: 'vm-state' });
  const details = el('dl', { class: 'details' });
  const buttons = new Map();
  const toolbar = el('div', { class: 'toolbar', role: 'group', 'aria-label': 'Actions' });
  for (const a of ACTIONS) {
    const b = el('button', { type: 'button', class: a.primary ? 'primary' : a.danger ? 'danger' : '', 'data-action': a.id, disabled: true }, a.label);
    b.addEventListener('click', () => act(a));
    buttons.set(a.id, b);
    toolbar.append(b);
  }
  const inline = el('div', { class: 'inline-form', hidden: true });
  const opBox = el('div', { class: 'operation', role: 'status', 'aria-live': 'polite', hidden: true });
  const error = el('p', { class: 'form-error', role: 'alert', hidden: true });
  const con = consolePanel(name);
  const charts = chartsPanel(name);
  main.append(
    el('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, el('a', { href: '#/' }, 'Virtual machines'), ' › ', name),
    el('div', { class: 'page-head' }, el('h1', {}, name), badge),
    details, toolbar, inline, opBox, error,
    el('div', { class: 'vm-body' }, con.element, charts.element));
  con.mount();
  charts.mount();
  window.dirigentConsole = { text: () => con.text() };

  function show(record) {
    vm = record;
    badge.replaceChildren(stateBadge(vm.state));
    const s = vm.spec;
    const rows = [
      ['vCPUs', s.vcpus], ['Memory', fmtMib(s.memory_mib)], ['Accelerator', s.accel],
      ['Kernel', s.kernel || 'default guest'], ['Uptime', el('span', { class: 'uptime' }, fmtDuration(uptimeOf(vm)))],
      ['Restart', vm.restart + (vm.autostart ? ', starts with the daemon' : '')],
    ];
    if (vm.host) rows.push(['Host', vm.host]);
    if (vm.exit) rows.push(['Last exit', `${vm.exit.kind}${vm.exit.detail ? `: ${vm.exit.detail}` : ''}`]);
    details.replaceChildren(...rows.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
    for (const a of ACTIONS) {
      const allowed = a.states.includes(vm.state) && session.rights.includes(a.right);
      const b = buttons.get(a.id);
      b.disabled = !allowed;
      b.title = allowed ? '' : session.rights.includes(a.right) ? `Not while the VM is ${vm.state.replace('_', ' ')}` : `Needs the ${a.right} right`;
    }
    if (!inline.hidden && inline.dataset.action && buttons.get(inline.dataset.action).disabled) inline.hidden = true;
    con.setState(vm.state);
  }

  function gone() {
    vm = null;
    main.replaceChildren(el('div', { class: 'card', role: 'alert' },
      el('h1', {}, `No VM named ${name}`), el('p', {}, 'It does not exist (any more).'),
      el('a', { class: 'button primary', href: '#/' }, 'Back to the list')));
    main.focus();
  }

  async function reload() {
    try {
      show(await api('GET', path));
      error.hidden = true;
    } catch (e) {
      if (e.status === 404) return gone();
      if (e.status !== 401) fail(`Could not read the VM: ${e.detail}`);
    }
  }

  function fail(text) {
    error.textContent = text;
    error.hidden = false;
  }

  // The operation panel: what runs, its last progress note, and how it ended.
  // An operation only moves forward: pending → running → ended. The POST's answer (pending) can
  // arrive after the event stream has already said the operation ended; it must not undo that.
  const STAGE = { pending: 0, running: 1 };
  const stage = (s) => STAGE[s] ?? 2;
  function showOp(o) {
    if (op && o.id !== op.id && new Date(o.created_at) < new Date(op.created_at)) return;
    if (op && o.id === op.id && stage(o.status) < stage(op.status)) return;
    op = o;
    const running = o.status === 'pending' || o.status === 'running';
    opBox.hidden = false;
    opBox.dataset.status = o.status;
    opBox.replaceChildren(...[
      el('span', { class: 'op-title' }, o.description), ': ',
      el('span', { class: 'op-status' }, o.status),
      o.progress && running ? [' — ', el('span', { class: 'op-progress' }, o.progress)] : null,
      o.error ? [' — ', el('span', { class: 'op-error' }, o.error)] : null,
      running ? el('progress', { 'aria-label': `${o.description} in progress` }) : null].flat().filter(Boolean));
    if (!running) announce(`${o.description}: ${o.status}${o.error ? `: ${o.error}` : ''}`);
  }

  async function submit(action, body) {
    error.hidden = true;
    const b = buttons.get(action);
    b.disabled = true;
    try {
      const url = action === 'snapshot' ? `${path}/snapshots` : `${path}/${action}`;
      showOp(await api('POST', url, body));
    } catch (e) {
      if (e.status !== 401) fail(`${action} failed: ${e.detail}`);
      if (vm) show(vm);
    }
  }

  async function act(a) {
    if (a.form) return askName(a);
    if (a.id === 'delete') {
      if (!confirm(`Delete the VM ${name}? Its console log and snapshots go with it.`)) return;
      try {
        await api('DELETE', path);
        announce(`VM ${name} deleted`);
        location.hash = '#/';
      } catch (e) {
        if (e.status !== 401) fail(`Delete failed: ${e.detail}`);
      }
      return;
    }
    // Shutdown presses the power button; after a minute without power-off the daemon stops the VM.
    await submit(a.id, a.id === 'shutdown' ? { timeout_s: 60, force: true } : undefined);
  }

  // Snapshot and clone take a name: a small form under the buttons, checked before it is sent.
  function askName(a) {
    const input = el('input', { id: 'inline-name', type: 'text', autocomplete: 'off', spellcheck: 'false', 'aria-describedby': 'inline-error' });
    const err = el('p', { id: 'inline-error', class: 'field-error', hidden: true });
    const form = el('form', { novalidate: true },
      el('div', { class: 'field' }, el('label', { for: 'inline-name' }, a.form), input, err),
      el('div', { class: 'actions' },
        el('button', { type: 'submit', class: 'primary' }, a.id === 'snapshot' ? 'Take snapshot' : 'Clone'),
        el('button', { type: 'button', onclick: () => { inline.hidden = true; buttons.get(a.id).focus(); } }, 'Cancel')));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const v = input.value.trim();
      if (!NAME.test(v)) {
        err.textContent = "Use 1–63 characters of a–z, 0–9 and '-', starting with a letter or digit.";
        err.hidden = false;
        input.setAttribute('aria-invalid', 'true');
        input.focus();
        return;
      }
      inline.hidden = true;
      await submit(a.id, { name: v });
    });
    inline.dataset.action = a.id;
    inline.replaceChildren(form);
    inline.hidden = false;
    input.focus();
  }

  const unsubscribe = subscribe({
    async resync() {
      await reload();
      // An operation that ended while the stream was down: read it again.
      if (op) try { showOp(await api('GET', `/api/v1/operations/${op.id}`)); } catch { /* forgotten */ }
    },
    event(type, d) {
      if (type === 'vm-state-changed' && d.vm === name) {
        if (d.new_state === 'deleted') return gone();
        reload();
      } else if ((type === 'operation-created' || type === 'operation-updated') && d.target === target) {
        showOp(d);
      }
    },
  });
  const tick = setInterval(() => {
    const u = details.querySelector('.uptime');
    if (u && vm) u.textContent = fmtDuration(uptimeOf(vm));
  }, 1000);

  return {
    destroy() {
      unsubscribe();
      clearInterval(tick);
      con.destroy();
      charts.destroy();
      delete window.dirigentConsole;
    },
  };
}
