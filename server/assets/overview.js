// Overview page: what the server holds and how fast it has been answering.
import { api } from './api.js';
import { $, busy, clear, el, formatBytes, formatDuration, formatMs, formatNumber } from './ui.js';

let report = () => {};

export function init({ reportError }) {
  report = reportError;
  $('overview-refresh').addEventListener('click', (event) =>
    busy(event.currentTarget, () => show().catch(report)));
}

export function reset() {
  clear($('overview-stats'));
  clear($('overview-requests').tBodies[0]);
}

function stat(label, value, id) {
  return el('div', { className: 'stat' }, el('dl', {},
    el('dt', { text: label }),
    el('dd', { text: value, dataset: { stat: id } })));
}

export async function show() {
  const data = await api('GET', '/v1/admin/overview');
  $('overview-stats').replaceChildren(
    stat('Active keys', formatNumber(data.keys), 'keys'),
    stat('Vaults', formatNumber(data.vaults), 'vaults'),
    stat('Open vaults', formatNumber(data.open_vaults), 'open_vaults'),
    // The server sums a bounded number of vaults; past that the count is a lower bound.
    stat('Memories', `${formatNumber(data.memories)}${data.memories_partial ? '+' : ''}`, 'memories'),
    stat('Disk use', formatBytes(data.disk_bytes), 'disk_bytes'),
    stat('Up for', formatDuration(data.uptime_secs), 'uptime_secs'),
  );
  const routes = Object.entries(data.requests ?? {})
    .filter(([, r]) => r && typeof r === 'object')
    .sort(([, a], [, b]) => (b.count ?? 0) - (a.count ?? 0));
  const body = $('overview-requests').tBodies[0];
  body.replaceChildren(...routes.map(([route, r]) => el('tr', {},
    el('td', {}, el('code', { text: route })),
    el('td', { className: 'num', text: formatNumber(r.count) }),
    el('td', { className: 'num', text: formatMs(r.p50_ms) }),
    el('td', { className: 'num', text: formatMs(r.p99_ms) }))));
  $('overview-requests-empty').hidden = routes.length > 0;
}
