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

/** The short, non-secret start of the key (`mk_AbCd`), shown to tell keys apart. */
export function keyPrefix(key) {
  return key.prefix ?? key.hint ?? null;
}

export function keyLabel(key) {
  return key.name ? key.name : `(unnamed) ${keyPrefix(key) ?? key.id}`;
}

function isAdmin(key) {
  return Boolean(key.is_admin ?? key.admin);
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
  const revoked = Boolean(key.revoked ?? key.revoked_at);
  const createdAt = key.created_at ?? key.created_at_ms;
  const lastUsedAt = key.last_used_at ?? key.last_used_at_ms;
  const created = el('time', { datetime: isoDate(createdAt), text: formatDate(createdAt) });
  const used = lastUsedAt
    ? el('time', { datetime: isoDate(lastUsedAt), text: formatDate(lastUsedAt) })
    : el('span', { className: 'muted', text: 'never' });
  const actions = el('td', { className: 'actions' });
  // The admin key is the one signed in here; revoking it from the dashboard would lock
  // the operator out, so it is rotated with the CLI instead.
  if (!revoked && !isAdmin(key)) {
    actions.append(el('button', {
      type: 'button', className: 'danger small', text: 'Revoke',
      'aria-label': `Revoke ${keyLabel(key)}`,
      onClick: (event) => busy(event.currentTarget, () => revoke(key).catch(report)),
    }));
  }
  return el('tr', { className: revoked ? 'revoked' : null, dataset: { keyId: key.id } },
    el('td', {}, key.name || '(unnamed)', isAdmin(key) ? el('span', { className: 'badge role', text: 'admin' }) : null),
    el('td', {}, el('code', { text: keyPrefix(key) ? `${keyPrefix(key)}…` : key.id, title: key.id })),
    el('td', {}, created),
    el('td', {}, used),
    el('td', {}, el('span', { className: revoked ? 'badge revoked' : 'badge', text: revoked ? 'Revoked' : 'Active' })),
    actions);
}

export async function show() {
  const keys = await fetchKeys();
  // Newest first, revoked keys after the active ones.
  const time = (k) => new Date(k.created_at ?? k.created_at_ms ?? 0).getTime() || 0;
  keys.sort((a, b) => Number(Boolean(a.revoked)) - Number(Boolean(b.revoked)) || time(b) - time(a));
  $('keys-table').tBodies[0].replaceChildren(...keys.map(row));
  $('keys-empty').hidden = keys.length > 0;
}
