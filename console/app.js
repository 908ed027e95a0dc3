// The console's shell: the session, the navigation and the hash router.

import { api } from './api.js';
import { live } from './live.js';
import { fill, h, alertBox } from './dom.js';
import * as signin from './pages/signin.js';
import * as tasks from './pages/tasks.js';
import * as agents from './pages/agents.js';
import * as workflows from './pages/workflows.js';
import * as search from './pages/search.js';
import * as usage from './pages/usage.js';
import * as admin from './pages/admin.js';

/** `#/<first>/<rest…>` → the page that draws it. */
const ROUTES = {
  signin: signin.render,
  tasks: (main, [id]) => (id ? tasks.renderDetail(main, id) : tasks.render(main)),
  agents: agents.render,
  workflows: (main, [id]) => (id ? workflows.renderWorkflow(main, id) : workflows.render(main)),
  runs: (main, [id]) => workflows.renderRun(main, id),
  search: search.render,
  usage: usage.render,
  admin: admin.render,
};

let leave = null;
/** Focus moves to the new page on a route change, not on the first load (Tab starts at the top). */
let routed = false;

async function route() {
  const main = document.getElementById('main');
  const [first, ...rest] = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  if (!api.signedIn && first !== 'signin') {
    location.hash = '#/signin';
    return;
  }
  const page = ROUTES[first] || ROUTES.tasks;
  if (leave) leave();
  leave = null;
  for (const link of document.querySelectorAll('#nav a')) {
    const current = link.getAttribute('href') === `#/${first === 'runs' ? 'workflows' : first}`;
    if (current) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  fill(main, h('p', { class: 'muted' }, 'Loading…'));
  try {
    leave = (await page(main, rest)) || null;
  } catch (error) {
    fill(main, h('h1', {}, 'Something went wrong'), alertBox(error));
  }
  if (routed) main.focus({ preventScroll: true });
  routed = true;
}

function showSession(user) {
  document.getElementById('nav').hidden = !user;
  document.getElementById('signout').hidden = !user;
  document.getElementById('nav-admin').hidden = !api.isAdmin();
  document.getElementById('whoami').textContent = user ? `${user.email} (${(user.roles || []).join(', ')})` : '';
  if (!user) {
    live.close();
    if (location.hash !== '#/signin') location.hash = '#/signin';
  }
}

async function start() {
  api.onSession(showSession);
  document.getElementById('signout').addEventListener('click', () => api.signOut());
  // The skip link moves focus without touching the hash, which the router owns.
  document.querySelector('.skip').addEventListener('click', (event) => {
    event.preventDefault();
    document.getElementById('main').focus();
  });
  window.addEventListener('hashchange', route);
  await api.resume();
  showSession(api.user);
  await route();
}

start();
