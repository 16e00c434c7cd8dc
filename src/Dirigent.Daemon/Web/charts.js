// The VM's graphs, hand-drawn SVG (no charting library): CPU, memory, disk and network over the last 10 minutes,
// from the daemon's metrics history (GET /api/v1/vms/NAME/metrics/stream: the history first, then one sample every
// 2 s). The time axis ends at the newest sample's server time, so the browser's clock does not matter.

import { el, fmtBytes } from './util.js';

const WINDOW_S = 600;
const H = 136, L = 78, R = 10, T = 10, B = 22; // height and plot margins in CSS pixels (the width is the figure's)
const NS = 'http://www.w3.org/2000/svg';

const pct = (v) => `${(v * 100).toFixed(v < 0.1 ? 1 : 0)} %`;
const rate = (v) => `${fmtBytes(v)}/s`;

// Colours: dark enough on white for lines and legend swatches (contrast ≥ 3:1 for graphics).
const CHARTS = [
  { key: 'cpu', title: 'CPU', fmt: pct, floor: 1, binary: false, series: [{ field: 'cpu', label: 'host CPU', color: '#0b5cad' }] },
  { key: 'memory', title: 'Memory', fmt: fmtBytes, floor: 64 << 20, binary: true, series: [{ field: 'memory_bytes', label: 'worker memory', color: '#7b3fa0' }] },
  {
    key: 'disk', title: 'Disk', fmt: rate, floor: 64 << 10, binary: true, series: [
      { field: 'disk_read_bps', label: 'read', color: '#0d7a3e' }, { field: 'disk_write_bps', label: 'write', color: '#b3261e' }],
  },
  {
    key: 'network', title: 'Network', fmt: rate, floor: 64 << 10, binary: true, series: [
      { field: 'net_rx_bps', label: 'received', color: '#0d7a3e' }, { field: 'net_tx_bps', label: 'sent', color: '#b3261e' }],
  },
];

function svg(tag, attrs, ...children) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  for (const c of children) e.append(c);
  return e;
}

/** A round upper bound at or above v: 1, 2, 5 × 10^n, or for bytes a power of two (so the labels read 256 MiB). */
function niceMax(v, binary) {
  if (binary) return 2 ** Math.ceil(Math.log2(v));
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

export function chartsPanel(vmName) {
  let samples = [];
  let source = null;
  const status = el('p', { class: 'help charts-status', role: 'status' }, 'Loading the metrics…');
  const figures = CHARTS.map((c) => {
    const plot = svg('svg', { role: 'img', class: 'plot', height: H });
    const legend = el('ul', { class: 'legend' });
    const fig = el('figure', { class: 'chart', 'data-chart': c.key }, el('figcaption', {}, c.title), plot, legend);
    return { c, fig, plot, legend };
  });
  const section = el('section', { class: 'graphs', 'aria-labelledby': 'graphs-title' },
    el('div', { class: 'section-head' }, el('h2', { id: 'graphs-title' }, 'Graphs'), el('span', { class: 'help' }, 'last 10 minutes, every 2 s')),
    status, el('div', { class: 'chart-grid' }, figures.map((f) => f.fig)));

  let resize = null;

  function draw() {
    // Drawn at the figure's own pixel width, so labels keep their size in any window.
    const W = Math.max(200, figures[0].plot.clientWidth || 560);
    const end = samples.length ? Date.parse(samples[samples.length - 1].at) : Date.now();
    const x = (t) => L + ((t - (end - WINDOW_S * 1000)) / (WINDOW_S * 1000)) * (W - L - R);
    status.textContent = samples.length ? '' : 'No samples yet: they start when the VM runs.';
    for (const { c, fig, plot, legend } of figures) {
      let max = 0;
      let points = 0;
      for (const s of samples) for (const se of c.series) if (s[se.field] != null) { max = Math.max(max, s[se.field]); points++; }
      const top = niceMax(Math.max(max, c.floor), c.binary);
      const y = (v) => T + (1 - v / top) * (H - T - B);
      const kids = [];
      for (const f of [0, 0.5, 1]) {
        kids.push(svg('line', { x1: L, x2: W - R, y1: y(top * f), y2: y(top * f), class: 'grid' }));
        const label = svg('text', { x: L - 6, y: y(top * f) + 4, 'text-anchor': 'end', class: 'tick' });
        label.textContent = c.fmt(top * f);
        kids.push(label);
      }
      for (const [t, txt] of [[end - WINDOW_S * 1000, '−10 min'], [end - 300 * 1000, '−5 min'], [end, 'now']]) {
        const label = svg('text', { x: x(t), y: H - 6, 'text-anchor': t === end ? 'end' : t === end - WINDOW_S * 1000 ? 'start' : 'middle', class: 'tick' });
        label.textContent = txt;
        kids.push(label);
      }
      const now = [];
      for (const se of c.series) {
        // A gap (no value: first sample of a run, a worker that did not answer) breaks the line.
        let d = '';
        let pen = false;
        for (const s of samples) {
          const v = s[se.field];
          if (v == null) { pen = false; continue; }
          d += `${pen ? 'L' : 'M'}${x(Date.parse(s.at)).toFixed(1)},${y(v).toFixed(1)}`;
          pen = true;
        }
        if (d) kids.push(svg('path', { d, fill: 'none', stroke: se.color, 'stroke-width': 2, 'vector-effect': 'non-scaling-stroke' }));
        const last = [...samples].reverse().find((s) => s[se.field] != null);
        // The newest point as a dot: visible even when it is the only one (a worker's first sample).
        if (last) kids.push(svg('circle', { cx: x(Date.parse(last.at)), cy: y(last[se.field]), r: 3, fill: se.color }));
        now.push({ se, v: last ? last[se.field] : null });
      }
      plot.setAttribute('viewBox', `0 0 ${W} ${H}`);
      plot.replaceChildren(...kids);
      legend.replaceChildren(...now.map(({ se, v }) =>
        el('li', {}, el('span', { class: 'swatch', style: `background:${se.color}` }), `${se.label}: `, el('strong', {}, v == null ? '–' : c.fmt(v)))));
      plot.setAttribute('aria-label', `${c.title} over the last 10 minutes: ${now.map(({ se, v }) => `${se.label} ${v == null ? 'no data' : c.fmt(v)}`).join(', ')}; peak ${c.fmt(max)}`);
      // What the page shows, in numbers: scripts and tests read these rather than the drawing.
      fig.dataset.points = String(points);
      fig.dataset.max = String(max);
    }
  }

  function connect() {
    source = new EventSource(`/api/v1/vms/${encodeURIComponent(vmName)}/metrics/stream`);
    source.addEventListener('history', (e) => {
      samples = JSON.parse(e.data).samples;
      draw();
    });
    source.addEventListener('sample', (e) => {
      samples.push(JSON.parse(e.data));
      const cut = Date.parse(samples[samples.length - 1].at) - WINDOW_S * 1000;
      while (samples.length && Date.parse(samples[0].at) < cut) samples.shift();
      draw();
    });
    source.onerror = () => {
      // CONNECTING: the browser retries (daemon restart). CLOSED: refused (VM deleted, session ended).
      if (source.readyState === EventSource.CLOSED) status.textContent = 'The metrics stream ended.';
    };
  }

  return {
    element: section,
    mount() {
      draw();
      connect();
      resize = new ResizeObserver(() => draw());
      resize.observe(figures[0].plot);
    },
    destroy() {
      resize?.disconnect();
      source?.close();
    },
  };
}
