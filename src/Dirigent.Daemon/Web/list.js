// The VM list: read once when the event stream opens, then kept current by its events (no polling). A
// vm-state-changed event re-reads that one VM; uptime ticks locally from the record's started_at.

import { api, el, fmtMib, fmtDuration, uptimeOf, stateBadge } from './util.js';
import { subscribe } from './events.js';

export function listPage(main, session) {
  document.title = 'Virtual machines · Dirigent';
  const rows = new Map();
  const tbody = el('tbody');
  const empty = el('p', { class: 'empty', hidden: true }, 'No virtual machines yet.',
    session.rights.includes('admin') ? [' ', el('a', { href: '#/create' }, 'Create one'), '.'] : null);
  const error = el('p', { class: 'form-error', role: 'alert', hidden: true });
  const table = el('table', { class: 'vms' },
    el('caption', { class: 'visually-hidden' }, 'Virtual machines, updated live'),
    el('thead', {}, el('tr', {}, ['Name', 'State', 'vCPUs', 'Memory', 'Accel', 'Uptime', 'Host'].map((h) => el('th', { scope: 'col' }, h)))),
    tbody);
  // In cluster mode records carry the host they are placed on; on one host the column stays hidden, as in `vm list`.
  const hostHead = table.querySelector('thead th:last-child');
  function showHosts() {
    const any = [...rows.values()].some(({ vm }) => vm.host);
    hostHead.hidden = !any;
    for (const { row } of rows.values()) row.querySelector('td[data-label="Host"]').hidden = !any;
  }
  main.append(
    el('div', { class: 'page-head' },
      el('h1', {}, 'Virtual machines'),
      session.rights.includes('admin') ? el('a', { class: 'button primary', href: '#/create' }, 'Create VM') : null),
    error, el('div', { class: 'table-wrap' }, table), empty);

  function cell(label, ...content) {
    return el('td', { 'data-label': label }, ...content);
  }

  function upsert(vm) {
    const row = el('tr', { 'data-vm': vm.name },
      el('th', { scope: 'row', 'data-label': 'Name' }, el('a', { href: `#/vm/${encodeURIComponent(vm.name)}` }, vm.name)),
      cell('State', stateBadge(vm.state)),
      cell('vCPUs', String(vm.spec.vcpus)),
      cell('Memory', fmtMib(vm.spec.memory_mib)),
      cell('Accel', vm.spec.accel),
      cell('Uptime', el('span', { class: 'uptime' }, fmtDuration(uptimeOf(vm)))),
      cell('Host', vm.host || '-'));
    const old = rows.get(vm.name);
    rows.set(vm.name, { vm, row });
    if (old) old.row.replaceWith(row);
    else {
      // Keep name order, as the API lists them.
      const after = [...rows.keys()].filter((n) => n > vm.name && n !== vm.name && rows.get(n).row.isConnected).sort()[0];
      if (after) tbody.insertBefore(row, rows.get(after).row);
      else tbody.append(row);
    }
    empty.hidden = rows.size > 0;
    showHosts();
  }

  function remove(name) {
    rows.get(name)?.row.remove();
    rows.delete(name);
    empty.hidden = rows.size > 0;
    showHosts();
  }

  async function reload() {
    try {
      const { vms } = await api('GET', '/api/v1/vms');
      for (const name of [...rows.keys()]) if (!vms.some((v) => v.name === name)) remove(name);
      for (const vm of vms) upsert(vm);
      empty.hidden = vms.length > 0;
      error.hidden = true;
    } catch (e) {
      if (e.status === 401) return;
      error.textContent = `Could not read the VMs: ${e.detail}`;
      error.hidden = false;
    }
  }

  async function refresh(name) {
    try {
      upsert(await api('GET', `/api/v1/vms/${encodeURIComponent(name)}`));
    } catch (e) {
      if (e.status === 404) remove(name);
    }
  }

  const unsubscribe = subscribe({
    resync: reload,
    event(type, d) {
      if (type !== 'vm-state-changed') return;
      if (d.new_state === 'deleted') remove(d.vm);
      else refresh(d.vm);
    },
  });
  const tick = setInterval(() => {
    for (const { vm, row } of rows.values()) row.querySelector('.uptime').textContent = fmtDuration(uptimeOf(vm));
  }, 1000);

  return {
    destroy() {
      unsubscribe();
      clearInterval(tick);
    },
  };
}
