// A workflow's steps drawn as a DAG in SVG: one column per depth, edges from each
// dependency, each node coloured by its step's state and labelled with it in words.

import { svg } from './dom.js';

const WIDTH = 170;
const HEIGHT = 56;
const GAP_X = 60;
const GAP_Y = 24;

/** Each step's column: the longest chain of dependencies above it. */
function depths(steps) {
  const byId = new Map(steps.map((step) => [step.id, step]));
  const depth = new Map();
  const visit = (id, seen = new Set()) => {
    if (depth.has(id)) return depth.get(id);
    if (seen.has(id)) return 0;
    seen.add(id);
    const parents = ((byId.get(id) || {}).depends_on || []).filter((p) => byId.has(p));
    const d = parents.length ? 1 + Math.max(...parents.map((p) => visit(p, seen))) : 0;
    depth.set(id, d);
    return d;
  };
  for (const step of steps) visit(step.id);
  return depth;
}

/** `steps`: the definition's steps; `states`: step id → {status} of a run (or nothing). */
export function drawDag(steps, states = {}) {
  const depth = depths(steps);
  const columns = [];
  for (const step of steps) {
    const d = depth.get(step.id);
    (columns[d] = columns[d] || []).push(step);
  }
  const place = new Map();
  columns.forEach((column, x) => column.forEach((step, y) => {
    place.set(step.id, { x: 10 + x * (WIDTH + GAP_X), y: 10 + y * (HEIGHT + GAP_Y) });
  }));
  const width = 20 + columns.length * (WIDTH + GAP_X) - GAP_X;
  const height = 20 + Math.max(1, ...columns.map((c) => c.length)) * (HEIGHT + GAP_Y) - GAP_Y;
  const edges = steps.flatMap((step) => (step.depends_on || []).filter((p) => place.has(p)).map((parent) => {
    const from = place.get(parent);
    const to = place.get(step.id);
    const x1 = from.x + WIDTH;
    const y1 = from.y + HEIGHT / 2;
    const x2 = to.x;
    const y2 = to.y + HEIGHT / 2;
    const mid = (x1 + x2) / 2;
    return svg('path', { class: 'edge', d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2 - 6},${y2}`, 'marker-end': 'url(#arrow)' });
  }));
  const nodes = steps.map((step) => {
    const { x, y } = place.get(step.id);
    const status = (states[step.id] && states[step.id].status) || 'pending';
    const kind = step.approval ? 'approval' : step.capability || '';
    return svg('g', { class: `node s-${status}`, 'data-step': step.id, 'data-status': status },
      svg('rect', { x, y, width: WIDTH, height: HEIGHT, rx: 6 }),
      svg('text', { x: x + 10, y: y + 20, class: 'step-id' }, step.id),
      svg('text', { x: x + 10, y: y + 36, class: 'step-kind' }, kind.slice(0, 24)),
      svg('text', { x: x + 10, y: y + 50, class: 'step-status' }, status.replace('_', ' ')));
  });
  const summary = steps.map((step) => `${step.id}: ${(states[step.id] && states[step.id].status) || 'pending'}`).join('; ');
  return svg('svg', {
    class: 'dag', viewBox: `0 0 ${width} ${height}`, width, height, role: 'img', 'aria-label': `Workflow steps: ${summary}`,
  },
  svg('defs', {}, svg('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 4, refY: 5, markerWidth: 8, markerHeight: 8, orient: 'auto-start-reverse' },
    svg('path', { d: 'M 0 0 L 10 5 L 0 10 z', class: 'arrow' }))),
  edges, nodes);
}
