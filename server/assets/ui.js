// DOM helpers. Every piece of user data reaches the page through textContent or an
// attribute set with setAttribute, never parsed as HTML, so stored text cannot run script.

/** Creates an element: `el('td', { className: 'num', text: '3' }, child…)`. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'text') node.textContent = String(value);
    else if (name === 'className') node.className = value;
    else if (name === 'dataset') Object.assign(node.dataset, value);
    else if (name === 'onClick') node.addEventListener('click', value);
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function $(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`missing element #${id}`);
  return node;
}

export function clear(node) {
  node.replaceChildren();
}

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

/** Formats an RFC 3339 string or epoch milliseconds; `fallback` for missing values. */
export function formatDate(value, fallback = '—') {
  if (value === null || value === undefined || value === '') return fallback;
  const date = new Date(typeof value === 'string' && /^\d+$/.test(value) ? Number(value) : value);
  return Number.isNaN(date.getTime()) ? String(value) : dateFormat.format(date);
}

export function isoDate(value) {
  if (value === null || value === undefined || value === '') return null;
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? null : date.toISOString();
}

const numberFormat = new Intl.NumberFormat();

export function formatNumber(value) {
  return typeof value === 'number' && Number.isFinite(value) ? numberFormat.format(value) : '—';
}

export function formatBytes(bytes) {
  if (typeof bytes !== 'number' || !Number.isFinite(bytes)) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

export function formatDuration(secs) {
  if (typeof secs !== 'number' || !Number.isFinite(secs)) return '—';
  if (secs < 60) return `${Math.floor(secs)} s`;
  if (secs < 3600) return `${Math.floor(secs / 60)} min`;
  if (secs < 86400) return `${Math.floor(secs / 3600)} h ${Math.floor((secs % 3600) / 60)} min`;
  return `${Math.floor(secs / 86400)} d ${Math.floor((secs % 86400) / 3600)} h`;
}

export function formatMs(ms) {
  if (typeof ms !== 'number' || !Number.isFinite(ms)) return '—';
  return ms < 10 ? `${ms.toFixed(2)} ms` : `${Math.round(ms)} ms`;
}

let flashTimer = null;

/** Shows a short message above the page; errors stay until the next message. */
export function flash(message, kind = 'ok') {
  const box = $('flash');
  box.textContent = message;
  box.className = `flash ${kind}`;
  box.setAttribute('role', kind === 'error' ? 'alert' : 'status');
  box.hidden = false;
  window.clearTimeout(flashTimer);
  if (kind === 'ok') flashTimer = window.setTimeout(() => { box.hidden = true; }, 5000);
}

export function clearFlash() {
  window.clearTimeout(flashTimer);
  $('flash').hidden = true;
}

/**
 * Asks for confirmation in a modal dialog. Resolves to null when cancelled, else to
 * `{ option }`, the state of the optional checkbox.
 */
export function confirmAction({ title, message, confirmLabel = 'Confirm', option = null }) {
  const dialog = $('confirm');
  $('confirm-title').textContent = title;
  $('confirm-message').textContent = message;
  $('confirm-ok').textContent = confirmLabel;
  const optionBox = $('confirm-option');
  const optionInput = $('confirm-option-input');
  optionBox.hidden = option === null;
  optionInput.checked = false;
  $('confirm-option-text').textContent = option ?? '';
  return new Promise((resolve) => {
    const finish = (result) => {
      $('confirm-ok').removeEventListener('click', onOk);
      $('confirm-cancel').removeEventListener('click', onCancel);
      dialog.removeEventListener('close', onClose);
      if (dialog.open) dialog.close();
      resolve(result);
    };
    const onOk = () => finish({ option: optionInput.checked });
    const onCancel = () => finish(null);
    const onClose = () => finish(null);
    $('confirm-ok').addEventListener('click', onOk);
    $('confirm-cancel').addEventListener('click', onCancel);
    dialog.addEventListener('close', onClose);
    dialog.showModal();
    $('confirm-cancel').focus();
  });
}

/** Disables `button` while `work` runs, so a double click cannot send a request twice. */
export async function busy(button, work) {
  button.disabled = true;
  try {
    return await work();
  } finally {
    button.disabled = false;
  }
}
