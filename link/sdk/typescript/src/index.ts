/**
 * @kalamdb/kalam-link — the KalamDB client for browsers and Node.js.
 *
 * A thin, typed layer over kalam-link compiled to WebAssembly: HTTP queries, and live
 * subscriptions that reconnect and resume by themselves, so every change reaches the
 * callback once. Values arrive as JSON; integers JavaScript cannot hold exactly (beyond
 * ±(2^53 − 1), such as SNOWFLAKE_ID keys) arrive as decimal strings.
 */
import initWasm, { WasmClient } from '../wasm/kalam_link.js';

/** What `init` accepts in a browser: where the `.wasm` file is, or its bytes. */
export type InitInput = string | URL | Request | Response | BufferSource | WebAssembly.Module;

let ready: Promise<void> | undefined;

function nodeRuntime(): boolean {
  const proc = (globalThis as { process?: { versions?: { node?: string } } }).process;
  return typeof proc?.versions?.node === 'string';
}

/**
 * Loads the WebAssembly module. Called by every method, so calling it yourself is optional;
 * pass `input` to load the `.wasm` file from somewhere other than next to this package.
 */
export default function init(input?: InitInput): Promise<void> {
  ready ??= (async () => {
    if (input === undefined && nodeRuntime()) {
      // A computed specifier, so browser bundlers leave Node's module alone.
      const fsModule = 'node:fs/promises';
      const { readFile } = await import(/* @vite-ignore */ fsModule);
      input = await readFile(new URL('../wasm/kalam_link_bg.wasm', import.meta.url));
    }
    await initWasm(input === undefined ? undefined : { module_or_path: input });
  })();
  ready.catch(() => {
    ready = undefined;
  });
  return ready;
}

/** Options of a client. */
export interface ClientOptions {
  /** The server, e.g. `http://localhost:8080`. */
  url: string;
  /** An API key (`X-API-KEY`, `?api_key=` on the WebSocket). */
  apiKey?: string;
  /** A JWT (`Authorization: Bearer`, `?token=` on the WebSocket). */
  token?: string;
  /** The acting user (`X-USER-ID`), for service and admin principals. */
  userId?: string;
  /** Per-request timeout in milliseconds (default 30 000). */
  timeoutMs?: number;
  /** Reconnect back-off: 1 s doubling to 30 s by default, never giving up. */
  reconnect?: { initialDelayMs?: number; maxDelayMs?: number; maxAttempts?: number };
}

/** One statement's result. */
export interface QueryResult {
  columns: string[];
  /** Rows as objects, keys in column order. `[]` for statements without rows. */
  rows: Record<string, unknown>[];
  rowCount: number;
  tookMs: number;
  message?: string;
}

/** The server's envelope (api.md), as `queryRaw` returns it. */
export interface RawEnvelope {
  status: 'success' | 'error';
  results: { columns: string[]; rows?: Record<string, unknown>[]; row_count: number; message?: string }[];
  took_ms: number;
  error?: { code: string; message: string; details?: string | null; statement_index?: number | null };
}

/** What a subscription starts with. */
export interface SubscribeOptions {
  /** Default `sub-<uuid>`. */
  id?: string;
  /** Initial snapshot of the newest N rows. */
  lastRows?: number;
  /** Initial snapshot of the rows changed since this `_updated` timestamp. */
  since?: string;
  /** Initial snapshot of the rows whose primary key is greater than this. */
  fromId?: number | string;
}

