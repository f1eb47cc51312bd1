// Starts a real KalamDB (kalam-supervisor and its daemons) on a free port in a temporary data
// directory, for one test file. The binaries come from $KALAMDB_BIN_DIR, else
// $CARGO_TARGET_DIR/debug, else the workspace's target/debug.
import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, existsSync, openSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));
const workspace = resolve(here, '../../../../..');

export function binDir() {
  if (process.env.KALAMDB_BIN_DIR) return process.env.KALAMDB_BIN_DIR;
  return join(process.env.CARGO_TARGET_DIR ?? join(workspace, 'target'), 'debug');
}

export function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.on('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

/** Polls `check` every 20 ms until it returns a value other than undefined/false. */
export async function waitFor(what, check, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export class Cluster {
  static async start(toml = '') {
    const bin = join(binDir(), 'kalam-supervisor');
    if (!existsSync(bin)) throw new Error(`${bin} is missing: build the workspace binaries first (cargo build --workspace)`);
    const dir = mkdtempSync(join(tmpdir(), 'kalam-sdk-'));
    writeFileSync(join(dir, 'kalam.toml'), toml);
    const port = await freePort();
    const log = openSync(join(dir, 'supervisor.out'), 'a');
    const child = spawn(bin, ['--port', String(port), '--data-dir', join(dir, 'data')], {
      cwd: dir,
      env: { ...process.env, KALAMDB_LOG_LEVEL: 'info' },
      stdio: ['ignore', log, log],
    });
    const cluster = new Cluster(dir, port, child);
    try {
      await waitFor('the health check', async () => {
        if (child.exitCode !== null) throw new Error(`kalam-supervisor exited: ${cluster.log()}`);
        const r = await fetch(`${cluster.url}/v1/api/healthcheck`).catch(() => undefined);
        return r?.ok === true;
      }, 180_000);
      for (const name of ['kalamd', 'kalam-flushd', 'kalam-lived']) await cluster.pid(name);
    } catch (e) {
      await cluster.stop();
      throw e;
    }
    return cluster;
  }

  constructor(dir, port, child) {
    this.dir = dir;
    this.port = port;
    this.child = child;
    this.url = `http://127.0.0.1:${port}`;
  }

  log() {
    try {
      return readFileSync(join(this.dir, 'supervisor.out'), 'utf8').slice(-4000);
    } catch {
      return '';
    }
  }

  /** SQL as `system` through the loopback bypass (Node's fetch sends no Origin). */
  async sql(sql, params) {
    const r = await fetch(`${this.url}/v1/api/sql`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(params ? { sql, params } : { sql }),
    });
    const body = await r.json();
    if (body.status !== 'success') throw new Error(`${sql}: ${JSON.stringify(body.error)}`);
    return body;
  }

  /** Creates a user with role `user` and returns its API key. */
  async createUser(name) {
    const body = await this.sql(`CREATE USER '${name}' WITH ROLE user`);
    return body.results[0].rows[0].apikey;
  }

  async processes() {
    const { stdout } = await promisify(execFile)(join(binDir(), 'kalam'), [
      '--json', 'admin', '--data-dir', join(this.dir, 'data'), 'processes',
    ]);
    return JSON.parse(stdout);
  }

  /** Waits until `name` runs with a pid other than `other`; returns the pid. */
  async pid(name, other) {
    return waitFor(`${name} running`, async () => {
      const procs = await this.processes().catch(() => []);
      const p = procs.find((p) => p.name === name);
      return p && p.state === 'running' && p.pid && p.pid !== other ? p.pid : undefined;
    }, 60_000);
  }

  /** SIGKILLs a daemon and waits until the supervisor has restarted it. */
  async killAndWaitRestart(name) {
    const old = await this.pid(name);
    process.kill(old, 'SIGKILL');
    return this.pid(name, old);
  }

  async stop() {
    if (this.child.exitCode === null) {
      const exited = new Promise((r) => this.child.once('exit', r));
      this.child.kill('SIGTERM');
      const timer = setTimeout(() => this.child.kill('SIGKILL'), 30_000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Collects a subscription's events and waits for the ones a test expects. */
export class Events {
  constructor() {
    this.all = [];
    this.waiters = [];
  }

  push = (event) => {
    this.all.push(event);
    for (const w of [...this.waiters]) w();
  };

  /** Resolves with the first event (after `from`) matching `pred`. */
  next(what, pred, { from = 0, timeoutMs = 20_000 } = {}) {
    return new Promise((ok, fail) => {
      const check = () => {
        const i = this.all.findIndex((e, k) => k >= from && pred(e));
        if (i < 0) return;
        clearTimeout(timer);
        this.waiters = this.waiters.filter((w) => w !== check);
        ok(this.all[i]);
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== check);
        fail(new Error(`timed out waiting for ${what}; events: ${JSON.stringify(this.all.slice(-10))}`));
      }, timeoutMs);
      this.waiters.push(check);
      check();
    });
  }
}
