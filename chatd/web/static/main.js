// Entry point: a saved session starts the app, otherwise the login form (PROTOCOL §11).
import {Api, ApiError} from './api.js';
import {App} from './app.js';
import {h, clear} from './dom.js';

const SESSION_KEY = 'chatd.session';
const root = document.getElementById('app');

function savedSession() {
  try {
    const s = JSON.parse(localStorage.getItem(SESSION_KEY) || 'null');
    return s && typeof s.token === 'string' ? s : null;
  } catch (e) {
    return null;
  }
}

function logOut(app) {
  if (app) app.stop();
  localStorage.removeItem(SESSION_KEY);
  showLogin();
}

function start(session) {
  const app = new App(root, session, () => logOut(app));
  app.start();
}

function showLogin(message = '') {
  const user = h('input', {id: 'login-user', name: 'username', autocomplete: 'username', required: true,
    autocapitalize: 'none', spellcheck: 'false'});
  const pass = h('input', {id: 'login-pass', name: 'password', type: 'password', autocomplete: 'current-password',
    required: true});
  const error = h('p', {class: 'error', role: 'alert'}, message);
  const button = h('button', {type: 'submit'}, 'Log in');
  const form = h('form', {class: 'login', novalidate: true}, h('h1', {}, 'chatd'),
    h('label', {for: 'login-user'}, 'Username'), user,
    h('label', {for: 'login-pass'}, 'Password'), pass, button, error);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (!user.value || !pass.value) { error.textContent = 'Enter your username and password.'; return; }
    button.disabled = true;
    error.textContent = '';
    try {
      const res = await new Api().post('/v1/login', {username: user.value, password: pass.value,
        device_name: 'Web browser'});
      const session = {token: res.token, user_id: res.user_id, device_id: res.device_id};
      localStorage.setItem(SESSION_KEY, JSON.stringify(session));
      start(session);
    } catch (err) {
      button.disabled = false;
      error.textContent = err instanceof ApiError && err.status === 401 ? 'Wrong username or password.'
        : err instanceof ApiError && err.status === 429 ? 'Too many attempts; wait a minute.'
        : 'The server cannot be reached.';
    }
  });
  clear(root).append(form);
  user.focus();
}

const session = savedSession();
if (session) start(session); else showLogin();
