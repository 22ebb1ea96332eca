// The dashboard in a real browser: Debian's headless Chromium driven by playwright-core
// against the real `memoryrouter` binary on 127.0.0.1. Run from this folder with
// `npm ci && node --test` after `cargo build -p server --bin memoryrouter`.
//
// One test walks the whole flow a new user follows; every step asserts and the first
// failure stops the walk with the step's name, so a break is loud and points at itself.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import {
  CHROMIUM, CHROMIUM_ARGS, SCREENSHOT_DIR, STEP_LIMIT_MS, call, startServer, stopServer,
} from './harness.mjs';

const EXPECTED_CSP = {
  'default-src': "'self'",
  'script-src': "'self'",
  'style-src': "'self'",
  'img-src': "'self' data:",
  'connect-src': "'self'",
  'frame-ancestors': "'none'",
  'base-uri': "'none'",
  'form-action': "'none'",
};

function parseCsp(header) {
  const directives = {};
  for (const part of header.split(';')) {
    const [name, ...values] = part.trim().split(/\s+/);
    if (name) directives[name] = values.join(' ');
  }
  return directives;
}

test('dashboard: sign in, keys, provider keys, memories, overview, revoke', async (t) => {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'mr-dashboard-data-'));
  const profileDir = mkdtempSync(path.join(tmpdir(), 'mr-dashboard-chromium-'));
  const downloadsDir = mkdtempSync(path.join(tmpdir(), 'mr-dashboard-downloads-'));
  mkdirSync(SCREENSHOT_DIR, { recursive: true });
  const server = startServer(dataDir);
  let context = null;
  t.after(async () => {
    await context?.close();
    await stopServer(server.child);
    for (const dir of [dataDir, profileDir, downloadsDir]) rmSync(dir, { recursive: true, force: true });
  });

  let current = 'start the server';
  const step = async (name, work) => {
    current = name;
    t.diagnostic(`step: ${name}`);
    await work();
  };

  try {
    const base = await server.ready;
    // The address is printed once bound, before the data directory is opened; the first
    // answered request means start-up (and the admin key file) is complete.
    current = 'wait for the server to answer';
    const health = await call(base, 'GET', '/healthz');
    assert.equal(health.status, 200, health.text);
    current = 'read the admin key';
    const adminKey = readFileSync(path.join(dataDir, 'admin.key'), 'utf8').trim();
    assert.match(adminKey, /^mk_/, 'admin.key holds a Memory Key');

    await step('security headers on the page and its assets', async () => {
      const page = await call(base, 'GET', '/');
      assert.equal(page.status, 200);
      assert.match(page.headers.get('content-type') ?? '', /^text\/html/);
      const csp = page.headers.get('content-security-policy');
      assert.ok(csp, 'Content-Security-Policy header is present');
      assert.deepEqual(parseCsp(csp), EXPECTED_CSP);
      assert.equal(page.headers.get('x-content-type-options'), 'nosniff');
      assert.equal(page.headers.get('referrer-policy'), 'no-referrer');
      assert.ok(page.headers.get('cache-control'), 'Cache-Control header is present');
      assert.doesNotMatch(page.text, /<script>|\son[a-z]+="|style="/i, 'no inline script, handler or style in the page');
      const script = await call(base, 'GET', '/assets/app.js');
      assert.equal(script.status, 200);
      assert.match(script.headers.get('content-type') ?? '', /^text\/javascript/);
      assert.ok(script.headers.get('content-security-policy'), 'assets carry the CSP too');
      assert.equal((await call(base, 'GET', '/assets/no-such-file.js')).status, 404);
      assert.equal((await call(base, 'GET', '/index.html')).status, 200);
    });

    context = await chromium.launchPersistentContext(profileDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1100, height: 720 },
      deviceScaleFactor: 1,
      acceptDownloads: true,
      downloadsPath: downloadsDir,
      colorScheme: 'light',
      locale: 'en-GB',
      timezoneId: 'UTC',
    });
    context.setDefaultTimeout(STEP_LIMIT_MS);
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
    const page = context.pages()[0] ?? await context.newPage();
    // Anything the page logs as an error other than an API answer we provoked on purpose
    // (a failed resource load) is a bug: a CSP violation, an exception, a missing module.
    const pageErrors = [];
    page.on('pageerror', (err) => pageErrors.push(`exception: ${err.message}`));
    page.on('console', (message) => {
      if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) {
        pageErrors.push(`console: ${message.text()}`);
      }
    });
    const shot = (name) => page.screenshot({ path: path.join(SCREENSHOT_DIR, `${name}.png`), fullPage: true });
    const flash = page.locator('#flash');
    const confirmDialog = async (expectedTitle) => {
      const dialog = page.locator('#confirm');
      await dialog.waitFor({ state: 'visible' });
      assert.match(await page.locator('#confirm-title').textContent(), expectedTitle);
      await page.locator('#confirm-ok').click();
      await dialog.waitFor({ state: 'hidden' });
    };
    const goTo = async (link, heading) => {
      await page.getByRole('navigation', { name: 'Dashboard pages' }).getByRole('link', { name: link, exact: true }).click();
      await page.getByRole('heading', { level: 1, name: heading }).waitFor();
    };

    await step('the sign-in page refuses a wrong key with the API message', async () => {
      await page.goto(base);
      await page.getByRole('heading', { name: 'Sign in' }).waitFor();
      assert.equal(await page.locator('#nav').isVisible(), false, 'no navigation before sign-in');
      await shot('signin');
      await page.getByLabel('Admin key').fill('mk_not_a_real_key_0000000000');
      await page.getByRole('button', { name: 'Sign in' }).click();
      await page.locator('#signin-error').waitFor({ state: 'visible' });
      assert.notEqual((await page.locator('#signin-error').textContent()).trim(), '');
      assert.equal(await page.locator('#nav').isVisible(), false);
    });

    await step('sign in with the admin key', async () => {
      await page.getByLabel('Admin key').fill(adminKey);
      await page.getByRole('button', { name: 'Sign in' }).click();
      await page.getByRole('heading', { level: 1, name: 'Overview' }).waitFor();
      await page.locator('#overview-stats [data-stat="keys"]').waitFor();
      assert.equal(await page.evaluate(() => sessionStorage.length), 1, 'the key is kept in sessionStorage');
      assert.equal(await page.evaluate(() => document.cookie), '', 'no cookie is set');
      assert.ok(!page.url().includes(adminKey), 'the key never appears in the URL');
    });

    let userKey = '';
    let userKeyId = '';
    await step('mint a key and see it once', async () => {
      await goTo('Keys', 'Memory keys');
      await page.getByLabel('Name of the new key').fill('browser-test');
      await page.getByRole('button', { name: 'Create key' }).click();
      await page.locator('#minted').waitFor({ state: 'visible' });
      userKey = await page.locator('#minted-key').inputValue();
      assert.match(userKey, /^mk_/);
      await page.getByRole('button', { name: 'Copy', exact: true }).click();
      await page.locator('#minted-copied', { hasText: 'Copied to the clipboard.' }).waitFor();
      assert.equal(await page.evaluate(() => navigator.clipboard.readText()), userKey, 'Copy puts the key on the clipboard');
      const row = page.locator('#keys-table tbody tr', { hasText: 'browser-test' });
      await row.waitFor();
      userKeyId = await row.getAttribute('data-key-id');
      assert.match(userKeyId ?? '', /^key_/);
      assert.match(await row.textContent(), /Active/);
      assert.ok(!(await page.locator('#keys-table').textContent()).includes(userKey), 'the table never shows a key');
      await shot('keys');
      await page.getByRole('button', { name: 'I have saved it' }).click();
      assert.equal(await page.locator('#minted').isVisible(), false);
      assert.equal(await page.locator('#minted-key').inputValue(), '', 'the key is gone once dismissed');
    });

    await step('store, mask, replace and remove provider keys', async () => {
      await goTo('Provider keys', 'Provider keys');
      await page.locator('#providers-empty').waitFor({ state: 'visible' });
      const secret = 'sk-test-0123456789abcdefWXYZ';
      for (const [provider, apiKey] of [['openai', secret], ['anthropic', 'sk-ant-test-9876543210zyxw']]) {
        await page.getByLabel('Provider', { exact: true }).fill(provider);
        await page.getByLabel('API key').fill(apiKey);
        await page.getByRole('button', { name: 'Save provider key' }).click();
        await page.locator(`#providers-table tr[data-provider="${provider}"]`).waitFor();
      }
      // An API refusal is shown in the API's own words, and nothing is stored.
      await page.getByLabel('Provider', { exact: true }).fill('ollama');
      await page.getByLabel('API key').fill('x'.repeat(5000));
      assert.equal(await page.getByLabel('Base URL').count(), 0, 'base URLs are set in the config file only');
      await page.getByRole('button', { name: 'Save provider key' }).click();
      await flash.filter({ hasText: 'is longer than 4096 bytes' }).waitFor();
      assert.equal(await flash.getAttribute('role'), 'alert');
      assert.equal(await page.locator('#providers-table tr[data-provider="ollama"]').count(), 0);
      await page.locator('#provider-form').evaluate((form) => form.reset());
      const openai = page.locator('#providers-table tr[data-provider="openai"]');
      assert.ok(!(await openai.textContent()).includes(secret), 'the stored key is shown masked');
      assert.equal(await page.getByLabel('API key').inputValue(), '', 'the form forgets the key once saved');
      await openai.getByRole('button', { name: 'Replace the openai key' }).click();
      assert.equal(await page.getByLabel('Provider', { exact: true }).inputValue(), 'openai');
      await page.getByLabel('API key').fill('sk-test-replaced-5555');
      await page.getByRole('button', { name: 'Save provider key' }).click();
      await flash.filter({ hasText: 'openai saved' }).waitFor();
      await page.getByRole('button', { name: 'Remove the anthropic key' }).click();
      await confirmDialog(/anthropic/);
      await page.locator('#providers-table tr[data-provider="anthropic"]').waitFor({ state: 'detached' });
      await page.locator('#providers-table tr[data-provider="openai"]').waitFor();
      await shot('providers');
    });

    await step('ingest two memories through the API with the new key', async () => {
      const lisbon = await call(base, 'POST', '/v1/memory/ingest', {
        key: userKey,
        body: { session_id: 'trip', messages: [{ role: 'user', content: 'I am planning a trip to Lisbon in May and want to ride tram 28.' }] },
      });
      assert.equal(lisbon.status, 202, lisbon.text);
      assert.ok(lisbon.json.stored >= 1, lisbon.text);
      const cat = await call(base, 'POST', '/v1/memory/ingest', {
        key: userKey,
        body: { session_id: 'pets', messages: [{ role: 'user', content: 'My cat is called Miso and she loves tuna.' }] },
      });
      assert.equal(cat.status, 202, cat.text);
    });

    const memoryList = page.locator('#mem-list');
    const memoryItem = (text) => memoryList.locator('li', { hasText: text });
    await step('see the memories in the browser, newest first', async () => {
      await goTo('Memories', 'Memories');
      await page.getByLabel('Memory Key', { exact: true }).selectOption(userKeyId);
      await memoryItem('Miso').waitFor();
      await memoryItem('Lisbon').waitFor();
      const texts = await memoryList.locator('.memory-content').allTextContents();
      assert.ok(texts.findIndex((s) => s.includes('Miso')) < texts.findIndex((s) => s.includes('Lisbon')), 'newest first');
      await shot('memories');
      // Responsive: on a phone-sized screen nothing is wider than the screen.
      await page.setViewportSize({ width: 390, height: 844 });
      assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), 'no sideways scrolling at 390 px');
      await shot('memories-mobile');
      await page.setViewportSize({ width: 1100, height: 720 });
    });

    await step('filter by session', async () => {
      await page.getByLabel('Session', { exact: true }).fill('pets');
      await page.getByRole('button', { name: 'Filter' }).click();
      await memoryItem('Lisbon').waitFor({ state: 'detached' });
      await memoryItem('Miso').waitFor();
      await page.getByLabel('Session', { exact: true }).fill('');
      await page.getByRole('button', { name: 'Filter' }).click();
      await memoryItem('Lisbon').waitFor();
    });

    await step('search the vault', async () => {
      await page.getByLabel('Search', { exact: true }).fill('Lisbon tram');
      await page.getByRole('button', { name: 'Search', exact: true }).click();
      await page.locator('#mem-status', { hasText: /results? for "Lisbon tram"/ }).waitFor();
      assert.match(await memoryList.locator('.memory-content').first().textContent(), /Lisbon/, 'the best hit comes first');
      await shot('memories-search');
      await page.getByRole('button', { name: 'Show all' }).click();
      await memoryItem('Miso').waitFor();
    });

    await step('export the vault as JSON Lines', async () => {
      const [download] = await Promise.all([
        page.waitForEvent('download'),
        page.getByRole('button', { name: 'Export JSON Lines' }).click(),
      ]);
      assert.match(download.suggestedFilename(), /^memories-browser-test-.*\.jsonl$/);
      const file = await download.path();
      const lines = readFileSync(file, 'utf8').split('\n').filter((line) => line.trim() !== '');
      const records = lines.map((line) => JSON.parse(line));
      const contents = JSON.stringify(records);
      assert.match(contents, /Lisbon/);
      assert.match(contents, /Miso/);
    });

    await step('page through a vault of 30 memories, 25 at a time', async () => {
      const minted = await call(base, 'POST', '/v1/keys', { key: adminKey, body: { name: 'paging' } });
      assert.equal(minted.status, 201, minted.text);
      const messages = Array.from({ length: 30 }, (_, i) => ({ role: 'user', content: `Paging note number ${i + 1} about topic ${i * 7}.` }));
      const ingested = await call(base, 'POST', '/v1/memory/ingest', { key: minted.json.key, body: { session_id: 'paging', messages } });
      assert.equal(ingested.status, 202, ingested.text);
      assert.equal(ingested.json.stored, 30, ingested.text);
      await page.reload();
      await page.getByRole('heading', { level: 1, name: 'Memories' }).waitFor();
      await page.getByLabel('Memory Key', { exact: true }).selectOption(minted.json.id);
      await memoryItem('Paging note number 30 about').waitFor();
      assert.equal(await memoryList.locator('li').count(), 25, 'the first page holds 25');
      assert.equal(await memoryItem('Paging note number 5 about').count(), 0, 'older memories wait for the next page');
      await page.getByRole('button', { name: 'Load more' }).click();
      await memoryItem('Paging note number 1 about').waitFor();
      assert.equal(await memoryList.locator('li').count(), 30);
      assert.equal(await page.getByRole('button', { name: 'Load more' }).isVisible(), false, 'no more pages');
      const ids = await memoryList.locator('li').evaluateAll((items) => items.map((li) => li.dataset.memoryId));
      assert.equal(new Set(ids).size, 30, 'no memory is shown twice across pages');
    });

    await step('the overview shows counts and request latency', async () => {
      await goTo('Overview', 'Overview');
      await page.getByRole('button', { name: 'Refresh' }).click();
      const keys = await page.locator('#overview-stats [data-stat="keys"]').textContent();
      assert.ok(Number(keys.replace(/\D/g, '')) >= 3, `keys stat counts the admin and minted keys: ${keys}`);
      const memories = await page.locator('#overview-stats [data-stat="memories"]').textContent();
      assert.ok(Number(memories.replace(/\D/g, '')) >= 32, `memories stat counts the ingested memories: ${memories}`);
      await page.locator('#overview-requests tbody tr').first().waitFor();
      assert.match(await page.locator('#overview-requests').textContent(), /ingest/);
      await shot('overview');
    });

    await step('delete one memory', async () => {
      await goTo('Memories', 'Memories');
      await page.getByLabel('Memory Key', { exact: true }).selectOption(userKeyId);
      await memoryItem('Lisbon').getByRole('button', { name: 'Delete this memory' }).click();
      await confirmDialog(/Delete this memory/);
      await memoryItem('Lisbon').waitFor({ state: 'detached' });
      const search = await call(base, 'POST', '/v1/memory/search', { key: userKey, body: { query: 'Lisbon tram', limit: 10 } });
      assert.equal(search.status, 200, search.text);
      assert.ok(!search.text.includes('Lisbon'), `a deleted memory never comes back: ${search.text}`);
      await page.reload();
      await page.getByRole('heading', { level: 1, name: 'Memories' }).waitFor();
      await page.getByLabel('Memory Key', { exact: true }).selectOption(userKeyId);
      await memoryItem('Miso').waitFor();
      assert.equal(await memoryItem('Lisbon').count(), 0, 'still gone after a reload');
    });

    await step('clear the vault', async () => {
      await page.getByRole('button', { name: 'Clear vault…' }).click();
      await confirmDialog(/Clear the whole vault/);
      await page.locator('#mem-empty', { hasText: 'no memories' }).waitFor();
      assert.equal(await memoryList.locator('li').count(), 0);
      const list = await call(base, 'GET', '/v1/memory', { key: userKey });
      assert.equal(list.status, 200, list.text);
      assert.ok(!list.text.includes('Miso'), `the vault is empty: ${list.text}`);
    });

    await step('revoke the key with confirmation', async () => {
      await goTo('Keys', 'Memory keys');
      const row = page.locator(`#keys-table tr[data-key-id="${userKeyId}"]`);
      await row.getByRole('button', { name: 'Revoke browser-test' }).click();
      await confirmDialog(/Revoke this key/);
      await row.getByText('Revoked', { exact: true }).waitFor();
      const refused = await call(base, 'POST', '/v1/memory/search', { key: userKey, body: { query: 'Miso' } });
      assert.equal(refused.status, 401, `a revoked key is refused: ${refused.text}`);
    });

    await step('a per-user key cannot sign in or call admin endpoints', async () => {
      await page.getByLabel('Name of the new key').fill('not-admin');
      await page.getByRole('button', { name: 'Create key' }).click();
      await page.locator('#minted').waitFor({ state: 'visible' });
      const plainKey = await page.locator('#minted-key').inputValue();
      assert.match(plainKey, /^mk_/);
      for (const route of ['/v1/keys', '/v1/admin/overview', '/v1/provider-keys']) {
        const answer = await call(base, 'GET', route, { key: plainKey });
        assert.ok([401, 403].includes(answer.status), `${route} refuses a per-user key (got ${answer.status})`);
        assert.ok(answer.json?.error?.message, `${route} explains the refusal`);
      }
      const other = await call(base, 'GET', `/v1/memory?key_id=${encodeURIComponent(userKeyId)}`, { key: plainKey });
      assert.ok(!other.text.includes('Miso') && other.status !== 500, 'key_id is ignored or refused for a per-user key');

      await page.getByRole('button', { name: 'Sign out' }).click();
      await page.getByRole('heading', { name: 'Sign in' }).waitFor();
      assert.equal(await page.evaluate(() => sessionStorage.length), 0, 'sign-out forgets the key');
      await page.getByLabel('Admin key').fill(plainKey);
      await page.getByRole('button', { name: 'Sign in' }).click();
      await page.locator('#signin-error').waitFor({ state: 'visible' });
      assert.match(await page.locator('#signin-error').textContent(), /cannot sign in|admin/i);
      assert.equal(await page.locator('#nav').isVisible(), false, 'still signed out');
      assert.equal(await page.evaluate(() => sessionStorage.length), 0);
    });

    assert.deepEqual(pageErrors, [], 'the page logged no errors (CSP violations, exceptions)');
  } catch (err) {
    err.message = `step "${current}" failed: ${err.message}\n--- server output ---\n${server.output.slice(-40).join('\n')}`;
    throw err;
  }
});
