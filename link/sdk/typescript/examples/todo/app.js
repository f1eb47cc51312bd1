// A live TODO list on @kalamdb/kalam-link. Each user's todos live in their own partition of
// the USER table app.todos; every tab of the same user sees every change through its
// subscription. The list is cached in localStorage and shown at once; the subscription then
// resynchronises from the newest change the cache has (`since`), so nothing is fetched twice.
//
// Configuration comes from the page address: ?url=<server>&key=<API key> (or &token=<JWT>).
import { KalamLinkClient } from '@kalamdb/kalam-link';

const params = new URLSearchParams(location.search);
const url = params.get('url') ?? 'http://127.0.0.1:8080';
const credential = params.get('key') ?? params.get('token') ?? '';
const cacheKey = `kalam-todos:${url}:${credential.slice(0, 8)}`;

const $ = (id) => document.getElementById(id);
/** id (as text: SNOWFLAKE_IDs exceed JavaScript's exact integers) → todo row */
const todos = new Map();

function loadCache() {
  try {
    for (const t of JSON.parse(localStorage.getItem(cacheKey) ?? '[]')) todos.set(String(t.id), t);
  } catch {
    localStorage.removeItem(cacheKey);
  }
}

function saveCache() {
  localStorage.setItem(cacheKey, JSON.stringify([...todos.values()]));
}

function render() {
  const list = $('todos');
  list.replaceChildren();
  const connected = client.isConnected();
  const sorted = [...todos.values()].sort((a, b) => (BigInt(a.id) < BigInt(b.id) ? -1 : 1));
  for (const t of sorted) {
    const li = document.createElement('li');
    li.dataset.id = String(t.id);
    li.className = t.completed ? 'done' : '';
    const done = document.createElement('input');
    done.type = 'checkbox';
    done.checked = Boolean(t.completed);
    done.disabled = !connected;
    done.onchange = () => run(client.query('UPDATE app.todos SET completed = $1 WHERE id = $2', [done.checked, BigInt(t.id)]));
    const title = document.createElement('span');
    title.className = 'title';
    title.textContent = t.title;
    const del = document.createElement('button');
    del.textContent = 'Delete';
    del.className = 'delete';
    del.disabled = !connected;
    del.onclick = () => run(client.delete('app.todos', BigInt(t.id)));
    li.append(done, title, del);
    list.append(li);
  }
  $('add-button').disabled = !connected;
  $('status').textContent = connected ? 'Connected' : 'Disconnected';
  $('status').classList.toggle('up', connected);
}

/** Writes go to the server; the subscription brings the result back to every tab. */
async function run(write) {
  $('error').textContent = '';
  try {
    await write;
  } catch (e) {
    $('error').textContent = `${e.code ?? 'ERROR'}: ${e.message}`;
  }
}

function apply(event) {
  switch (event.type) {
    case 'initial_data':
    case 'insert':
    case 'update':
      for (const row of event.rows) {
        if (row._deleted) todos.delete(String(row.id));
        else todos.set(String(row.id), row);
      }
      break;
    case 'delete':
      for (const row of event.oldRows) todos.delete(String(row.id));
      break;
    case 'resume_expired':
      // Changes were missed and the snapshot of the original options follows. A `since`
      // snapshot brings every row changed since (deleted ones included), so what is held stays
      // right; a `lastRows` snapshot replaces the list.
      if (!subscribedSince) todos.clear();
      break;
    case 'error':
      $('error').textContent = `${event.code}: ${event.message}`;
      return;
    default:
      return;
  }
  saveCache();
  render();
}

const client = new KalamLinkClient(url);
/** The `since` the subscription was made with (none: a `lastRows` snapshot). */
let subscribedSince;
client.onConnectionChange(() => render());

async function start() {
  loadCache();
  render();
  if (!credential) {
    $('error').textContent = 'Add ?key=<API key> (or ?token=<JWT>) to the address.';
    return;
  }
  // Until the first connection: once connected, the client reconnects and resumes by itself.
  for (let wait = 1000; ; wait = Math.min(wait * 2, 30_000)) {
    try {
      await client.connect(undefined, credential);
      subscribedSince = [...todos.values()].map((t) => t._updated).filter(Boolean).sort().pop();
      const options = subscribedSince ? { since: subscribedSince } : { lastRows: 1000 };
      await client.subscribe('SELECT id, title, completed, created_at FROM app.todos', apply, options);
      $('error').textContent = '';
      break;
    } catch (e) {
      $('error').textContent = `${e.code ?? 'ERROR'}: ${e.message}`;
      // Refused credentials will not get better by waiting.
      if (e.statusCode === 401 || e.statusCode === 403) break;
      await client.disconnect();
      await new Promise((r) => setTimeout(r, wait));
    }
  }
  render();
}

$('add').addEventListener('submit', (e) => {
  e.preventDefault();
  const title = $('title').value.trim();
  if (!title) return;
  $('title').value = '';
  run(client.insert('app.todos', { title }));
});

start();
