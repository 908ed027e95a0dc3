// Tasks: a live list (the `mine` topic of /api/ws), filters, and a task's detail with its
// event history and hash chain, cancel and retry.

import { api } from '../api.js';
import { live } from '../live.js';
import { alertBox, badge, describe, field, fill, h, shortId, table, toast, when } from '../dom.js';

const STATUSES = ['', 'queued', 'retry_scheduled', 'leased', 'running', 'succeeded', 'failed', 'cancelled'];

function matches(task, filters) {
  return (!filters.status || task.status === filters.status)
    && (!filters.capability || task.capability === filters.capability)
    && (!filters.tag || (task.tags || []).includes(filters.tag));
}

export async function render(main) {
  const status = h('select', { name: 'status' }, STATUSES.map((s) => h('option', { value: s }, s || 'any')));
  const capability = h('input', { name: 'capability', placeholder: 'e.g. browser.click' });
  const tag = h('input', { name: 'tag' });
  const body = h('div', { id: 'task-list' });
  const count = h('p', { class: 'muted', 'aria-live': 'polite' });
  const tasks = new Map();
  let filters = {};

  const draw = () => {
    const rows = [...tasks.values()]
      .filter((task) => matches(task, filters))
      .sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
    count.textContent = `${rows.length} task${rows.length === 1 ? '' : 's'}`;
    fill(body, table('Tasks, newest first', [
      ['Task', (t) => h('a', { href: `#/tasks/${t.id}` }, shortId(t.id))],
      ['Capability', (t) => t.capability],
      ['Status', (t) => badge(t.status)],
      ['Priority', (t) => String(t.priority)],
      ['Attempt', (t) => `${t.attempt}/${t.max_attempts}`],
      ['Created', (t) => when(t.created_at)],
    ], rows, (t) => ({ 'data-task-id': t.id })));
  };

  const load = async () => {
    try {
      const page = await api.get('/api/tasks', { ...filters, limit: 200 });
      tasks.clear();
      for (const task of page.items) tasks.set(task.id, task);
      draw();
    } catch (error) {
      fill(body, alertBox(error));
    }
  };

  const form = h('form', {
    class: 'filters', role: 'search', 'aria-label': 'Filter tasks',
    onsubmit: (event) => {
      event.preventDefault();
      filters = { status: status.value, capability: capability.value.trim(), tag: tag.value.trim() };
      load();
    },
  }, field('Status', status), field('Capability', capability), field('Tag', tag),
  h('button', { type: 'submit' }, 'Apply'));

  fill(main, h('h1', {}, 'Tasks'), form, count, body);
  await load();

  // A task event: read the task as it is now and put it in its place.
  const stop = live.listen(async (event) => {
    if (event.aggregate_type !== 'task') return;
    try {
      const task = await api.get(`/api/tasks/${event.aggregate_id}`);
      tasks.set(task.id, task);
      draw();
    } catch {
      // Gone or not visible any more: leave the list as it is.
    }
  });
  // Once subscribed, read the list again: a task created before that is in it.
  const stopSubscribed = live.onSubscribed(() => {
    body.dataset.live = 'on';
    load();
  });
  live.subscribe('mine');
  if (live.isSubscribed('mine')) body.dataset.live = 'on';
  return () => { stop(); stopSubscribed(); };
}

/** Each event's `prev_hash` is the hash of the one before it: the chain as the client sees it. */
function chainBreaks(events) {
  const breaks = [];
  for (let i = 1; i < events.length; i += 1) {
    if (events[i].prev_hash !== events[i - 1].hash) breaks.push(events[i].sequence);
  }
  return breaks;
}

export async function renderDetail(main, id) {
  const facts = h('div');
  const history = h('div');
  const chain = h('div', { 'aria-live': 'polite' });
  const actions = h('div', { class: 'actions' });

  const act = (label, request) => h('button', {
    type: 'button',
    onclick: async () => {
      try {
        await request();
        toast(`${label}: done`);
        await load();
      } catch (error) {
        toast(`${label}: ${describe(error)}`);
      }
    },
  }, label);

  const load = async () => {
    const [task, events, verified] = await Promise.all([
      api.get(`/api/tasks/${id}`),
      api.get(`/api/tasks/${id}/events`),
      api.get('/api/audit/verify', { aggregate_type: 'task', aggregate_id: id }).catch(() => null),
    ]);
    fill(facts, h('dl', { class: 'facts' }, [
      ['Status', badge(task.status)], ['Capability', task.capability], ['Priority', String(task.priority)],
      ['Attempt', `${task.attempt} of ${task.max_attempts}`], ['Agent', task.agent_id || '—'],
      ['Tags', (task.tags || []).join(', ') || '—'], ['Created', when(task.created_at)],
      ['Finished', when(task.finished_at)], ['Version', String(task.version)],
    ].flatMap(([name, value]) => [h('dt', {}, name), h('dd', {}, value)])),
    h('h2', {}, 'Input'), h('pre', {}, JSON.stringify(task.input, null, 2)),
    task.output !== null && task.output !== undefined ? [h('h2', {}, 'Output'), h('pre', {}, JSON.stringify(task.output, null, 2))] : null,
    task.error ? [h('h2', {}, 'Error'), h('pre', {}, JSON.stringify(task.error, null, 2))] : null);
    const open = ['queued', 'retry_scheduled', 'leased', 'running'].includes(task.status);
    fill(actions,
      open ? act('Cancel', () => api.delete(`/api/tasks/${id}`)) : null,
      ['failed', 'cancelled'].includes(task.status) ? act('Retry', () => api.post(`/api/tasks/${id}/retry`, {})) : null);
    const breaks = chainBreaks(events);
    fill(chain, breaks.length
      ? h('p', { class: 'alert', role: 'alert' }, `Hash chain broken at sequence ${breaks.join(', ')}`)
      : h('p', { class: 'ok' }, `Hash chain intact: ${events.length} events, each linked to the one before.`),
    verified ? h('p', { class: verified.ok ? 'ok' : 'alert' }, verified.ok
      ? `The server recomputed ${verified.checked} hashes from the store: all match.`
      : `The server found broken links: ${verified.broken.map((b) => `sequence ${b.sequence}`).join(', ')}`) : null);
    fill(history, table('Event history', [
      ['#', (e) => String(e.sequence)],
      ['Position', (e) => String(e.position)],
      ['Event', (e) => e.event_type],
      ['Recorded', (e) => when(e.metadata && e.metadata.recorded_at)],
      ['Actor', (e) => String((e.metadata && e.metadata.actor) || '—')],
      ['Hash', (e) => h('code', { title: e.hash }, String(e.hash).slice(0, 12))],
      ['Previous', (e) => h('code', { title: e.prev_hash || '' }, String(e.prev_hash || '—').slice(0, 12))],
    ], events));
  };

  fill(main, h('p', {}, h('a', { href: '#/tasks' }, '← All tasks')),
    h('h1', {}, 'Task ', shortId(id)), actions, facts, h('h2', {}, 'History'), chain, history);
  await load();
  const stop = live.listen((event) => {
    if (event.aggregate_id === id) load().catch(() => {});
  });
  live.subscribe(`task:${id}`);
  return () => { stop(); live.unsubscribe(`task:${id}`); };
}
