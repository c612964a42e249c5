/**
 * A small QMP (QEMU Machine Protocol) client on node:net.
 *
 * Wire format: JSON objects terminated by "\r\n". JSON text never contains a raw newline, so splitting
 * the stream on "\n" is exact no matter how the kernel chunks it. Replies are matched to commands by
 * an `id` we attach (QEMU echoes it), because async events can arrive between and around replies.
 *
 * Every wait has a deadline: a wedged QEMU must surface as a QmpTimeoutError, never as a hung test.
 */
import { rm } from 'node:fs/promises';
import net from 'node:net';

const DEFAULT_TIMEOUT_MS = 10_000;
/** A peer that never sends a newline would otherwise grow our buffer without bound. */
const MAX_LINE_CHARS = 64 * 1024 * 1024;
/** sockaddr_un.sun_path is 108 bytes including the NUL; Linux would otherwise fail with a vague error. */
const MAX_UNIX_PATH_BYTES = 107;
const CONNECT_RETRY_MS = 50;

/** QEMU answered a command with {"error": {...}}. */
export class QmpError extends Error {
  override readonly name = 'QmpError';
  constructor(
    readonly command: string,
    readonly errorClass: string,
    readonly desc: string,
  ) {
    super(`QMP command "${command}" failed: ${errorClass}: ${desc}`);
  }
}

/** No reply (or event, or connection) within the deadline. `command` is set for command timeouts. */
export class QmpTimeoutError extends Error {
  override readonly name = 'QmpTimeoutError';
  constructor(
    message: string,
    readonly command?: string,
  ) {
    super(message);
  }
}

/** The connection is gone (closed locally, by the peer, or after a protocol violation). */
export class QmpClosedError extends Error {
  override readonly name: string = 'QmpClosedError';
}

/**
 * The peer broke the protocol (malformed JSON, an unexpected message shape). The connection is closed
 * when this happens, so it is also a QmpClosedError: callers that only care "is it gone" need one check.
 */
export class QmpProtocolError extends QmpClosedError {
  override readonly name = 'QmpProtocolError';
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export interface QmpGreeting {
  QMP: {
    version: { qemu: { major: number; minor: number; micro: number }; package: string };
    capabilities: string[];
  };
}

export interface QmpTimeoutOptions {
  timeoutMs?: number;
}

export interface WaitForEventOptions {
  timeoutMs: number;
  predicate?: (e: QmpEvent) => boolean;
  /** Also match events received before this call (default true). */
  includePast?: boolean;
}

type JsonObject = Record<string, unknown>;

function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isGreeting(v: JsonObject): v is JsonObject & QmpGreeting {
  const qmp = v['QMP'];
  if (!isObject(qmp) || !isObject(qmp['version']) || !Array.isArray(qmp['capabilities'])) return false;
  const qemu = qmp['version']['qemu'];
  return (
    isObject(qemu) &&
    typeof qemu['major'] === 'number' &&
    typeof qemu['minor'] === 'number' &&
    typeof qemu['micro'] === 'number' &&
    typeof qmp['version']['package'] === 'string' &&
    qmp['capabilities'].every((c) => typeof c === 'string')
  );
}

/** Validates and copies an event so listeners never see (or keep alive) anything but the documented shape. */
function toEvent(msg: JsonObject): QmpEvent | undefined {
  const { event, data, timestamp } = msg;
  if (typeof event !== 'string') return undefined;
  if (data !== undefined && !isObject(data)) return undefined;
  const e: QmpEvent = { event };
  if (data !== undefined) e.data = data;
  if (timestamp !== undefined) {
    if (!isObject(timestamp) || typeof timestamp['seconds'] !== 'number' || typeof timestamp['microseconds'] !== 'number') {
      return undefined;
    }
    e.timestamp = { seconds: timestamp['seconds'], microseconds: timestamp['microseconds'] };
  }
  return e;
}

function excerpt(line: string): string {
  return JSON.stringify(line.length > 200 ? `${line.slice(0, 200)}…` : line);
}

/** A listener's bug must not derail the parser mid-chunk, yet must not be swallowed either. */
function callSafely<A>(fn: (arg: A) => void, arg: A): void {
  try {
    fn(arg);
  } catch (err) {
    queueMicrotask(() => {
      throw err;
    });
  }
}

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

export class QmpClient {
  /** Wrap an already-connected socket: read the greeting, send qmp_capabilities, resolve when ready. */
  static async handshake(socket: net.Socket, opts: QmpTimeoutOptions = {}): Promise<QmpClient> {
    if (socket.destroyed) throw new QmpClosedError('QMP handshake: socket is already closed');
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const deadline = Date.now() + timeoutMs;
    const client = new QmpClient(socket);
    try {
      await client.#greetingReceived(timeoutMs);
      await client.execute('qmp_capabilities', undefined, { timeoutMs: Math.max(1, deadline - Date.now()) });
      return client;
    } catch (err) {
      client.close();
      throw err;
    }
  }

