// Usage analytics as plots: tasks and tokens per day, p95 duration per capability.

import uPlot from '../vendor/uPlot.esm.js';
import { api } from '../api.js';
import { alertBox, field, fill, h, table } from '../dom.js';

const DAY = 86400000;

function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

/** Every day from `from` to `to` (ISO dates), each with its row or zeros. */
function everyDay(rows, from, to) {
  const byDay = new Map(rows.map((row) => [new Date(row.bucket).toISOString().slice(0, 10), row]));
  const days = [];
  for (let t = Date.parse(`${from}T00:00:00Z`); t <= Date.parse(`${to}T00:00:00Z`); t += DAY) {
    const day = isoDay(new Date(t));
    days.push({ day: t / 1000, row: byDay.get(day) || null });
  }
  return days;
}

/** A line plot over days; `series` are `[label, colour, row => value]`. */
function daysPlot(title, days, series, width) {
  const withData = days.filter(({ row }) => row).length;
  const data = [days.map(({ day }) => day), ...series.map(([, , value]) => days.map(({ row }) => (row ? value(row) : 0)))];
  const element = h('figure', { class: 'plot', 'data-plot': title, 'data-points': String(withData) }, h('figcaption', {}, title));
  // eslint-disable-next-line no-new
  new uPlot({
    width, height: 240,
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max)] } },
    series: [{ label: 'Day', value: (u, v) => (v === null ? '' : isoDay(new Date(v * 1000))) },
      ...series.map(([label, stroke]) => ({ label, stroke, width: 2, points: { show: true } }))],
    axes: [{ stroke: '#1f2937' }, { stroke: '#1f2937' }],
  }, data, element);
  return element;
}

/** A bar plot over categories (capabilities). */
function barsPlot(title, labels, values, width) {
  const element = h('figure', { class: 'plot', 'data-plot': title, 'data-points': String(values.length) }, h('figcaption', {}, title));
  const bars = uPlot.paths.bars({ size: [0.6, 80] });
  // eslint-disable-next-line no-new
  new uPlot({
    width, height: 240,
    scales: { x: { time: false, range: [-0.5, labels.length - 0.5] } },
    series: [{ label: 'Capability', value: (u, i) => (i === null ? '' : labels[Math.round(i)] || '') },
      { label: 'p95 ms', stroke: '#1d4ed8', fill: 'rgba(29,78,216,0.35)', paths: bars, points: { show: false } }],
    axes: [{ stroke: '#1f2937', splits: () => labels.map((_, i) => i), values: () => labels }, { stroke: '#1f2937' }],
  }, [labels.map((_, i) => i), values], element);
  return element;
}

export async function render(main) {
  const now = new Date();
  const from = h('input', { type: 'date', name: 'from', value: isoDay(new Date(now.getTime() - 13 * DAY)) });
  const to = h('input', { type: 'date', name: 'to', value: isoDay(now) });
  const plots = h('div', { class: 'plots' });
  const load = async () => {
    const query = {
      from: new Date(`${from.value}T00:00:00Z`).toISOString(),
      to: new Date(Date.parse(`${to.value}T00:00:00Z`) + DAY).toISOString(),
    };
    try {
      const [days, capabilities] = await Promise.all([
        api.get('/api/analytics/usage', { ...query, group_by: 'day' }),
        api.get('/api/analytics/usage', { ...query, group_by: 'capability' }),
      ]);
      const width = Math.max(320, Math.min(900, main.clientWidth - 40));
      const rows = days.rows.filter((row) => row.bucket);
      const period = everyDay(rows, from.value, to.value);
      const caps = capabilities.rows.filter((row) => row.bucket);
      fill(plots,
        rows.length ? daysPlot('Tasks per day', period, [
          ['created', '#1d4ed8', (r) => r.created],
          ['succeeded', '#047857', (r) => r.succeeded],
          ['failed', '#b91c1c', (r) => r.failed],
        ], width) : h('p', {}, 'No tasks in this period.'),
        rows.length ? daysPlot('Tokens per day', period, [
          ['input tokens', '#7c3aed', (r) => r.input_tokens],
          ['output tokens', '#b45309', (r) => r.output_tokens],
        ], width) : null,
        caps.length ? barsPlot('p95 duration per capability (ms)', caps.map((r) => r.bucket), caps.map((r) => r.p95_duration_ms ?? 0), width) : null,
        caps.length ? table('Per capability', [
          ['Capability', (r) => r.bucket],
          ['Created', (r) => String(r.created)],
          ['Succeeded', (r) => String(r.succeeded)],
          ['Failed', (r) => String(r.failed)],
          ['p95 ms', (r) => (r.p95_duration_ms === null ? '—' : String(r.p95_duration_ms))],
        ], caps) : null);
    } catch (error) {
      fill(plots, alertBox(error));
    }
  };
  const form = h('form', { class: 'filters', 'aria-label': 'Period', onsubmit: (event) => { event.preventDefault(); load(); } },
    field('From', from), field('To', to), h('button', { type: 'submit' }, 'Show'));
  fill(main, h('h1', {}, 'Usage'), form, plots);
  await load();
}
