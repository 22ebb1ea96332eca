// Memories page: browse one key's vault newest first, search it, filter by session,
// delete a memory, clear the vault, export it as JSON Lines.
import { api, listIn } from './api.js';
import { $, busy, clear, confirmAction, el, flash, formatDate, isoDate } from './ui.js';
import { fetchKeys, keyLabel, keyPrefix } from './keys.js';

const PAGE_SIZE = 25;
const SEARCH_LIMIT = 50;

let report = () => {};

// What the list shows now. `mode` is 'browse' (paged, newest first) or 'search'.
const state = { keys: [], keyId: '', session: '', mode: 'browse', query: '', cursor: null, shown: 0 };

export function init({ reportError }) {
  report = reportError;
  $('mem-key').addEventListener('change', () => {
    state.keyId = $('mem-key').value;
    browse().catch(report);
  });
  $('mem-filter').addEventListener('submit', (event) => {
    event.preventDefault();
    state.session = $('mem-session').value.trim();
    (state.mode === 'search' ? search() : browse()).catch(report);
  });
  $('mem-search').addEventListener('submit', (event) => {
    event.preventDefault();
    const query = $('mem-query').value.trim();
    if (!query) {
      browse().catch(report);
      return;
    }
    state.query = query;
    search().catch(report);
  });
  $('mem-show-all').addEventListener('click', () => {
    $('mem-query').value = '';
    browse().catch(report);
  });
  $('mem-more').addEventListener('click', (event) => busy(event.currentTarget, () => more().catch(report)));
  $('mem-export').addEventListener('click', (event) => busy(event.currentTarget, () => exportVault().catch(report)));
  $('mem-clear').addEventListener('click', (event) => busy(event.currentTarget, () => clearVault().catch(report)));
}

export function reset() {
  Object.assign(state, { keys: [], keyId: '', session: '', mode: 'browse', query: '', cursor: null, shown: 0 });
  clear($('mem-key'));
  clear($('mem-list'));
  $('mem-session').value = '';
  $('mem-query').value = '';
  $('mem-status').textContent = '';
}

function selectedKey() {
  return state.keys.find((k) => k.id === state.keyId) ?? null;
}

function setControlsEnabled(enabled) {
  for (const id of ['mem-key', 'mem-session', 'mem-query', 'mem-export', 'mem-clear']) $(id).disabled = !enabled;
}

function sessionText() {
  return state.session ? ` in session "${state.session}"` : '';
}

function memoryItem(memory) {
  const meta = el('div', { className: 'memory-meta' },
    el('span', { className: 'badge role', text: memory.role ?? 'memory' }),
    el('time', { datetime: isoDate(memory.created_at), text: formatDate(memory.created_at) }),
    memory.session_id ? el('span', {}, 'session ', el('code', { text: memory.session_id })) : null,
    memory.model ? el('span', {}, 'model ', el('code', { text: memory.model })) : null,
    typeof memory.score === 'number' ? el('span', { text: `score ${memory.score.toFixed(3)}` }) : null,
    el('span', { className: 'spacer' }),
    el('code', { className: 'muted', text: String(memory.id) }),
    el('button', {
      type: 'button', className: 'danger small', text: 'Delete',
      'aria-label': 'Delete this memory',
      onClick: (event) => busy(event.currentTarget, () => deleteMemory(memory, event.currentTarget).catch(report)),
    }));
  return el('li', { className: 'memory', dataset: { memoryId: String(memory.id) } },
    meta, el('p', { className: 'memory-content', text: memory.content ?? '' }));
}

function render(items, { append }) {
  const list = $('mem-list');
  if (!append) clear(list);
  list.append(...items.map(memoryItem));
  state.shown = list.children.length;
  const empty = $('mem-empty');
  empty.hidden = state.shown > 0;
  if (state.shown === 0) {
    empty.textContent = state.mode === 'search'
      ? `Nothing matches "${state.query}"${sessionText()}.`
      : `This vault has no memories${sessionText()} yet. Memories appear here after an app stores them through this key.`;
  }
  $('mem-show-all').hidden = state.mode !== 'search';
  $('mem-more').hidden = state.mode !== 'browse' || !state.cursor;
}

async function browse() {
  state.mode = 'browse';
  state.cursor = null;
  if (!state.keyId) return;
  const page = await fetchPage(null);
  render(page, { append: false });
  $('mem-status').textContent = `Newest first${sessionText()}: showing ${state.shown}${state.cursor ? ' (more below)' : ''}.`;
}

