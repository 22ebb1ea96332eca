// Provider keys page: add, replace or remove the account's stored provider API keys.
import { api, listIn } from './api.js';
import { $, busy, confirmAction, el, flash, formatDate, isoDate } from './ui.js';

let report = () => {};

// Provider names go into a URL path segment; the server names providers the same way.
const PROVIDER_NAME = /^[a-z0-9_-]{1,64}$/;

export function init({ reportError }) {
  report = reportError;
  $('provider-form').addEventListener('submit', (event) => {
    event.preventDefault();
    busy($('provider-submit'), () => save().catch(report));
  });
}

export function reset() {
  $('provider-form').reset();
  $('providers-table').tBodies[0].replaceChildren();
}

async function save() {
  const provider = $('provider-name').value.trim().toLowerCase();
  const apiKey = $('provider-key').value.trim();
  if (!PROVIDER_NAME.test(provider)) {
    flash('Enter a provider name: lowercase letters, digits, "_" or "-", such as openai.', 'error');
    return;
  }
  if (!apiKey) {
    flash(`Enter the API key for ${provider}.`, 'error');
    return;
  }
  const body = { api_key: apiKey };
  await api('PUT', `/v1/provider-keys/${encodeURIComponent(provider)}`, { body });
  $('provider-form').reset();
  flash(`Provider key for ${provider} saved.`);
  await show();
}

async function remove(provider) {
  const answer = await confirmAction({
    title: `Remove the ${provider} key?`,
    message: `Requests for ${provider} models will need to bring their own key until a new one is stored.`,
    confirmLabel: 'Remove key',
  });
  if (!answer) return;
  await api('DELETE', `/v1/provider-keys/${encodeURIComponent(provider)}`);
  flash(`Provider key for ${provider} removed.`);
  await show();
}

function replace(entry) {
  $('provider-name').value = entry.provider;
  $('provider-key').value = '';
  $('provider-key').focus();
}

function row(entry) {
  const hint = entry.hint ?? entry.masked ?? entry.key_hint ?? entry.api_key_hint ?? '••••';
  const updated = entry.updated_at ?? entry.updated_at_ms ?? entry.created_at;
  return el('tr', { dataset: { provider: entry.provider } },
    el('td', {}, el('strong', { text: entry.provider }),
      updated ? el('div', { className: 'hint' }, 'saved ', el('time', { datetime: isoDate(updated), text: formatDate(updated) })) : null),
    el('td', {}, el('code', { text: hint })),
    el('td', { className: 'actions' },
      el('button', {
        type: 'button', className: 'ghost small', text: 'Replace',
        'aria-label': `Replace the ${entry.provider} key`, onClick: () => replace(entry),
      }),
      el('button', {
        type: 'button', className: 'danger small', text: 'Remove',
        'aria-label': `Remove the ${entry.provider} key`,
        onClick: (event) => busy(event.currentTarget, () => remove(entry.provider).catch(report)),
      })));
}

export async function show() {
  const body = await api('GET', '/v1/provider-keys');
  let entries = listIn(body, 'providers', 'provider_keys', 'data');
  // Also accept a map of provider → details.
  if (entries.length === 0 && body && typeof body.providers === 'object' && body.providers !== null) {
    entries = Object.entries(body.providers).map(([provider, details]) => ({ provider, ...details }));
  }
  entries = entries.filter((e) => e && typeof e.provider === 'string')
    .sort((a, b) => a.provider.localeCompare(b.provider));
  $('providers-table').tBodies[0].replaceChildren(...entries.map(row));
  $('providers-empty').hidden = entries.length > 0;
}