  /**
   * Connect to a QEMU listening on a unix socket (QEMU started with -qmp unix:PATH,server=on,wait=off).
   * The socket appears some time after QEMU is spawned, so ENOENT/ECONNREFUSED are retried until timeoutMs.
   */
  static async connect(path: string, opts: QmpTimeoutOptions = {}): Promise<QmpClient> {
    checkUnixPath(path);
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const result = await tryConnect(path);
      if (result instanceof net.Socket) {
        return QmpClient.handshake(result, { timeoutMs: Math.max(1, deadline - Date.now()) });
      }
      if (result.code !== 'ENOENT' && result.code !== 'ECONNREFUSED') throw result;
      if (Date.now() + CONNECT_RETRY_MS > deadline) {
        throw new QmpTimeoutError(`QMP connect to ${path}: not accepting connections after ${timeoutMs} ms (${result.code})`);
      }
      await new Promise((r) => setTimeout(r, CONNECT_RETRY_MS));
    }
  }

  readonly #socket: net.Socket;
  #greeting: QmpGreeting | undefined;
  #onGreeting: ((err?: Error) => void) | undefined;
  #buffer = '';
  #nextId = 1;
  readonly #pending = new Map<string, Pending>();
  readonly #events: QmpEvent[] = [];
  readonly #eventListeners = new Set<(e: QmpEvent) => void>();
  readonly #closeListeners = new Set<(err?: Error) => void>();
  #closed = false;
  #closeReason: Error | undefined;
  /** A socket 'error' is always followed by 'close'; remember it so 'close' can report why. */
  #socketError: Error | undefined;