async function more() {
  const page = await fetchPage(state.cursor);
  render(page, { append: true });
  $('mem-status').textContent = `Newest first${sessionText()}: showing ${state.shown}${state.cursor ? ' (more below)' : ''}.`;
}

async function fetchPage(cursor) {
  const body = await api('GET', '/v1/memory', {
    query: { key_id: state.keyId, limit: PAGE_SIZE, session_id: state.session, cursor },
  });
  state.cursor = body.next_cursor ?? body.cursor ?? null;
  if (body.has_more === false) state.cursor = null;
  return listIn(body, 'memories', 'data', 'items');
}

async function search() {
  if (!state.keyId) return;
  state.mode = 'search';
  state.cursor = null;
  const body = { query: state.query, limit: SEARCH_LIMIT };
  if (state.session) body.session_id = state.session;
  const found = listIn(await api('POST', '/v1/memory/search', { query: { key_id: state.keyId }, body }), 'memories');
  render(found, { append: false });
  $('mem-status').textContent = `${found.length} ${found.length === 1 ? 'result' : 'results'} for "${state.query}"${sessionText()}, best first.`;
}

async function deleteMemory(memory, button) {
  const answer = await confirmAction({
    title: 'Delete this memory?',
    message: `"${truncate(memory.content ?? '', 160)}" will no longer be found by search or prepare.`,
    confirmLabel: 'Delete memory',
  });
  if (!answer) return;
  await api('DELETE', `/v1/memory/${encodeURIComponent(String(memory.id))}`, { query: { key_id: state.keyId } });
  button.closest('li')?.remove();
  render([], { append: true });
  flash('Memory deleted.');
}

async function clearVault() {
  const key = selectedKey();
  if (!key) return;
  const scope = state.session ? `every memory of session "${state.session}"` : 'every memory';
  const answer = await confirmAction({
    title: state.session ? 'Clear this session?' : 'Clear the whole vault?',
    message: `This deletes ${scope} stored for "${keyLabel(key)}". It cannot be undone; export first to keep a copy.`,
    confirmLabel: state.session ? 'Clear session' : 'Clear vault',
  });
  if (!answer) return;
  await api('DELETE', '/v1/memory', { query: { key_id: state.keyId, session_id: state.session } });
  flash(state.session ? `Session "${state.session}" cleared.` : `Vault of "${keyLabel(key)}" cleared.`);
  $('mem-query').value = '';
  await browse();
}

async function exportVault() {
  const key = selectedKey();
  if (!key) return;
  const response = await api('GET', '/v1/memory/export', { query: { key_id: state.keyId }, raw: true });
  const blob = new Blob([await response.arrayBuffer()], { type: 'application/x-ndjson' });
  const url = URL.createObjectURL(blob);
  const stamp = new Date().toISOString().slice(0, 10);
  const safeName = (key.name || key.id).replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 60);
  const link = el('a', { href: url, download: `memories-${safeName}-${stamp}.jsonl` });
  document.body.append(link);
  link.click();
  link.remove();
  // Revoke after the click has started the download.
  window.setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

function truncate(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

export async function show() {
  // Users' keys first (newest first), the admin key's own vault last: it is rarely the one
  // an operator wants to look into.
  const time = (k) => new Date(k.created_at ?? 0).getTime() || 0;
  state.keys = (await fetchKeys()).filter((k) => !k.revoked)
    .sort((a, b) => Number(Boolean(a.admin ?? a.is_admin)) - Number(Boolean(b.admin ?? b.is_admin)) || time(b) - time(a));
  const select = $('mem-key');
  // new Option() sets the label as text, so a key name cannot inject markup.
  select.replaceChildren(...state.keys.map((k) => new Option(`${keyLabel(k)} (${keyPrefix(k) ? `${keyPrefix(k)}…` : k.id})`, k.id)));
  if (state.keys.length === 0) {
    state.keyId = '';
    setControlsEnabled(false);
    clear($('mem-list'));
    $('mem-more').hidden = true;
    $('mem-show-all').hidden = true;
    $('mem-status').textContent = '';
    const empty = $('mem-empty');
    empty.textContent = 'There are no active Memory Keys. Create one on the Keys page; each key has its own vault.';
    empty.hidden = false;
    return;
  }
  setControlsEnabled(true);
  if (!state.keys.some((k) => k.id === state.keyId)) state.keyId = state.keys[0].id;
  select.value = state.keyId;
  if (state.mode === 'search' && state.query) await search();
  else await browse();
}
