// The web console's entry: who is this (GET /api/v1/session), the login form when a TCP listener needs one, and a
// hash router over the three pages (#/ list, #/create, #/vm/NAME). Plain ES modules, no framework, no build step.

import { api, el, onUnauthorized, announce } from './util.js';
import { closeEvents } from './events.js';
import { listPage } from './list.js';
import { createPage } from './create.js';
import { vmPage } from './vm.js';

const main = document.getElementById('main');
let session = null;
let view = null;

async function start() {
  onUnauthorized(() => showLogin('Your session has ended. Log in again.'));
  document.getElementById('logout').addEventListener('click', logout);
  try {
    session = await api('GET', '/api/v1/session', undefined, { quiet401: true });
  } catch (e) {
    if (e.status === 401) return showLogin();
    return showFatal(e.detail);
  }
  loggedIn();
}

function loggedIn() {
  document.getElementById('nav').hidden = false;
  document.getElementById('session').hidden = false;
  const who = document.getElementById('who');
  who.textContent = session.login ? `Token: ${session.token}` : 'Local socket';
  document.getElementById('logout').hidden = !session.login;
  document.getElementById('nav-create').hidden = !session.rights.includes('admin');
  window.addEventListener('hashchange', route);
  route();
}

function destroyView() {
  view?.destroy?.();
  view = null;
  main.replaceChildren();
}

function route() {
  if (!session) return;
  destroyView();
  const h = location.hash || '#/';
  let m;
  if ((m = /^#\/vm\/([^/]+)$/.exec(h))) view = vmPage(main, decodeURIComponent(m[1]), session);
  else if (h === '#/create') view = createPage(main, session);
  else view = listPage(main, session);
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.getAttribute('href') === h || (h === '#/' && a.getAttribute('href') === '#/')) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  // Keyboard and screen reader users start at the new page's content, as after a real navigation.
  main.focus({ preventScroll: true });
}

function showLogin(message) {
  closeEvents();
  destroyView();
  session = null;
  window.removeEventListener('hashchange', route);
  document.getElementById('nav').hidden = true;
  document.getElementById('session').hidden = true;
  document.title = 'Log in · Dirigent';

  const input = el('input', {
    id: 'token', name: 'token', type: 'password', autocomplete: 'off', spellcheck: 'false', required: true,
    'aria-describedby': 'token-help token-error',
  });
  const error = el('p', { id: 'token-error', class: 'field-error', hidden: true });
  const button = el('button', { type: 'submit', class: 'primary' }, 'Log in');
  const form = el('form', { class: 'card login', novalidate: true, 'aria-labelledby': 'login-title' },
    el('h1', { id: 'login-title' }, 'Log in'),
    message ? el('p', { class: 'notice', role: 'status' }, message) : null,
    el('div', { class: 'field' },
      el('label', { for: 'token' }, 'API token'),
      input,
      el('p', { id: 'token-help', class: 'help' },
        'A token made with ', el('code', {}, 'dirigent token create NAME --rights operate'),
        '. It is checked once; the browser keeps only a session cookie.'),
      error),
    button);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const token = input.value.trim();
    const fail = (text) => {
      error.textContent = text;
      error.hidden = false;
      input.setAttribute('aria-invalid', 'true');
      input.focus();
    };
    if (!token) return fail('Enter an API token.');
    button.disabled = true;
    try {
      session = await api('POST', '/api/v1/session', { token }, { quiet401: true });
      input.value = '';
      announce(`Logged in as ${session.token}`);
      loggedIn();
    } catch (e) {
      fail(e.status === 401 ? 'This token is unknown, revoked or malformed.' : e.detail);
    } finally {
      button.disabled = false;
    }
  });
  main.append(form);
  input.focus();
}

async function logout() {
  try { await api('DELETE', '/api/v1/session'); } catch { /* the cookie is cleared by the answer, or already gone */ }
  showLogin('Logged out.');
}

function showFatal(detail) {
  main.replaceChildren(el('div', { class: 'card', role: 'alert' },
    el('h1', {}, 'The daemon cannot be reached'), el('p', {}, detail),
    el('button', { type: 'button', class: 'primary', onclick: () => location.reload() }, 'Try again')));
}

start();