/** Every event a subscription delivers. */
export type SubscriptionEvent =
  | { type: 'ack'; subscriptionId: string; liveId: string }
  | { type: 'initial_data'; subscriptionId: string; rows: Row[]; hasMore: boolean; seq?: number }
  | { type: 'insert'; subscriptionId: string; rows: Row[]; seq: number; timestamp?: string }
  | { type: 'update'; subscriptionId: string; rows: Row[]; oldRows: Row[]; seq: number; timestamp?: string }
  | { type: 'delete'; subscriptionId: string; oldRows: Row[]; seq: number; timestamp?: string }
  /** A server error for the subscription (`*`: about the connection), or `RECONNECT_FAILED`. */
  | { type: 'error'; subscriptionId: string; code: string; message: string }
  /** The connection was lost; the client reconnects after `retryInMs` and resumes. */
  | { type: 'reconnecting'; subscriptionId: string; attempt: number; retryInMs: number; reason: string }
  /** Live again after a reconnect, continuing after change `fromSeq`: nothing was missed. */
  | { type: 'resumed'; subscriptionId: string; fromSeq: number }
  /** The server no longer has the changes since the last one seen: a fresh snapshot follows. */
  | { type: 'resume_expired'; subscriptionId: string; message: string }
  | { type: 'unsubscribed'; subscriptionId: string; reason: string }
  /** A message of a newer server this client does not know. */
  | { type: 'unknown'; subscriptionId?: undefined; raw: unknown };

export type Row = Record<string, unknown>;

/** A live subscription. `String(sub)` is its id, so `client.unsubscribe(sub)` works too. */
export interface Subscription {
  readonly id: string;
  /** Ends it; the callback hears nothing more. */
  unsubscribe(): Promise<void>;
  toString(): string;
}

/** An error from the server (`code` is its error code) or from the client (`NETWORK_ERROR`,
 * `TIMEOUT`, `WEBSOCKET_ERROR`, `CONFIGURATION_ERROR`, `NOT_CONNECTED`, …). */
export interface KalamError extends Error {
  code: string;
  statusCode?: number;
}

const IDENT = /^[A-Za-z_][A-Za-z0-9_]*$/;

function clientError(message: string, code: string): KalamError {
  return Object.assign(new Error(message), { code });
}

function identifier(name: string, what: string): string {
  const parts = name.split('.');
  if (parts.length > 2 || !parts.every((p) => IDENT.test(p))) {
    throw clientError(`KalamLinkClient: invalid ${what} '${name}'`, 'CONFIGURATION_ERROR');
  }
  return name;
}

/** Parameters as JSON; a `bigint` is written as a JSON number, exactly. */
function paramsJson(params: unknown[] | undefined): string | undefined {
  if (params === undefined) return undefined;
  const marks: string[] = [];
  const text = JSON.stringify(params, (_k, v) => {
    if (typeof v !== 'bigint') return v;
    marks.push(v.toString());
    return `\u0000bigint${marks.length - 1}`;
  });
  return text.replace(/"\\u0000bigint(\d+)"/g, (_m, i: string) => marks[Number(i)]);
}

function looksLikeJwt(credential: string): boolean {
  return /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/.test(credential);
}

/** Every statement's result, from the envelope the core resolves to. */
function results(text: string): QueryResult[] {
  const envelope = JSON.parse(text) as RawEnvelope;
  return envelope.results.map((r) => ({
    columns: r.columns,
    rows: r.rows ?? [],
    rowCount: r.row_count,
    tookMs: envelope.took_ms,
    ...(r.message === undefined ? {} : { message: r.message }),
  }));
}

/**
 * A KalamDB client. Queries go over HTTP and need no `connect`; subscriptions share one
 * WebSocket, opened by `connect` and reopened after any drop until `disconnect`.
 */
export class KalamLinkClient {
  private options: ClientOptions;
  private core?: WasmClient;
  private statusListener?: (connected: boolean) => void;
  /** `subscribe` calls waiting for the server's answer, by subscription id. */
  private pending = new Map<string, (error?: Error) => void>();

  /** `new KalamLinkClient(url, apiKey?)` or `new KalamLinkClient({url, apiKey | token, userId, …})`. */
  constructor(urlOrOptions: string | ClientOptions, apiKey?: string) {
    const options = typeof urlOrOptions === 'string' ? { url: urlOrOptions, apiKey } : { ...urlOrOptions };
    if (typeof options.url !== 'string' || options.url.trim() === '') {
      throw clientError("KalamLinkClient: 'url' parameter is required and cannot be empty", 'CONFIGURATION_ERROR');
    }
    if (options.apiKey === undefined) delete options.apiKey;
    this.options = options;
  }