  private constructor(socket: net.Socket) {
    this.#socket = socket;
    socket.setEncoding('utf8'); // reassembles multi-byte characters split across chunks
    socket.on('data', (chunk: string) => this.#onData(chunk));
    socket.on('error', (err) => {
      this.#socketError = err;
    });
    socket.on('close', () => {
      const err = this.#socketError;
      this.#shutdown(err && new QmpClosedError(`QMP connection error: ${err.message}`, { cause: err }));
    });
  }

  get greeting(): QmpGreeting {
    if (!this.#greeting) throw new Error('QMP greeting not received yet');
    return this.#greeting;
  }

  /** All events received so far, in order. */
  get events(): readonly QmpEvent[] {
    return this.#events;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** The return value is not validated: `T` is the caller's claim about the command's schema. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: QmpTimeoutOptions = {}): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.#closed) {
        reject(new QmpClosedError(`QMP command "${command}": connection is closed`, { cause: this.#closeReason }));
        return;
      }
      const id = `kvmprop-${this.#nextId++}`;
      let line: string;
      try {
        line = JSON.stringify(args === undefined ? { execute: command, id } : { execute: command, arguments: args, id });
      } catch (err) {
        reject(err instanceof Error ? err : new Error(String(err)));
        return;
      }
      const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
      const timer = setTimeout(() => {
        // A late reply for this id is dropped by #onReply; the connection itself stays usable.
        this.#pending.delete(id);
        reject(new QmpTimeoutError(`QMP command "${command}" got no reply within ${timeoutMs} ms`, command));
      }, timeoutMs);
      this.#pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      this.#socket.write(`${line}\r\n`);
    });
  }

  /** human-monitor-command; resolves with the HMP output text. */
  async hmp(commandLine: string, opts: QmpTimeoutOptions = {}): Promise<string> {
    const out = await this.execute('human-monitor-command', { 'command-line': commandLine }, opts);
    if (typeof out !== 'string') {
      throw new QmpProtocolError(`human-monitor-command "${commandLine}" returned ${typeof out}, expected a string`);
    }
    return out;
  }

  /** Subscribe to async events; returns an unsubscribe function. */
  onEvent(listener: (e: QmpEvent) => void): () => void {
    this.#eventListeners.add(listener);
    return () => void this.#eventListeners.delete(listener);
  }

  /**
   * Resolve with the first matching event (by default including ones already received); reject with
   * QmpTimeoutError after timeoutMs or QmpClosedError if the connection closes first.
   */
  waitForEvent(names: string | string[], opts: WaitForEventOptions): Promise<QmpEvent> {
    const wanted = new Set(typeof names === 'string' ? [names] : names);
    const matches = (e: QmpEvent): boolean => wanted.has(e.event) && (opts.predicate?.(e) ?? true);
    return new Promise<QmpEvent>((resolve, reject) => {
      try {
        const past = opts.includePast === false ? undefined : this.#events.find(matches);
        if (past) return resolve(past);
      } catch (err) {
        return reject(err);
      }
      const label = [...wanted].join('|');
      if (this.#closed) {
        return reject(new QmpClosedError(`waiting for QMP event ${label}: connection is closed`, { cause: this.#closeReason }));
      }
      const settle = (fn: () => void): void => {
        clearTimeout(timer);
        unsubEvent();
        unsubClose();
        fn();
      };
      const timer = setTimeout(
        () => settle(() => reject(new QmpTimeoutError(`QMP event ${label} not received within ${opts.timeoutMs} ms`))),
        opts.timeoutMs,
      );
      const unsubEvent = this.onEvent((e) => {
        let ok: boolean;
        try {
          ok = matches(e);
        } catch (err) {
          return settle(() => reject(err));
        }
        if (ok) settle(() => resolve(e));
      });
      const unsubClose = this.onClose((err) =>
        settle(() => reject(new QmpClosedError(`QMP connection closed while waiting for event ${label}`, { cause: err }))),
      );
    });
  }

  /**
   * Called once when the connection closes: with no argument after close() or a clean EOF from the
   * peer, with the reason otherwise. Subscribing after the fact still gets called (asynchronously).
   */
  onClose(listener: (err?: Error) => void): () => void {
    if (this.#closed) {
      const reason = this.#closeReason;
      queueMicrotask(() => listener(reason));
      return () => {};
    }
    this.#closeListeners.add(listener);
    return () => void this.#closeListeners.delete(listener);
  }

  /** Destroy the socket; pending commands reject with QmpClosedError. Idempotent. */
  close(): void {
    this.#shutdown(undefined);
  }

  #greetingReceived(timeoutMs: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (this.#greeting) return resolve();
      const timer = setTimeout(() => {
        this.#onGreeting = undefined;
        reject(new QmpTimeoutError(`QMP greeting not received within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#onGreeting = (err) => {
        clearTimeout(timer);
        this.#onGreeting = undefined;
        if (err) reject(err);
        else resolve();
      };
    });
  }

  #onData(chunk: string): void {
    this.#buffer += chunk;
    let nl: number;
    while (!this.#closed && (nl = this.#buffer.indexOf('\n')) !== -1) {
      const line = this.#buffer.slice(0, nl).trim();
      this.#buffer = this.#buffer.slice(nl + 1);
      if (line) this.#onLine(line);
    }
    if (!this.#closed && this.#buffer.length > MAX_LINE_CHARS) {
      this.#protocolError(`peer sent over ${MAX_LINE_CHARS} characters without a line break`);
    }
  }

  #onLine(line: string): void {
    let msg: unknown;
    try {
      msg = JSON.parse(line);
    } catch (err) {
      return this.#protocolError(`malformed JSON from peer: ${(err as Error).message}; line: ${excerpt(line)}`);
    }
    if (!isObject(msg)) return this.#protocolError(`peer sent a non-object: ${excerpt(line)}`);

    if (!this.#greeting) {
      if (!isGreeting(msg)) return this.#protocolError(`expected a QMP greeting, got ${excerpt(line)}`);
      this.#greeting = msg;
      this.#onGreeting?.();
      return;
    }
    if ('event' in msg) {
      const event = toEvent(msg);
      if (!event) return this.#protocolError(`malformed event: ${excerpt(line)}`);
      this.#events.push(event);
      for (const listener of [...this.#eventListeners]) callSafely(listener, event);
      return;
    }
    if ('return' in msg || 'error' in msg) return this.#onReply(msg, line);
    this.#protocolError(`unrecognised message: ${excerpt(line)}`);
  }

  #onReply(msg: JsonObject, line: string): void {
    // QEMU only omits the id when it could not parse the command at all: our own framing is broken.
    if (typeof msg['id'] !== 'string') return this.#protocolError(`reply without our id: ${excerpt(line)}`);
    const pending = this.#pending.get(msg['id']);
    if (!pending) return; // the command already timed out
    this.#pending.delete(msg['id']);
    clearTimeout(pending.timer);
    if ('return' in msg) return pending.resolve(msg['return']);
    const error = msg['error'];
    if (!isObject(error) || typeof error['class'] !== 'string' || typeof error['desc'] !== 'string') {
      return pending.reject(new QmpProtocolError(`malformed error reply to "${pending.command}": ${excerpt(line)}`));
    }
    pending.reject(new QmpError(pending.command, error['class'], error['desc']));
  }

  #protocolError(message: string): void {
    this.#shutdown(new QmpProtocolError(`QMP protocol error: ${message}`));
  }

  #shutdown(reason: Error | undefined): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeReason = reason;
    this.#socket.destroy();
    this.#onGreeting?.(reason ?? new QmpClosedError('QMP connection closed before the greeting'));
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.reject(
        reason instanceof QmpProtocolError
          ? reason
          : new QmpClosedError(`QMP connection closed while waiting for reply to "${p.command}"`, { cause: reason }),
      );
    }
    this.#pending.clear();
    const listeners = [...this.#closeListeners];
    this.#closeListeners.clear();
    this.#eventListeners.clear();
    for (const listener of listeners) callSafely(listener, reason);
  }
}

function checkUnixPath(path: string): void {
  if (Buffer.byteLength(path) > MAX_UNIX_PATH_BYTES) {
    throw new Error(`unix socket path is longer than ${MAX_UNIX_PATH_BYTES} bytes: ${path}`);
  }
}

function tryConnect(path: string): Promise<net.Socket | NodeJS.ErrnoException> {
  return new Promise((resolve) => {
    const socket = net.createConnection({ path });
    const onError = (err: NodeJS.ErrnoException): void => {
      socket.destroy();
      resolve(err);
    };
    socket.once('error', onError);
    socket.once('connect', () => {
      socket.off('error', onError);
      resolve(socket);
    });
  });
}

/**
 * Listens on a unix socket and accepts exactly one QMP connection: for QEMU started with
 * `-chardev socket,id=qmp,path=PATH -mon chardev=qmp,mode=control`, which connects to us.
 */
export interface QmpListener {
  readonly path: string;
  /** Wait for QEMU to connect, then do the QMP handshake. Callable once. */
  accept(opts?: QmpTimeoutOptions): Promise<QmpClient>;
  /** Stop listening and remove the socket file. An accepted client stays open. */
  close(): Promise<void>;
}

/**
 * The socket file is created at `path` exactly; the caller picks a private (0700) directory for it,
 * which is the only access control a unix socket gets. Never TCP: any local user could drive the VM.
 */
export async function listenQmp(path: string): Promise<QmpListener> {
  checkUnixPath(path);
  const server = net.createServer();
  let connection: net.Socket | undefined;
  let waiter: { resolve: (s: net.Socket) => void; reject: (err: Error) => void } | undefined;
  let accepting = false;
  let closed = false;

  server.on('connection', (socket) => {
    if (connection || closed) return void socket.destroy(); // exactly one peer, ever
    connection = socket;
    // Stop listening now: nobody else should be able to connect while the one QEMU is being served.
    server.close();
    waiter?.resolve(socket);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ path, exclusive: true }, () => {
      server.off('error', reject);
      resolve();
    });
  });

  return {
    path,
    accept(opts: QmpTimeoutOptions = {}): Promise<QmpClient> {
      if (accepting) return Promise.reject(new Error(`listenQmp(${path}): accept() may be called only once`));
      accepting = true;
      const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
      const deadline = Date.now() + timeoutMs;
      return new Promise<net.Socket>((resolve, reject) => {
        if (connection) return resolve(connection);
        if (closed) return reject(new QmpClosedError(`listenQmp(${path}): listener is closed`));
        const settle = (fn: () => void): void => {
          clearTimeout(timer);
          waiter = undefined;
          fn();
        };
        const timer = setTimeout(
          () => settle(() => reject(new QmpTimeoutError(`no QMP connection on ${path} within ${timeoutMs} ms`))),
          timeoutMs,
        );
        waiter = {
          resolve: (socket) => settle(() => resolve(socket)),
          reject: (err) => settle(() => reject(err)),
        };
      }).then((socket) => QmpClient.handshake(socket, { timeoutMs: Math.max(1, deadline - Date.now()) }));
    },
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      waiter?.reject(new QmpClosedError(`listenQmp(${path}): listener closed before QEMU connected`));
      // A connection nobody accept()ed has no owner to close it.
      if (connection && !accepting) connection.destroy();
      // server.close()'s callback waits for accepted connections to end, so don't wait on it.
      if (server.listening) server.close();
      await rm(path, { force: true });
    },
  };
}
