// Stored text cannot run script in the dashboard (issue 14 item 8): memories, session ids,
// models and key names carrying `<img onerror>`, `<script>`, `<svg onload>`, `<iframe
// srcdoc>` and `javascript:` payloads are stored through the API, then shown by the
// dashboard in headless Chromium. Nothing may run: no dialog, no marker set on `window`,
// no Content-Security-Policy violation (a `securitypolicyviolation` listener installed
// before the page's own script, so even a payload the CSP blocks is caught), no element
// made from a payload — and each payload is visible as text.
//
// Teeth: with `ui.js`'s `el()` setting `innerHTML` instead of `textContent`, this test
// fails (the payloads become elements and the blocked inline handlers are reported as CSP
// violations).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { CHROMIUM, CHROMIUM_ARGS, STEP_LIMIT_MS, call, startServer, stopServer } from './harness.mjs';

// Each payload, if it ever ran, would open a dialog and bump `window.__xss`.
const RUN = "window.__xss=(window.__xss||0)+1;alert(document.domain)";
const PAYLOADS = [
  `<img src=x onerror="${RUN}">`,
  `<script>${RUN}</script>`,
  `<svg onload="${RUN}"></svg>`,
  `<iframe srcdoc="<script>parent.__xss=1</script>"></iframe>`,
  `<a href="javascript:${RUN}">click me</a>`,
  `javascript:${RUN}`,
  `"><img src=x onerror=${RUN}>`,
];
const KEY_NAME = `<img src=x onerror="${RUN}">`;
const MODEL = `<script>${RUN}</script>`;
const SESSION = `"><svg onload=${RUN}>`;
// Elements a payload would create if it were parsed as HTML.
const INJECTED = 'img, script:not([src]), svg, iframe, a[href^="javascript:"]';

test('dashboard: stored payloads show as text and run nothing', async (t) => {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'mr-xss-data-'));
  const profileDir = mkdtempSync(path.join(tmpdir(), 'mr-xss-chromium-'));
  const server = startServer(dataDir);
  let context = null;
  t.after(async () => {
    await context?.close();
    await stopServer(server.child);
    for (const dir of [dataDir, profileDir]) rmSync(dir, { recursive: true, force: true });
  });

  const base = await server.ready;
  const health = await call(base, 'GET', '/healthz');
  assert.equal(health.status, 200, health.text);
  const adminKey = readFileSync(path.join(dataDir, 'admin.key'), 'utf8').trim();

  // Stored through the API, as any client (or a poisoned tool output) would.
  const minted = await call(base, 'POST', '/v1/keys', { key: adminKey, body: { name: KEY_NAME } });
  assert.equal(minted.status, 201, minted.text);
  const ingested = await call(base, 'POST', '/v1/memory/ingest', {
    key: minted.json.key,
    body: {
      session_id: SESSION,
      model: MODEL,
      messages: PAYLOADS.map((content) => ({ role: 'user', content })),
    },
  });
  assert.equal(ingested.status, 202, ingested.text);
  assert.equal(ingested.json.stored, PAYLOADS.length, ingested.text);

  context = await chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1100, height: 720 },
  });
  context.setDefaultTimeout(STEP_LIMIT_MS);
  // Before any script of the page: record every CSP violation the document reports.
  await context.addInitScript(() => {
    window.__violations = [];
    document.addEventListener('securitypolicyviolation', (event) => {
      window.__violations.push(`${event.violatedDirective} ${event.blockedURI} ${event.sample}`);
    });
  });
  const page = context.pages()[0] ?? await context.newPage();
  const dialogs = [];
  page.on('dialog', async (dialog) => {
    dialogs.push(`${dialog.type()}: ${dialog.message()}`);
    await dialog.dismiss();
  });
  const pageErrors = [];
  page.on('pageerror', (err) => pageErrors.push(`exception: ${err.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) {
      pageErrors.push(`console: ${message.text()}`);
    }
  });
  // Nothing ran, nothing was blocked, no payload became an element in `scope`.
  const nothingRan = async (where, scope) => {
    await page.waitForLoadState('networkidle');
    const seen = await page.evaluate((selector) => ({
      xss: window.__xss ?? 0,
      violations: window.__violations,
      injected: [...document.querySelectorAll(selector)].map((node) => node.outerHTML),
      frames: window.frames.length,
    }), `${scope} :is(${INJECTED})`);
    assert.deepEqual(dialogs, [], `${where}: a payload opened a dialog`);
    assert.equal(seen.xss, 0, `${where}: a payload ran`);
    assert.deepEqual(seen.violations, [], `${where}: CSP violations (a payload was parsed as HTML)`);
    assert.deepEqual(seen.injected, [], `${where}: payloads became elements`);
    assert.equal(seen.frames, 0, `${where}: a payload made a frame`);
  };

  await page.goto(base);
  await page.getByLabel('Admin key').fill(adminKey);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { level: 1, name: 'Overview' }).waitFor();
  const goTo = async (link, heading) => {
    await page.getByRole('navigation', { name: 'Dashboard pages' }).getByRole('link', { name: link, exact: true }).click();
    await page.getByRole('heading', { level: 1, name: heading }).waitFor();
  };

  await goTo('Keys', 'Memory keys');
  const row = page.locator(`#keys-table tr[data-key-id="${minted.json.id}"]`);
  await row.waitFor();
  assert.ok((await row.textContent()).includes(KEY_NAME), 'the key name shows as text');
  await nothingRan('keys page', '#keys-table');
  // The revoke confirmation names the key too.
  await row.getByRole('button', { name: `Revoke ${KEY_NAME}` }).click();
  await page.locator('#confirm').waitFor({ state: 'visible' });
  await nothingRan('revoke confirmation', '#confirm');
  await page.getByRole('button', { name: 'Cancel' }).click();
  await page.locator('#confirm').waitFor({ state: 'hidden' });

  await goTo('Memories', 'Memories');
  await page.getByLabel('Memory Key', { exact: true }).selectOption(minted.json.id);
  const list = page.locator('#mem-list');
  await list.locator('li').nth(PAYLOADS.length - 1).waitFor();
  await nothingRan('memory list', '#mem-list');
  const shown = await list.locator('.memory-content').allTextContents();
  for (const payload of PAYLOADS) {
    assert.ok(shown.includes(payload), `memory shown as text: ${payload}`);
  }
  const listed = await list.textContent();
  assert.ok(listed.includes(SESSION), 'the session id shows as text');
  assert.ok(listed.includes(MODEL), 'the model shows as text');

  // A search echoes the query and shows hits: the same payloads again.
  await page.getByLabel('Search', { exact: true }).fill(PAYLOADS[0]);
  await page.getByRole('button', { name: 'Search', exact: true }).click();
  await page.locator('#mem-status', { hasText: /results? for/ }).waitFor();
  assert.ok((await page.locator('#mem-status').textContent()).includes(PAYLOADS[0]), 'the query shows as text');
  await nothingRan('search results', 'main');

  await goTo('Overview', 'Overview');
  await nothingRan('overview', 'main');
  assert.deepEqual(pageErrors, [], 'the page logged no errors');
});
