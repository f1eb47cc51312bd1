// The example TODO app in headless Chromium (Debian's `chromium`, driven by playwright-core)
// against a real server: the page connects, shows a row inserted over HTTP by another client,
// adds and deletes through its buttons, and a screenshot is saved in test-results/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, mkdirSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';
import { Cluster } from './support/server.mjs';
import { serve } from '../examples/todo/serve.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const results = fileURLToPath(new URL('../test-results/', import.meta.url));

let cluster;
let site;
let browser;

before(async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium (or set CHROMIUM_PATH)`);
  cluster = await Cluster.start();
  await cluster.sql(readFileSync(new URL('../examples/todo/todo-app.sql', import.meta.url), 'utf8'));
  site = await serve(0);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  site?.close();
  await cluster?.stop();
});

test('the example app shows live changes and writes through the SDK', async () => {
  const key = await cluster.createUser('grace');
  const page = await browser.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => m.type() === 'error' && problems.push(`console: ${m.text()}`));
  const address = `http://127.0.0.1:${site.address().port}/examples/todo/` +
    `?url=${encodeURIComponent(cluster.url)}&key=${encodeURIComponent(key)}`;
  await page.goto(address);
  await page.getByTestId('status').filter({ hasText: /^Connected$/ }).waitFor({ timeout: 20_000 });

  // A row written by another client over HTTP appears on the page.
  const r = await fetch(`${cluster.url}/v1/api/sql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': key },
    body: JSON.stringify({ sql: 'INSERT INTO app.todos (title) VALUES ($1)', params: ['written over HTTP'] }),
  });
  assert.equal((await r.json()).status, 'success');
  await page.locator('li .title', { hasText: 'written over HTTP' }).waitFor({ timeout: 10_000 });

  // The page's own writes come back through its subscription.
  await page.fill('#title', 'added in the browser');
  await page.click('#add-button');
  await page.locator('li .title', { hasText: 'added in the browser' }).waitFor({ timeout: 10_000 });
  const mine = await fetch(`${cluster.url}/v1/api/sql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': key },
    body: JSON.stringify({ sql: 'SELECT title FROM app.todos ORDER BY title' }),
  });
  const titles = (await mine.json()).results[0].rows.map((row) => row.title);
  assert.deepEqual(titles, ['added in the browser', 'written over HTTP'], "the page wrote to grace's partition");

  const item = page.locator('li', { hasText: 'written over HTTP' });
  await item.locator('button.delete').click();
  await item.waitFor({ state: 'detached', timeout: 10_000 });
  assert.deepEqual(await page.locator('li .title').allTextContents(), ['added in the browser']);

  mkdirSync(results, { recursive: true });
  await page.screenshot({ path: `${results}/todo-app.png`, fullPage: true });
  assert.deepEqual(problems, []);
  await page.close();
});
