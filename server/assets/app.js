// Entry point: sign-in, sign-out and the hash router that shows one page at a time.
import { api, ApiError, forgetKey, storedKey, storeKey } from './api.js';
import { $, busy, clearFlash, flash } from './ui.js';
import * as overview from './overview.js';
import * as keys from './keys.js';
import * as providers from './providers.js';
import * as memories from './memories.js';

const PAGES = { overview, keys, providers, memories };
const DEFAULT_PAGE = 'overview';

function currentPage() {
  const name = window.location.hash.replace(/^#\/?/, '').split(/[?/]/)[0];
  return Object.hasOwn(PAGES, name) ? name : DEFAULT_PAGE;
}

function showSection(id) {
  for (const section of document.querySelectorAll('main > .page')) section.hidden = section.id !== id;
}

function showSignIn(message) {
  $('nav').hidden = true;
  $('sign-out').hidden = true;
  showSection('page-signin');
  const error = $('signin-error');
  error.textContent = message ?? '';
  error.hidden = !message;
  document.title = 'Sign in · MemoryRouter';
  $('signin-key').focus();
}

/** Called by the pages when the API says the stored key is no longer accepted. */
export function signOut(message) {
  forgetKey();
  clearFlash();
  for (const page of Object.values(PAGES)) page.reset?.();
  showSignIn(message);
}

async function route() {
  if (!storedKey()) {
    showSignIn();
    return;
  }
  const name = currentPage();
  $('nav').hidden = false;
  $('sign-out').hidden = false;
  for (const link of $('nav').querySelectorAll('a')) {
    if (link.dataset.page === name) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  showSection(`page-${name}`);
  document.title = `${$(`${name}-title`).textContent} · MemoryRouter`;
  clearFlash();
  try {
    await PAGES[name].show();
  } catch (err) {
    reportError(err);
  }
}

/** Shows an API error in words; a rejected admin key sends the user back to sign-in. */
export function reportError(err) {
  if (err instanceof ApiError && err.status === 401) {
    signOut(`Signed out: ${err.message}`);
    return;
  }
  flash(err instanceof ApiError ? err.message : `Something went wrong: ${err.message}`, 'error');
}

async function signIn(event) {
  event.preventDefault();
  const input = $('signin-key');
  const key = input.value.trim();
  if (!key) {
    showSignIn('Enter the admin key.');
    return;
  }
  await busy($('signin-submit'), async () => {
    try {
      // The overview is admin-only, so this both checks the key and refuses per-user keys.
      await api('GET', '/v1/admin/overview', { key });
    } catch (err) {
      const reason = err instanceof ApiError && err.status === 403
        ? `This key cannot sign in: ${err.message}`
        : err.message;
      showSignIn(reason);
      return;
    }
    input.value = '';
    storeKey(key);
    if (!window.location.hash) window.location.hash = `#/${DEFAULT_PAGE}`;
    await route();
  });
}

function start() {
  $('signin-form').addEventListener('submit', signIn);
  $('sign-out').addEventListener('click', () => {
    signOut();
    $('signin-error').hidden = true;
  });
  for (const page of Object.values(PAGES)) page.init({ reportError });
  window.addEventListener('hashchange', async () => {
    await route();
    // Tell assistive technology the page changed: focus lands at the top of the new page.
    $('main').focus({ preventScroll: false });
  });
  route();
}

start();
