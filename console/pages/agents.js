// Agents: online state, running tasks against their limit, capabilities.

import { api } from '../api.js';
import { alertBox, badge, field, fill, h, shortId, table, when } from '../dom.js';

const STATUSES = ['', 'online', 'offline', 'draining', 'deregistered'];

export async function render(main) {
  const status = h('select', { name: 'status' }, STATUSES.map((s) => h('option', { value: s }, s || 'any')));
  const capability = h('input', { name: 'capability' });
  const body = h('div');
  const load = async () => {
    try {
      const page = await api.get('/api/agents', { status: status.value, capability: capability.value.trim(), limit: 200 });
      fill(body, table('Agents', [
        ['Agent', (a) => shortId(a.id)],
        ['Name', (a) => a.name],
        ['Kind', (a) => a.kind],
        ['Status', (a) => badge(a.status)],
        ['Running', (a) => `${a.running} of ${a.max_concurrency}`],
        ['Capabilities', (a) => (a.capabilities || []).join(', ')],
        ['Last heartbeat', (a) => when(a.last_heartbeat_at)],
      ], page.items));
    } catch (error) {
      fill(body, alertBox(error));
    }
  };
  const form = h('form', {
    class: 'filters', role: 'search', 'aria-label': 'Filter agents',
    onsubmit: (event) => { event.preventDefault(); load(); },
  }, field('Status', status), field('Capability', capability), h('button', { type: 'submit' }, 'Apply'));
  fill(main, h('h1', {}, 'Agents'), form, body);
  await load();
  const timer = setInterval(load, 5000);
  return () => clearInterval(timer);
}
