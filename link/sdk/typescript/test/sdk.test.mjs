// The SDK in Node.js against a real server: loading, credentials, queries with parameters,
// errors, batches, big integers, subscriptions with every kind of event, unsubscribe, and a
// resume across a kalam-lived restart that loses and repeats nothing.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import init, { KalamLinkClient, KalamClient } from '../dist/index.js';
import { Cluster, Events, waitFor } from './support/server.mjs';

let cluster;
let key;

before(async () => {
  cluster = await Cluster.start();
  await cluster.sql(
    'CREATE NAMESPACE app; ' +
      'CREATE USER TABLE app.todos (id BIGINT PRIMARY KEY DEFAULT SNOWFLAKE_ID(), title TEXT NOT NULL, ' +
      'completed BOOLEAN NOT NULL DEFAULT FALSE); ' +
      'CREATE USER TABLE app.log (n BIGINT PRIMARY KEY, note TEXT)',
  );
  key = await cluster.createUser('ada');
});

// Every client a test makes, disconnected at the end even when the test failed.
const clients = [];
function track(...args) {
  const c = new KalamLinkClient(...args);
  clients.push(c);
  return c;
}

after(async () => {
  for (const c of clients) await c.disconnect();
  await cluster?.stop();
});

test('the package loads and refuses what cannot work', async () => {
  await init();
  assert.equal(KalamClient, KalamLinkClient);
  assert.throws(() => track(''), /'url' parameter is required and cannot be empty/);
  assert.throws(() => track({ url: '  ' }), /'url' parameter is required/);
  await assert.rejects(track(cluster.url).connect(), /an API key or token is required/);
  await assert.rejects(track(cluster.url).query('SELECT 1'), /an API key or token is required/);
  const notUrl = track('localhost:8080', 'k');
  await assert.rejects(notUrl.query('SELECT 1'), (e) => e.code === 'CONFIGURATION_ERROR' && /http:\/\//.test(e.message));
  const idle = track(cluster.url, key);
  await assert.rejects(idle.subscribe('app.todos', () => {}), (e) => e.code === 'NOT_CONNECTED' &&
    e.message === 'Not connected to server. Call connect() first.');
  assert.equal((await idle.health()).status, 'healthy');
});

test('bad credentials are refused with the server reason, on HTTP and the WebSocket', async () => {
  const wrong = track(cluster.url, 'not-a-key-of-anyone');
  await assert.rejects(wrong.query('SELECT 1'), (e) => e.statusCode === 401 && typeof e.code === 'string');
  await assert.rejects(wrong.connect(), (e) => e.statusCode === 401 && e.code === 'INVALID_API_KEY');
  assert.equal(wrong.isConnected(), false);
});

test('queries, parameters, errors, batches, insert and delete', async () => {
  const client = track(cluster.url, key);
  const inserted = await client.insert('app.todos', { title: "milk 'n' eggs" });
  assert.equal(inserted.rowCount, 1);
  await client.query('INSERT INTO app.todos (title, completed) VALUES ($1, $2)', ['bread', true]);

  const r = await client.query('SELECT title, completed, id FROM app.todos WHERE completed = $1', [false]);
  assert.deepEqual(r.columns, ['title', 'completed', 'id']);
  assert.equal(r.rowCount, 1);
  assert.deepEqual(Object.keys(r.rows[0]), ['title', 'completed', 'id'], 'keys keep the column order');
  assert.equal(r.rows[0].title, "milk 'n' eggs");
  assert.equal(typeof r.tookMs, 'number');

  // A SNOWFLAKE_ID is above 2^53: it arrives as its exact decimal text.
  const id = r.rows[0].id;
  assert.equal(typeof id, 'string');
  assert.ok(BigInt(id) > BigInt(Number.MAX_SAFE_INTEGER), id);
  const asText = await client.query('SELECT CAST(id AS TEXT) AS t FROM app.todos WHERE title = $1', ["milk 'n' eggs"]);
  assert.equal(asText.rows[0].t, id);
  const byBigint = await client.query('SELECT title FROM app.todos WHERE id = $1', [BigInt(id)]);
  assert.equal(byBigint.rows[0].title, "milk 'n' eggs", 'a bigint parameter is sent exactly');

  const none = await client.query('UPDATE app.todos SET completed = TRUE WHERE id = $1', [BigInt(id)]);
  assert.deepEqual(none.rows, []);
  assert.equal(none.rowCount, 1);

  await assert.rejects(client.query('SELECT * FROM app.missing'), (e) =>
    e instanceof Error && e.code === 'TABLE_NOT_FOUND' && e.statusCode >= 400 && !e.message.startsWith('TABLE_NOT_FOUND'));
  await assert.rejects(client.query('SELECT * FROM app.todos WHERE id = $1', ['x']), (e) => e.code === 'PARAM_TYPE_MISMATCH');
  await assert.rejects(client.insert('app.todos; DROP TABLE app.todos', { title: 'x' }), /invalid table/);

  const results = await client.batch(['INSERT INTO app.log VALUES (1, $$a$$)', 'SELECT count(*) AS c FROM app.log']);
  assert.equal(results.length, 2);
  assert.equal(results[1].rows[0].c, 1);
  const raw = await client.queryRaw('SELECT 1 AS one; SELECT * FROM app.missing');
  assert.equal(raw.status, 'error');
  assert.equal(raw.error.code, 'TABLE_NOT_FOUND');
  assert.equal(raw.error.statement_index, 2, '1-based');
  assert.equal(raw.results[0].rows[0].one, 1);

  const deleted = await client.delete('app.todos', id);
  assert.equal(deleted.rowCount, 1);
  const left = await client.query('SELECT title FROM app.todos');
  assert.deepEqual(left.rows.map((row) => row.title), ['bread']);
});

test('subscriptions deliver the snapshot, inserts, updates and deletes until unsubscribed', async () => {
  const client = track({ url: cluster.url, apiKey: key });
  const statuses = [];
  client.onConnectionChange((up) => statuses.push(up));
  await client.connect();
  assert.equal(client.isConnected(), true);
  await client.query('INSERT INTO app.log VALUES (10, $1)', ['before']);

  const a = new Events();
  const sub = await client.subscribe('SELECT n, note FROM app.log WHERE n >= 10', a.push, { id: 'log-a', lastRows: 10 });
  assert.equal(sub.id, 'log-a');
  const ack = await a.next('ack', (e) => e.type === 'ack');
  assert.equal(ack.subscriptionId, 'log-a');
  const snapshot = await a.next('initial_data', (e) => e.type === 'initial_data');
  assert.deepEqual(snapshot.rows.map(({ n, note }) => ({ n, note })), [{ n: 10, note: 'before' }]);

  const b = new Events();
  const other = await client.subscribe('app.log', { lastRows: 0 }, b.push);
  assert.match(other.id, /^sub-[0-9a-f-]{36}$/);

  await client.query('INSERT INTO app.log VALUES (11, $1)', ['new']);
  const ins = await a.next('insert', (e) => e.type === 'insert');
  assert.deepEqual(ins.rows.map(({ n, note }) => ({ n, note })), [{ n: 11, note: 'new' }]);
  assert.deepEqual(Object.keys(ins.rows[0]).slice(0, 2), ['n', 'note'], 'live rows keep the column order');
  assert.equal(typeof ins.seq, 'number');
  await client.query("UPDATE app.log SET note = 'changed' WHERE n = 11");
  const upd = await a.next('update', (e) => e.type === 'update');
  assert.equal(upd.subscriptionId, 'log-a');
  assert.equal(upd.rows[0].note, 'changed');
  assert.equal(upd.oldRows[0].note, 'new');
  await client.query('DELETE FROM app.log WHERE n = 11');
  const del = await a.next('delete', (e) => e.type === 'delete');
  assert.equal(del.oldRows[0].n, 11);
  assert.ok(ins.seq < upd.seq && upd.seq < del.seq);

  // After unsubscribe nothing more reaches `a`; `b` still sees the next change.
  await sub.unsubscribe();
  const seen = a.all.length;
  await client.query('INSERT INTO app.log VALUES (12, $1)', ['after']);
  await b.next('insert of 12', (e) => e.type === 'insert' && e.rows[0].n === 12);
  assert.equal(a.all.length, seen, JSON.stringify(a.all.slice(seen)));
  assert.ok(b.all.every((e) => e.subscriptionId === other.id));

  // A refused subscription rejects with the server's code.
  await assert.rejects(client.subscribe('SELECT * FROM app.nothing', () => {}), (e) => e.code === 'TABLE_NOT_FOUND');

  await client.disconnect();
  assert.equal(client.isConnected(), false);
  assert.deepEqual(statuses, [true, false]);
  await client.connect();
  assert.equal(client.isConnected(), true, 'connect works again after disconnect');
  await client.disconnect();
});

test('subscriptions end cleanly: ids can be reused, and a pending subscribe rejects on disconnect', async () => {
  const client = track({ url: cluster.url, apiKey: key });
  await client.connect();

  // The server's late `unsubscribed` for the old subscription does not end the new one.
  const first = await client.subscribe('SELECT n FROM app.log WHERE n >= 5000', () => {}, { id: 'again' });
  await client.unsubscribe(first);
  const events = new Events();
  const second = await client.subscribe('SELECT n FROM app.log WHERE n >= 5000', events.push, { id: 'again' });
  assert.equal(String(second), 'again');
  await client.query('INSERT INTO app.log (n) VALUES (5001)');
  await events.next('the insert on the reused id', (e) => e.type === 'insert' && e.rows[0].n === 5001);
  assert.ok(!events.all.some((e) => e.type === 'unsubscribed'), JSON.stringify(events.all));
  await assert.rejects(client.subscribe('app.log', () => {}, { id: 'again' }), (e) => e.code === 'DUPLICATE_SUBSCRIPTION_ID');

  // kalam-lived frozen: the subscribe waits for its ack; disconnect must settle it.
  const lived = await cluster.pid('kalam-lived');
  process.kill(lived, 'SIGSTOP');
  try {
    const waiting = client.subscribe('app.log', () => {});
    await waitFor('the subscribe to be sent', () => client.pending.size === 1);
    await client.disconnect();
    await assert.rejects(waiting, (e) => e.code === 'NOT_CONNECTED');
  } finally {
    process.kill(lived, 'SIGCONT');
  }
});

test('a subscription resumes across a kalam-lived restart without losing or repeating a change', async () => {
  const client = track({ url: cluster.url, apiKey: key, reconnect: { initialDelayMs: 200 } });
  await client.connect();
  const events = new Events();
  await client.subscribe('SELECT n FROM app.log WHERE n >= 1000', events.push);
  // A second subscription on the same socket: after the restart both resume in one message.
  const upper = new Events();
  await client.subscribe('SELECT n FROM app.log WHERE n >= 1060', upper.push);

  const writer = track(cluster.url, key);
  const total = 120;
  let written = 0;
  const writing = (async () => {
    for (let n = 1000; n < 1000 + total; n++) {
      // A write may fail while a daemon restarts: retry until it is in.
      for (;;) {
        try {
          await writer.query('INSERT INTO app.log (n) VALUES ($1)', [n]);
          break;
        } catch (e) {
          if (e.code === 'PRIMARY_KEY_VIOLATION' || /duplicate|already exists/i.test(e.message)) break;
          await new Promise((r) => setTimeout(r, 50));
        }
      }
      written++;
      await new Promise((r) => setTimeout(r, 10));
    }
  })();
  await waitFor('some changes before the restart', () => written > 20);
  await cluster.killAndWaitRestart('kalam-lived');
  await writing;

  await events.next('every insert', () => {
    const got = events.all.filter((e) => e.type === 'insert').flatMap((e) => e.rows.map((r) => r.n));
    return got.length >= total;
  }, { timeoutMs: 60_000 });
  const got = events.all.filter((e) => e.type === 'insert').flatMap((e) => e.rows.map((r) => r.n));
  assert.deepEqual(got, Array.from({ length: total }, (_, i) => 1000 + i), 'each change once, in commit order');
  assert.ok(events.all.some((e) => e.type === 'reconnecting'), 'the drop was reported');
  assert.ok(events.all.some((e) => e.type === 'resumed'), 'the subscription resumed');
  await upper.next('the upper inserts', () => upper.all.filter((e) => e.type === 'insert').length >= 60, { timeoutMs: 60_000 });
  const high = upper.all.filter((e) => e.type === 'insert').flatMap((e) => e.rows.map((r) => r.n));
  assert.deepEqual(high, Array.from({ length: 60 }, (_, i) => 1060 + i));
  assert.ok(upper.all.some((e) => e.type === 'resumed'), 'the second subscription resumed too');
  await client.disconnect();
});
