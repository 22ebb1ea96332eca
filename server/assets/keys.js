// Keys page: list the account's Memory Keys, mint one (shown once), revoke one.
import { api, listIn } from './api.js';
import { $, busy, clear, confirmAction, el, flash, formatDate, isoDate } from './ui.js';

let report = () => {};

export function init({ reportError }) {
  report = reportError;
  $('mint-form').addEventListener('submit', (event) => {
    event.preventDefault();
    busy($('mint-submit'), () => mint().catch(report));
  });
  $('minted-copy').addEventListener('click', copyMinted);
  $('minted-done').addEventListener('click', hideMinted);
}

export function reset() {
  hideMinted();
  clear($('keys-table').tBodies[0]);
}

function hideMinted() {
  $('minted-key').value = '';
  $('minted-copied').hidden = true;
  $('minted').hidden = true;
}

/** The account's keys, as the API lists them. Shared with the Memories page. */
export async function fetchKeys() {
  return listIn(await api('GET', '/v1/keys'), 'keys', 'data');
}

export function keyLabel(key) {
  return key.name ? key.name : `(unnamed) ${key.prefix ?? key.id}`;
}

async function mint() {
  const nameInput = $('mint-name');
  const name = nameInput.value.trim();
  const created = await api('POST', '/v1/keys', { body: name ? { name } : {} });
  nameInput.value = '';
  $('minted-key').value = created.key ?? '';
  $('minted-copied').hidden = true;
  $('minted').hidden = false;
  $('minted-key').select();
  flash(`Key "${keyLabel(created)}" created.`);
  await show();
}

async function copyMinted() {
  const input = $('minted-key');
  input.select();
  let copied = false;
  try {
    await navigator.clipboard.writeText(input.value);
    copied = true;
  } catch {
    // The async clipboard needs a permission some browsers withhold; the legacy command
    // still copies the selected text on a user click.
    copied = document.execCommand('copy');
  }
  const note = $('minted-copied');
  note.textContent = copied ? 'Copied to the clipboard.' : 'Copy failed: select the key and copy it by hand.';
  note.hidden = false;
}

async function revoke(key) {
  const answer = await confirmAction({
    title: 'Revoke this key?',
    message: `"${keyLabel(key)}" stops working on its next request. Apps using it will get 401 errors. This cannot be undone.`,
    confirmLabel: 'Revoke key',
    option: "Also delete this key's memories",
  });
  if (!answer) return;
  await api('DELETE', `/v1/keys/${encodeURIComponent(key.id)}`, { query: { purge: answer.option ? 'true' : null } });
  flash(`Key "${keyLabel(key)}" revoked${answer.option ? ' and its memories deleted' : ''}.`);
  await show();
}

function row(key) {
  const revoked = Boolean(key.revoked);
  const created = el('time', { datetime: isoDate(key.created_at), text: formatDate(key.created_at) });
  const used = key.last_used_at
    ? el('time', { datetime: isoDate(key.last_used_at), text: formatDate(key.last_used_at) })
    : el('span', { className: 'muted', text: 'never' });
  const actions = el('td', { className: 'actions' });
  if (!revoked) {
    actions.append(el('button', {
      type: 'button', className: 'danger small', text: 'Revoke',
      'aria-label': `Revoke ${keyLabel(key)}`,
      onClick: (event) => busy(event.currentTarget, () => revoke(key).catch(report)),
    }));
  }
  return el('tr', { className: revoked ? 'revoked' : null, dataset: { keyId: key.id } },
    el('td', { text: key.name || '(unnamed)' }),
    el('td', {}, el('code', { text: key.prefix ? `${key.prefix}…` : key.id, title: key.id })),
    el('td', {}, created),
    el('td', {}, used),
    el('td', {}, el('span', { className: revoked ? 'badge revoked' : 'badge', text: revoked ? 'Revoked' : 'Active' })),
    actions);
}

export async function show() {
  const keys = await fetchKeys();
  // Newest first, revoked keys after the active ones.
  keys.sort((a, b) => Number(Boolean(a.revoked)) - Number(Boolean(b.revoked))
    || String(b.created_at ?? '').localeCompare(String(a.created_at ?? '')));
  $('keys-table').tBodies[0].replaceChildren(...keys.map(row));
  $('keys-empty').hidden = keys.length > 0;
}
