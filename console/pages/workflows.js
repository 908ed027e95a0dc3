// Workflows and their runs: the DAG with each step's state, and the decision on a step that
// waits for approval.

import { api } from '../api.js';
import { live } from '../live.js';
import { drawDag } from '../dag.js';
import { alertBox, badge, describe, fill, h, shortId, table, toast, when } from '../dom.js';

export async function render(main) {
  const page = await api.get('/api/workflows', { limit: 200 });
  fill(main, h('h1', {}, 'Workflows'), page.items.length ? table('Workflows', [
    ['Name', (w) => h('a', { href: `#/workflows/${w.id}` }, w.name)],
    ['Version', (w) => String(w.version)],
    ['Steps', (w) => String((w.steps || []).length)],
    ['Updated', (w) => when(w.updated_at)],
  ], page.items) : h('p', {}, 'No workflows yet.'));
}

export async function renderWorkflow(main, id) {
  const [workflow, status] = await Promise.all([
    api.get(`/api/workflows/${id}`),
    api.get(`/api/workflows/${id}/status`),
  ]);
  const run = async () => {
    try {
      const started = await api.post(`/api/workflows/${id}/execute`, { params: {} });
      location.hash = `#/runs/${started.id}`;
    } catch (error) {
      toast(`Run: ${describe(error)}`);
    }
  };
  fill(main, h('p', {}, h('a', { href: '#/workflows' }, '← All workflows')),
    h('h1', {}, workflow.name, ' ', h('span', { class: 'muted' }, `v${workflow.version}`)),
    workflow.description ? h('p', {}, workflow.description) : null,
    h('div', { class: 'actions' }, h('button', { type: 'button', onclick: run }, 'Run now')),
    h('div', { class: 'dag-box' }, drawDag(workflow.steps)),
    h('h2', {}, 'Runs'),
    status.runs.length ? table('Runs, newest first', [
      ['Run', (r) => h('a', { href: `#/runs/${r.id}` }, shortId(r.id))],
      ['Status', (r) => badge(r.status)],
      ['Version', (r) => String(r.version)],
      ['Started', (r) => when(r.started_at)],
      ['Finished', (r) => when(r.finished_at)],
    ], status.runs) : h('p', {}, 'No runs yet.'));
}

export async function renderRun(main, id) {
  const box = h('div');
  const load = async () => {
    const run = await api.get(`/api/workflow-runs/${id}`);
    const workflow = await api.get(`/api/workflows/${run.workflow_id}`, { version: run.version });
    const decide = (stepId, decision) => async () => {
      try {
        await api.post(`/api/workflow-runs/${id}/signals`, { step_id: stepId, decision });
        toast(`${stepId}: ${decision === 'approve' ? 'approved' : 'rejected'}`);
        await load();
      } catch (error) {
        toast(`${stepId}: ${describe(error)}`);
      }
    };
    const rows = workflow.steps.map((step) => ({ step, state: run.steps[step.id] || { status: 'pending' } }));
    fill(box,
      h('p', {}, h('a', { href: `#/workflows/${run.workflow_id}` }, `← ${workflow.name}`)),
      h('h1', {}, 'Run ', shortId(run.id), ' ', badge(run.status)),
      h('p', { class: 'muted' }, `Started ${when(run.started_at)}; finished ${when(run.finished_at)}`),
      run.error ? h('p', { class: 'alert' }, `Step ${run.error.step_id} failed: ${run.error.error && run.error.error.message}`) : null,
      h('div', { class: 'dag-box' }, drawDag(workflow.steps, run.steps)),
      table('Steps', [
        ['Step', ({ step }) => step.id],
        ['Status', ({ state }) => badge(state.status)],
        ['Task', ({ state }) => (state.task_id ? h('a', { href: `#/tasks/${state.task_id}` }, shortId(state.task_id)) : '—')],
        ['Attempt', ({ state }) => String(state.attempt || 0)],
        ['Approval', ({ step, state }) => (state.status === 'waiting_approval'
          ? h('div', { class: 'actions' },
            h('span', {}, (state.approval && state.approval.prompt) || (step.approval && step.approval.prompt) || ''),
            h('button', { type: 'button', onclick: decide(step.id, 'approve'), 'aria-label': `Approve ${step.id}` }, 'Approve'),
            h('button', { type: 'button', class: 'danger', onclick: decide(step.id, 'reject'), 'aria-label': `Reject ${step.id}` }, 'Reject'))
          : '—')],
      ], rows));
  };
  fill(main, box);
  try {
    await load();
  } catch (error) {
    fill(box, alertBox(error));
  }
  const stop = live.listen((event) => {
    if (event.aggregate_id === id || event.aggregate_type === 'task') load().catch(() => {});
  });
  // Once subscribed, read the run again: a step that changed before that is in it.
  const stopSubscribed = live.onSubscribed(() => { load().catch(() => {}); });
  live.subscribe(`run:${id}`);
  return () => { stop(); stopSubscribed(); live.unsubscribe(`run:${id}`); };
}
