// The create-VM form: every value is checked here first (the same rules as the API's) and a bad one is shown at its
// field and not sent; what the daemon still refuses (a duplicate name, a missing kernel file) comes back as a problem
// whose detail names the field, and is shown there too.

import { api, el, announce } from './util.js';

const NAME = /^[a-z0-9][a-z0-9-]{0,62}$/;
// The default guest (Debian's kernel + busybox initramfs) does not boot below this (README: "about 72 MiB").
const DEFAULT_GUEST_MIN_MIB = 72;

export function createPage(main) {
  document.title = 'Create VM · Dirigent';
  const fields = {};
  const formError = el('div', { class: 'form-error', role: 'alert', hidden: true });

  // One labelled control with its help and its error line (aria-describedby both, aria-invalid when wrong).
  function field(id, label, control, help) {
    control.id = `f-${id}`;
    control.name = id;
    const err = el('p', { id: `f-${id}-error`, class: 'field-error', hidden: true });
    const helpEl = help ? el('p', { id: `f-${id}-help`, class: 'help' }, help) : null;
    control.setAttribute('aria-describedby', [helpEl ? helpEl.id : null, err.id].filter(Boolean).join(' '));
    fields[id] = { control, err };
    const isCheck = control.type === 'checkbox';
    return el('div', { class: isCheck ? 'field check' : 'field' },
      isCheck ? [control, el('label', { for: control.id }, label)] : [el('label', { for: control.id }, label), control],
      helpEl, err);
  }
  const text = (attrs) => el('input', { type: 'text', autocomplete: 'off', spellcheck: 'false', ...attrs });
  const select = (options, value) => el('select', {}, options.map(([v, t]) => el('option', { value: v, selected: v === value }, t)));

  const disksBox = el('fieldset', { class: 'disks' }, el('legend', {}, 'Disks'), el('p', { class: 'help' }, 'Loading the disks…'));
  const submit = el('button', { type: 'submit', class: 'primary' }, 'Create');
  const form = el('form', { class: 'card create', novalidate: true, 'aria-labelledby': 'create-title' },
    el('h1', { id: 'create-title' }, 'Create a virtual machine'),
    formError,
    el('div', { class: 'grid' },
      field('name', 'Name', text({ required: true, maxlength: 63 }), "1–63 characters: a–z, 0–9 and '-', starting with a letter or digit."),
      field('memory', 'Memory (MiB)', text({ inputmode: 'numeric', value: '256', required: true }), 'Guest RAM in MiB.'),
      field('vcpus', 'vCPUs', text({ inputmode: 'numeric', value: '1', required: true }), '1 to 64.'),
      field('accel', 'Accelerator', select([['auto', 'auto (fastest here)'], ['emu', 'emu (software CPU)'], ['kvm', 'kvm']], 'auto')),
      field('kernel', 'Kernel', text({ placeholder: '/path/to/bzImage' }), 'An absolute path on the daemon host; empty: the default guest.'),
      field('initrd', 'Initrd', text({ placeholder: '/path/to/initrd.img' }), 'Absolute paths, separated by commas (needs a kernel).'),
      field('cmdline', 'Kernel command line', text({}), 'Empty: the default.'),
      field('restart', 'Restart', select([['no', 'no'], ['on-failure', 'on failure'], ['always', 'always']], 'no'),
        'Restart the VM when it crashes (on failure), or whenever it ends (always).'),
      field('rng', 'Entropy device (virtio-rng)', el('input', { type: 'checkbox' })),
      field('autostart', 'Start with the daemon', el('input', { type: 'checkbox' }))),
    disksBox,
    el('div', { class: 'actions' }, submit, el('a', { class: 'button', href: '#/' }, 'Cancel')));
  main.append(form);
  fields.name.control.focus();

  let diskNames = [];
  api('GET', '/api/v1/disks').then(({ disks }) => {
    diskNames = disks.map((d) => d.name);
    disksBox.replaceChildren(el('legend', {}, 'Disks'),
      disks.length === 0
        ? el('p', { class: 'help' }, 'No disks yet: add one with ', el('code', {}, 'dirigent disk add NAME --size 8G'), '.')
        : disks.map((d) => el('div', { class: 'field check' },
          el('input', { type: 'checkbox', id: `disk-${d.name}`, value: d.name, name: 'disk' }),
          el('label', { for: `disk-${d.name}` }, `${d.name} (${d.format})`))));
  }).catch(() => disksBox.replaceChildren(el('legend', {}, 'Disks'), el('p', { class: 'help' }, 'The disks could not be read.')));

  function setError(id, message) {
    const { control, err } = fields[id];
    err.textContent = message || '';
    err.hidden = !message;
    if (message) control.setAttribute('aria-invalid', 'true');
    else control.removeAttribute('aria-invalid');
  }

  function integer(id, min, max, what) {
    const raw = fields[id].control.value.trim();
    if (!/^\d+$/.test(raw)) return [null, `Enter ${what} as a whole number.`];
    const v = Number(raw);
    if (v < min || v > max) return [null, `Must be between ${min} and ${max}.`];
    return [v, null];
  }

  /** The request body, or null after showing each bad value at its field. */
  function validate() {
    const errors = {};
    const v = (id) => fields[id].control.value.trim();
    const name = v('name');
    if (!name) errors.name = 'Enter a name.';
    else if (!NAME.test(name)) errors.name = "Use 1–63 characters of a–z, 0–9 and '-', starting with a letter or digit.";
    const kernel = v('kernel');
    if (kernel && !kernel.startsWith('/')) errors.kernel = 'Give an absolute path (starting with /).';
    const [memory, memErr] = integer('memory', 1, 1048576, 'the memory in MiB');
    if (memErr) errors.memory = memErr;
    else if (!kernel && memory < DEFAULT_GUEST_MIN_MIB) errors.memory = `The default guest needs at least ${DEFAULT_GUEST_MIN_MIB} MiB.`;
    const [vcpus, cpuErr] = integer('vcpus', 1, 64, 'the number of vCPUs');
    if (cpuErr) errors.vcpus = cpuErr;
    const initrd = v('initrd') ? v('initrd').split(',').map((s) => s.trim()).filter(Boolean) : [];
    if (initrd.some((p) => !p.startsWith('/'))) errors.initrd = 'Give absolute paths (starting with /).';
    else if (initrd.length > 0 && !kernel) errors.initrd = 'An initrd needs a kernel (the default guest brings its own).';
    for (const id of Object.keys(fields)) setError(id, errors[id]);
    const bad = Object.keys(fields).find((id) => errors[id]);
    if (bad) {
      fields[bad].control.focus();
      announce(`${Object.keys(errors).length} field${Object.keys(errors).length > 1 ? 's need' : ' needs'} a change`);
      return null;
    }
    const disks = [...disksBox.querySelectorAll('input:checked')].map((c) => ({ disk: c.value })).filter((d) => diskNames.includes(d.disk));
    const spec = { memory_mib: memory, vcpus, accel: v('accel'), rng: fields.rng.control.checked };
    if (kernel) spec.kernel = kernel;
    if (initrd.length) spec.initrd = initrd;
    if (v('cmdline')) spec.cmdline = v('cmdline');
    if (disks.length) spec.disks = disks;
    return { name, spec, restart: v('restart'), autostart: fields.autostart.control.checked };
  }

  // Which field a problem's detail is about ("field 'spec.memory_mib': ...", "a VM named 'x' already exists").
  function fieldOf(detail) {
    const m = /field '([^']+)'/.exec(detail);
    const key = m ? m[1].replace(/\[\d+\].*$/, '') : (/VM named/.test(detail) ? 'name' : null);
    return { name: 'name', 'spec.memory_mib': 'memory', 'spec.vcpus': 'vcpus', 'spec.kernel': 'kernel', 'spec.initrd': 'initrd',
      'spec.cmdline': 'cmdline', 'spec.accel': 'accel', restart: 'restart' }[key];
  }

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    formError.hidden = true;
    const body = validate();
    if (!body) return;
    submit.disabled = true;
    try {
      const vm = await api('POST', '/api/v1/vms', body);
      announce(`VM ${vm.name} created`);
      location.hash = `#/vm/${encodeURIComponent(vm.name)}`;
    } catch (e) {
      const id = fieldOf(e.detail || '');
      if (id) {
        setError(id, e.detail);
        fields[id].control.focus();
      } else {
        formError.textContent = `The VM was not created: ${e.detail}`;
        formError.hidden = false;
        formError.focus?.();
      }
    } finally {
      submit.disabled = false;
    }
  });

  return { destroy() {} };
}