  private async wasm(needsCredential = true): Promise<WasmClient> {
    await init();
    if (needsCredential && !this.options.apiKey && !this.options.token) {
      throw clientError('KalamLinkClient: an API key or token is required', 'CONFIGURATION_ERROR');
    }
    if (!this.core) {
      this.core = new WasmClient(JSON.stringify(this.options));
      if (this.statusListener) this.core.onConnectionChange(this.statusListener);
    }
    return this.core;
  }

  /**
   * Opens the WebSocket and resolves once it is open; rejects with the server's reason when
   * the credentials are refused. `userId` and `credential`, when given, replace the acting user
   * and credential (with `auth: 'auto'`, a credential shaped like a JWT is sent as one).
   */
  async connect(userId?: string, credential?: string, options?: { auth?: 'auto' | 'apikey' | 'jwt' }): Promise<void> {
    if (userId !== undefined || credential !== undefined) {
      const next: ClientOptions = { ...this.options };
      if (userId !== undefined) next.userId = userId;
      if (credential !== undefined) {
        const auth = options?.auth ?? 'auto';
        const jwt = auth === 'jwt' || (auth === 'auto' && looksLikeJwt(credential));
        delete next.apiKey;
        delete next.token;
        if (jwt) next.token = credential;
        else next.apiKey = credential;
      }
      const same = next.userId === this.options.userId && next.apiKey === this.options.apiKey &&
        next.token === this.options.token;
      if (!same) {
        this.abandonPending('the client was reconnected with other credentials');
        this.core?.disconnect();
        this.core?.free();
        this.core = undefined;
        this.options = next;
      }
    }
    await (await this.wasm()).connect();
  }

  /** Ends every subscription and closes the WebSocket. `connect` may be called again. */
  async disconnect(): Promise<void> {
    this.abandonPending('disconnect() was called');
    this.core?.disconnect();
  }

  private abandonPending(reason: string): void {
    for (const settle of [...this.pending.values()]) settle(clientError(reason, 'NOT_CONNECTED'));
  }

  /** True while the WebSocket is open. */
  isConnected(): boolean {
    return this.core?.isConnected() ?? false;
  }

  /** `listener(true | false)` whenever the WebSocket opens or closes (reconnects included). */
  onConnectionChange(listener: ((connected: boolean) => void) | undefined): void {
    this.statusListener = listener;
    this.core?.onConnectionChange(listener ?? null);
  }

  /** Runs SQL (`$1`, `$2` … are `params`) and resolves to the last statement's result. */
  async query(sql: string, params?: unknown[]): Promise<QueryResult> {
    const all = results(await (await this.wasm()).query(sql, paramsJson(params)));
    return all[all.length - 1] ?? { columns: [], rows: [], rowCount: 0, tookMs: 0 };
  }

  /** Runs SQL and resolves to every statement's result. */
  async queryAll(sql: string, params?: unknown[]): Promise<QueryResult[]> {
    return results(await (await this.wasm()).query(sql, paramsJson(params)));
  }

  /** Runs statements in one request, in order, stopping at the first failure. */
  async batch(statements: string[]): Promise<QueryResult[]> {
    return results(await (await this.wasm()).batch(JSON.stringify(statements)));
  }

  /** The server's whole envelope, also for a failed statement (no rejection). */
  async queryRaw(sql: string, params?: unknown[]): Promise<RawEnvelope> {
    return JSON.parse(await (await this.wasm()).queryRaw(sql, paramsJson(params)));
  }

