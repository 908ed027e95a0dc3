// Admin: the projections with their lag, and a rebuild button for each.

import { api } from '../api.js';
import { alertBox, badge, describe, fill, h, table, toast } from '../dom.js';

export async function render(main) {
  if (!api.isAdmin()) {
    fill(main, h('h1', {}, 'Admin'), h('p', { class: 'notice' }, 'Only administrators see the projections.'));
    return undefined;
  }
  const body = h('div');
  const rebuild = (name) => h('button', {
    type: 'button', class: 'secondary', 'aria-label': `Rebuild ${name}`,
    onclick: async () => {
      try {
        await api.post(`/api/admin/projections/${encodeURIComponent(name)}/rebuild`);
        toast(`Rebuilding ${name}`);
        await load();
      } catch (error) {
        toast(`Rebuild ${name}: ${describe(error)}`);
      }
    },
  }, 'Rebuild');
  const load = async () => {
    // A keyboard user on a button keeps their place: redraw when the focus is elsewhere.
    if (body.contains(document.activeElement)) return;
    try {
      const rows = await api.get('/api/admin/projections');
      fill(body, table('Projections', [
        ['Name', (p) => p.name],
        ['Version', (p) => String(p.version)],
        ['Position', (p) => String(p.position)],
        ['Lag (events)', (p) => String(p.lag_events)],
        ['Lag (seconds)', (p) => (p.lag_seconds === null || p.lag_seconds === undefined ? '—' : Number(p.lag_seconds).toFixed(1))],
        ['Status', (p) => badge(p.status)],
        ['', (p) => rebuild(p.name)],
      ], rows));
    } catch (error) {
      fill(body, alertBox(error));
    }
  };
  fill(main, h('h1', {}, 'Projections'), body);
  await load();
  const timer = setInterval(load, 3000);
  return () => clearInterval(timer);
}
