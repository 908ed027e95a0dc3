// Sign in (or register: the first user of an empty system becomes its admin).

import { api } from '../api.js';
import { alertBox, field, fill, h } from '../dom.js';

export function render(main) {
  if (api.signedIn) {
    location.hash = '#/tasks';
    return;
  }
  const email = h('input', { type: 'email', name: 'email', autocomplete: 'username', required: true });
  const password = h('input', { type: 'password', name: 'password', autocomplete: 'current-password', required: true, minlength: 8 });
  const message = h('div', { 'aria-live': 'polite' });
  const act = (how) => async (event) => {
    event.preventDefault();
    if (!form.reportValidity()) return;
    fill(message);
    try {
      await (how === 'register' ? api.register(email.value, password.value) : api.signIn(email.value, password.value));
      location.hash = '#/tasks';
    } catch (error) {
      fill(message, alertBox(error));
    }
  };
  const form = h('form', { class: 'card narrow', onsubmit: act('login') },
    h('h1', {}, 'Sign in'),
    field('Email', email),
    field('Password', password),
    message,
    h('div', { class: 'actions' },
      h('button', { type: 'submit' }, 'Sign in'),
      h('button', { type: 'button', class: 'secondary', onclick: act('register') }, 'Register')));
  fill(main, form);
  email.focus();
}
