// Search over tasks and workflow runs; says so when the server has no search.

import { api, ApiError } from '../api.js';
import { alertBox, field, fill, h, table } from '../dom.js';

/** Does the server have search? Its OpenAPI document says, without a 404 in the console. */
async function available() {
  try {
    const document = await api.get('/api/openapi.json');
    return Boolean(document.paths && document.paths['/api/search']);
  } catch {
    return true;
  }
}

const UNAVAILABLE = 'Search is not available on this server.';

export async function render(main) {
  if (!(await available())) {
    fill(main, h('h1', {}, 'Search'), h('p', { class: 'notice', role: 'status' }, UNAVAILABLE));
    return;
  }
  const q = h('input', { type: 'search', name: 'q', required: true });
  const mode = h('select', { name: 'mode' }, ['hybrid', 'bm25', 'vector'].map((m) => h('option', { value: m }, m)));
  const results = h('div', { 'aria-live': 'polite' });
  const link = (item) => (item.kind === 'task' ? `#/tasks/${item.id}` : `#/runs/${item.id}`);
  const form = h('form', {
    role: 'search', class: 'filters', 'aria-label': 'Search',
    onsubmit: async (event) => {
      event.preventDefault();
      try {
        const answer = await api.get('/api/search', { q: q.value, mode: mode.value, limit: 50 });
        fill(results, answer.items.length ? table('Results', [
          ['Kind', (i) => i.kind],
          ['Title', (i) => h('a', { href: link(i) }, i.title || i.id)],
          ['Snippet', (i) => i.snippet || ''],
          ['Score', (i) => Number(i.score).toFixed(3)],
        ], answer.items) : h('p', {}, 'Nothing found.'));
      } catch (error) {
        fill(results, error instanceof ApiError && error.status === 404
          ? h('p', { class: 'notice', role: 'status' }, UNAVAILABLE)
          : alertBox(error));
      }
    },
  }, field('Search for', q), field('Mode', mode), h('button', { type: 'submit' }, 'Search'));
  fill(main, h('h1', {}, 'Search'), form, results);
}