  /** `INSERT INTO table (keys…) VALUES ($1…)`: values are parameters, never SQL text. */
  async insert(table: string, row: Record<string, unknown>): Promise<QueryResult> {
    // An `undefined` value leaves the column to its default, as if it were not there.
    const entries = Object.entries(row).filter(([, v]) => v !== undefined);
    if (entries.length === 0) throw clientError('KalamLinkClient: insert needs at least one column', 'CONFIGURATION_ERROR');
    const columns = entries.map(([k]) => identifier(k, 'column')).join(', ');
    const slots = entries.map((_, i) => `$${i + 1}`).join(', ');
    const values = entries.map(([, v]) => v);
    return this.query(`INSERT INTO ${identifier(table, 'table')} (${columns}) VALUES (${slots})`, values);
  }

  /** `DELETE FROM table WHERE pkColumn = $1` (`pkColumn` defaults to `id`). */
  async delete(table: string, id: number | string | bigint, options?: { pkColumn?: string }): Promise<QueryResult> {
    const pk = identifier(options?.pkColumn ?? 'id', 'column');
    return this.query(`DELETE FROM ${identifier(table, 'table')} WHERE ${pk} = $1`, [id]);
  }

  /**
   * Starts a live query and resolves once the server accepted it (rejects when it refuses:
   * bad SQL, permissions, limits). `sqlOrTable` without whitespace is a table name. Every
   * event reaches `onEvent`, including the snapshot and errors; after a dropped connection the
   * subscription resumes after the last change delivered. Both argument orders work:
   * `subscribe(sql, onEvent, options?)` and `subscribe(sql, options, onEvent)`.
   */
  async subscribe(
    sqlOrTable: string,
    second: ((event: SubscriptionEvent) => void) | SubscribeOptions | undefined,
    third?: ((event: SubscriptionEvent) => void) | SubscribeOptions,
  ): Promise<Subscription> {
    const onEvent = (typeof second === 'function' ? second : third) as (event: SubscriptionEvent) => void;
    const options = ((typeof second === 'function' ? third : second) ?? {}) as SubscribeOptions;
    if (typeof onEvent !== 'function') {
      throw clientError('KalamLinkClient: subscribe needs an event callback', 'CONFIGURATION_ERROR');
    }
    const core = await this.wasm();
    const sql = /\s/.test(sqlOrTable.trim()) ? sqlOrTable : `SELECT * FROM ${identifier(sqlOrTable.trim(), 'table')}`;
    const { id, ...snapshot } = options;
    let subscriptionId = '';
    let settle: ((error?: Error) => void) | undefined;
    const accepted = new Promise<void>((resolve, reject) => {
      settle = (error) => {
        settle = undefined;
        this.pending.delete(subscriptionId);
        if (error) reject(error);
        else resolve();
      };
    });
    subscriptionId = core.subscribe(id, sql, JSON.stringify(snapshot), (text: string) => {
      const event = JSON.parse(text) as SubscriptionEvent;
      if (settle && event.type === 'ack') settle();
      else if (settle && event.type === 'error' && event.subscriptionId !== '*') {
        settle(Object.assign(new Error(event.message), { code: event.code }));
      } else if (settle && event.type === 'unsubscribed') {
        settle(clientError(`the subscription ended before it started (${event.reason})`, 'UNSUBSCRIBED'));
      }
      onEvent(event);
    });
    if (settle) this.pending.set(subscriptionId, settle);
    await accepted;
    return {
      id: subscriptionId,
      unsubscribe: () => this.unsubscribe(subscriptionId),
      toString: () => subscriptionId,
    };
  }

  /** Ends a subscription (by id or handle); a `subscribe` still waiting for it rejects. */
  async unsubscribe(subscription: string | Subscription): Promise<void> {
    const id = String(subscription);
    this.pending.get(id)?.(clientError('unsubscribe() was called', 'UNSUBSCRIBED'));
    this.core?.unsubscribe(id);
  }

  /** `GET /v1/api/healthcheck`. */
  async health(): Promise<{ status: string; version?: string; api_version?: string; uptime_seconds?: number }> {
    return JSON.parse(await (await this.wasm(false)).health());
  }
}

export { KalamLinkClient as KalamClient };
