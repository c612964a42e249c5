import { execaSync, execa, type ResultPromise } from 'execa';
import { access, mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  QmpClient,
  QmpClosedError,
  QmpError,
  QmpProtocolError,
  QmpTimeoutError,
  listenQmp,
  type QmpEvent,
  type QmpGreeting,
} from './qmp.js';

// Everything a test creates is torn down here, pass or fail, in reverse order.
const cleanups: (() => Promise<void> | void)[] = [];
const tempDirs: string[] = [];

afterEach(async () => {
  const errors: unknown[] = [];
  for (const fn of cleanups.splice(0).reverse()) {
    try {
      await fn();
    } catch (err) {
      errors.push(err);
    }
  }
  for (const dir of tempDirs.splice(0)) {
    await rm(dir, { recursive: true, force: true });
    await expect(access(dir)).rejects.toThrow(/ENOENT/);
  }
  if (errors.length) throw new AggregateError(errors, 'cleanup failed');
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'kvmprop-qmp-'));
  tempDirs.push(dir);
  return dir;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: still pending after ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

const GREETING: QmpGreeting = {
  QMP: { version: { qemu: { major: 7, minor: 2, micro: 22 }, package: 'fake' }, capabilities: ['oob'] },
};

type Json = Record<string, unknown>;

/** The QEMU end of a connection: reads the client's commands and writes whatever the test says. */
class FakeQemu {
  #buffer = '';
  readonly #queue: Json[] = [];
  #wake: (() => void) | undefined;
  readonly closed: Promise<void>;

  constructor(readonly socket: net.Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.#buffer += chunk;
      let nl: number;
      while ((nl = this.#buffer.indexOf('\n')) !== -1) {
        const line = this.#buffer.slice(0, nl);
        this.#buffer = this.#buffer.slice(nl + 1);
        expect(line.endsWith('\r'), 'client terminates commands with \\r\\n').toBe(true);
        this.#queue.push(JSON.parse(line) as Json);
        this.#wake?.();
      }
    });
    socket.on('error', () => {});
    this.closed = new Promise((r) => socket.once('close', () => r()));
  }

  /** The next command the client sent. */
  async next(): Promise<Json> {
    while (this.#queue.length === 0) {
      await withTimeout(new Promise<void>((r) => (this.#wake = r)), 2000, 'waiting for a client command');
    }
    return this.#queue.shift()!;
  }

  send(...messages: (object | string)[]): void {
    this.socket.write(messages.map((m) => (typeof m === 'string' ? m : `${JSON.stringify(m)}\r\n`)).join(''));
  }

  async reply(value: unknown, command?: string): Promise<Json> {
    const cmd = await this.next();
    if (command) expect(cmd['execute']).toBe(command);
    this.send({ return: value, id: cmd['id'] });
    return cmd;
  }
}

/** A fake QEMU listening on a unix socket in a fresh temp dir (the `-qmp unix:...,server=on` case). */
async function fakeServer(): Promise<{ path: string; nextPeer(): Promise<FakeQemu> }> {
  const path = join(await tempDir(), 'qmp.sock');
  const server = net.createServer();
  const peers: net.Socket[] = [];
  server.on('connection', (s) => peers.push(s));
  await new Promise<void>((r) => server.listen(path, r));
  cleanups.push(async () => {
    for (const s of peers) s.destroy();
    await new Promise((r) => server.close(r));
  });
  return {
    path,
    async nextPeer() {
      while (peers.length === 0) await sleep(5);
      return new FakeQemu(peers.shift()!);
    },
  };
}

/** A client that has completed the handshake with a fake peer. */
async function connected(): Promise<{ client: QmpClient; peer: FakeQemu }> {
  const server = await fakeServer();
  const clientP = QmpClient.connect(server.path, { timeoutMs: 2000 });
  const peer = await server.nextPeer();
  peer.send(GREETING);
  await peer.reply({}, 'qmp_capabilities');
  const client = await clientP;
  cleanups.push(() => client.close());
  return { client, peer };
}

const event = (name: string, data?: Json): Json => ({
  event: name,
  ...(data ? { data } : {}),
  timestamp: { seconds: 1700000000, microseconds: 42 },
});

describe('QmpClient framing (fake peer)', () => {
  it('reads the greeting and negotiates capabilities', async () => {
    const server = await fakeServer();
    const clientP = QmpClient.connect(server.path, { timeoutMs: 2000 });
    const peer = await server.nextPeer();
    peer.send(GREETING);
    const caps = await peer.next();
    expect(caps).toEqual({ execute: 'qmp_capabilities', id: expect.any(String) });
    peer.send({ return: {}, id: caps['id'] });
    const client = await clientP;
    cleanups.push(() => client.close());
    expect(client.greeting).toEqual(GREETING);
    expect(client.closed).toBe(false);
  });

  it('handshake() wraps an already-connected socket', async () => {
    const server = await fakeServer();
    const socket = net.createConnection(server.path);
    await new Promise((r) => socket.once('connect', r));
    const peer = await server.nextPeer();
    const clientP = QmpClient.handshake(socket, { timeoutMs: 2000 });
    peer.send(GREETING);
    await peer.reply({}, 'qmp_capabilities');
    const client = await clientP;
    cleanups.push(() => client.close());
    expect(client.greeting.QMP.version.qemu.major).toBe(7);
  });

  it('times out a peer that never greets, and closes the socket', async () => {
    const server = await fakeServer();
    const clientP = QmpClient.connect(server.path, { timeoutMs: 150 });
    const peer = await server.nextPeer();
    await expect(clientP).rejects.toBeInstanceOf(QmpTimeoutError);
    await withTimeout(peer.closed, 2000, 'socket close after handshake timeout');
  });

  it('rejects a first message that is not a greeting', async () => {
    const server = await fakeServer();
    const clientP = QmpClient.connect(server.path, { timeoutMs: 2000 });
    const peer = await server.nextPeer();
    peer.send({ return: {} });
    await expect(clientP).rejects.toThrow(/expected a QMP greeting/);
  });

  it('connect() gives up with QmpTimeoutError when nobody listens', async () => {
    const path = join(await tempDir(), 'absent.sock');
    const started = Date.now();
    await expect(QmpClient.connect(path, { timeoutMs: 200 })).rejects.toBeInstanceOf(QmpTimeoutError);
    expect(Date.now() - started).toBeLessThan(2000);
  });

  it('reassembles a reply split across chunks, including inside a UTF-8 character', async () => {
    const { client, peer } = await connected();
    const resultP = client.execute<{ name: string }>('query-name');
    const cmd = await peer.next();
    const bytes = Buffer.from(`${JSON.stringify({ return: { name: 'vm-é✓' }, id: cmd['id'] })}\r\n`);
    const cut = bytes.indexOf(Buffer.from('✓')) + 1; // mid-character
    for (const piece of [bytes.subarray(0, 5), bytes.subarray(5, cut), bytes.subarray(cut, bytes.length - 1), bytes.subarray(bytes.length - 1)]) {
      peer.socket.write(piece);
      await sleep(15); // separate writes in time so they arrive as separate reads
    }
    await expect(resultP).resolves.toEqual({ name: 'vm-é✓' });
  });

  it('handles several messages in one chunk and matches replies by id, not order', async () => {
    const { client, peer } = await connected();
    const a = client.execute('query-a');
    const b = client.execute('query-b', { x: 1 });
    const ca = await peer.next();
    const cb = await peer.next();
    expect(cb).toEqual({ execute: 'query-b', arguments: { x: 1 }, id: expect.any(String) });
    expect(ca['id']).not.toBe(cb['id']);
    peer.send({ return: 'B', id: cb['id'] }, { return: 'A', id: ca['id'] });
    await expect(a).resolves.toBe('A');
    await expect(b).resolves.toBe('B');
  });

  it('delivers events interleaved with replies, in order', async () => {
    const { client, peer } = await connected();
    const seen: QmpEvent[] = [];
    const unsubscribe = client.onEvent((e) => seen.push(e));
    const status = client.execute('query-status');
    const cmd = await peer.next();
    peer.send(event('STOP'), { return: { status: 'paused' }, id: cmd['id'] }, event('RESUME'));
    await expect(status).resolves.toEqual({ status: 'paused' });
    await client.waitForEvent('RESUME', { timeoutMs: 1000 });
    expect(seen.map((e) => e.event)).toEqual(['STOP', 'RESUME']);
    expect(seen[0]).toEqual({ event: 'STOP', timestamp: { seconds: 1700000000, microseconds: 42 } });

    unsubscribe();
    peer.send(event('POWERDOWN', { why: 'test' }));
    await client.waitForEvent('POWERDOWN', { timeoutMs: 1000 });
    expect(seen).toHaveLength(2);
    expect(client.events.map((e) => e.event)).toEqual(['STOP', 'RESUME', 'POWERDOWN']);
    expect(client.events[2]?.data).toEqual({ why: 'test' });
  });

  it('turns error replies into QmpError with class, desc and command', async () => {
    const { client, peer } = await connected();
    const p = client.execute('device_del', { id: 'nope' });
    const cmd = await peer.next();
    peer.send({ error: { class: 'DeviceNotFound', desc: "Device 'nope' not found" }, id: cmd['id'] });
    const err = await p.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpError);
    expect(err).toMatchObject({ errorClass: 'DeviceNotFound', desc: "Device 'nope' not found", command: 'device_del' });
    expect(client.closed).toBe(false);
  });

  it('hmp() sends human-monitor-command and returns its text', async () => {
    const { client, peer } = await connected();
    const p = client.hmp('info version');
    const cmd = await peer.reply('7.2.22\r\n');
    expect(cmd).toMatchObject({ execute: 'human-monitor-command', arguments: { 'command-line': 'info version' } });
    await expect(p).resolves.toBe('7.2.22\r\n');
  });

  it('times out a command, ignores its late reply, and stays usable', async () => {
    const { client, peer } = await connected();
    const started = Date.now();
    const err = await client.execute('query-slow', undefined, { timeoutMs: 100 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpTimeoutError);
    expect((err as QmpTimeoutError).command).toBe('query-slow');
    expect(Date.now() - started).toBeLessThan(2000);

    const slow = await peer.next();
    peer.send({ return: 'late', id: slow['id'] });
    const next = client.execute('query-fast');
    await peer.reply('fast', 'query-fast');
    await expect(next).resolves.toBe('fast');
    expect(client.closed).toBe(false);
  });

  it('rejects pending commands with QmpClosedError when the peer closes mid-command', async () => {
    const { client, peer } = await connected();
    const closeReasons: (Error | undefined)[] = [];
    client.onClose((err) => closeReasons.push(err));
    const p = client.execute('query-status');
    await peer.next();
    peer.socket.end();
    await expect(p).rejects.toBeInstanceOf(QmpClosedError);
    expect(client.closed).toBe(true);
    expect(closeReasons).toEqual([undefined]); // a clean EOF is not an error
    await expect(client.execute('query-status')).rejects.toBeInstanceOf(QmpClosedError);
    const late = await new Promise<Error | undefined>((r) => client.onClose(r));
    expect(late).toBeUndefined();
  });

  it('close() rejects pending commands and is idempotent', async () => {
    const { client, peer } = await connected();
    const p = client.execute('query-status');
    await peer.next();
    client.close();
    client.close();
    await expect(p).rejects.toBeInstanceOf(QmpClosedError);
    await withTimeout(peer.closed, 2000, 'peer sees the close');
  });

  it('treats malformed JSON as a protocol error: rejects pending commands and closes', async () => {
    const { client, peer } = await connected();
    const closeReason = new Promise<Error | undefined>((r) => client.onClose(r));
    const p = client.execute('query-status');
    await peer.next();
    peer.send('{"return": {"status": \r\n');
    const err = await p.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpProtocolError);
    expect(err).toBeInstanceOf(QmpClosedError);
    expect((err as Error).message).toMatch(/malformed JSON/);
    expect(client.closed).toBe(true);
    expect(await closeReason).toBeInstanceOf(QmpProtocolError);
    await withTimeout(peer.closed, 2000, 'peer sees the close');
  });

  it.each([
    ['a non-object', '[1,2]\r\n'],
    ['an unknown message kind', '{"hello": 1}\r\n'],
    ['an event without a name', '{"event": 5}\r\n'],
  ])('treats %s as a protocol error', async (_, raw) => {
    const { client, peer } = await connected();
    const closeReason = new Promise<Error | undefined>((r) => client.onClose(r));
    peer.send(raw);
    expect(await withTimeout(closeReason, 2000, 'close')).toBeInstanceOf(QmpProtocolError);
  });

  it('waitForEvent finds a past event, a future event, and honours predicate and includePast', async () => {
    const { client, peer } = await connected();
    peer.send(event('BLOCK_JOB_COMPLETED', { device: 'a' }));
    await client.waitForEvent('BLOCK_JOB_COMPLETED', { timeoutMs: 1000, includePast: false });

    const past = await client.waitForEvent(['STOP', 'BLOCK_JOB_COMPLETED'], { timeoutMs: 1000 });
    expect(past.data).toEqual({ device: 'a' });

    const future = client.waitForEvent('BLOCK_JOB_COMPLETED', {
      timeoutMs: 1000,
      predicate: (e) => e.data?.['device'] === 'b',
    });
    const notPast = client.waitForEvent('BLOCK_JOB_COMPLETED', { timeoutMs: 1000, includePast: false });
    peer.send(event('BLOCK_JOB_COMPLETED', { device: 'c' }), event('BLOCK_JOB_COMPLETED', { device: 'b' }));
    expect((await future).data).toEqual({ device: 'b' });
    expect((await notPast).data).toEqual({ device: 'c' });
  });

  it('waitForEvent rejects on timeout and on close', async () => {
    const { client } = await connected();
    await expect(client.waitForEvent('NEVER', { timeoutMs: 50 })).rejects.toBeInstanceOf(QmpTimeoutError);
    const pending = client.waitForEvent('NEVER', { timeoutMs: 5000 });
    client.close();
    await expect(pending).rejects.toBeInstanceOf(QmpClosedError);
    await expect(client.waitForEvent('NEVER', { timeoutMs: 5000 })).rejects.toBeInstanceOf(QmpClosedError);
  });
});

describe('listenQmp (fake QEMU connecting to us)', () => {
  it('accepts one connection, handshakes, and removes its socket file on close', async () => {
    const path = join(await tempDir(), 'qmp.sock');
    const listener = await listenQmp(path);
    cleanups.push(() => listener.close());
    expect(listener.path).toBe(path);
    await access(path);

    const acceptP = listener.accept({ timeoutMs: 2000 });
    const socket = net.createConnection(path);
    cleanups.push(() => void socket.destroy());
    const peer = new FakeQemu(socket);
    peer.send(GREETING);
    await peer.reply({}, 'qmp_capabilities');
    const client = await acceptP;
    cleanups.push(() => client.close());

    const second = net.createConnection(path);
    second.on('error', () => {});
    cleanups.push(() => void second.destroy());
    await withTimeout(new Promise((r) => second.once('close', r)), 2000, 'a second connection is refused');

    const p = client.execute('query-version');
    await peer.reply({ qemu: { major: 7, minor: 2, micro: 22 }, package: 'fake' });
    await expect(p).resolves.toMatchObject({ qemu: { major: 7 } });

    await listener.close();
    await expect(access(path)).rejects.toThrow(/ENOENT/);
    expect(client.closed).toBe(false);
  });

  it('accept() times out when nobody connects; close() then cleans up', async () => {
    const path = join(await tempDir(), 'qmp.sock');
    const listener = await listenQmp(path);
    cleanups.push(() => listener.close());
    await expect(listener.accept({ timeoutMs: 100 })).rejects.toBeInstanceOf(QmpTimeoutError);
    await listener.close();
    await expect(access(path)).rejects.toThrow(/ENOENT/);
  });

  it('close() fails a pending accept()', async () => {
    const listener = await listenQmp(join(await tempDir(), 'qmp.sock'));
    const rejected = expect(listener.accept({ timeoutMs: 5000 })).rejects.toBeInstanceOf(QmpClosedError);
    await listener.close();
    await rejected;
  });
});

const QEMU = 'qemu-system-x86_64';
const haveQemu = execaSync(QEMU, ['--version'], { reject: false }).exitCode === 0;

describe.skipIf(!haveQemu)('QmpClient against real QEMU', () => {
  const BASE_ARGS = ['-M', 'none', '-nodefaults', '-no-user-config', '-display', 'none'];
  const OPTIONS = { reject: false, stdin: 'ignore', forceKillAfterDelay: 2000 } as const;
  type Qemu = ResultPromise<typeof OPTIONS>;

  function spawnQemu(args: string[]): Qemu {
    const proc = execa(QEMU, [...BASE_ARGS, ...args], OPTIONS);
    cleanups.push(async () => {
      proc.kill('SIGKILL');
      await proc;
    });
    return proc;
  }

  /** quit → the SHUTDOWN event (or the connection dropping first) → QEMU exits 0. */
  async function quitAndReap(client: QmpClient, proc: Qemu): Promise<void> {
    const shutdown = client
      .waitForEvent('SHUTDOWN', { timeoutMs: 10_000, includePast: false })
      .catch((err: unknown) => (err instanceof QmpClosedError ? undefined : Promise.reject(err)));
    await client.execute('quit');
    const e = await shutdown;
    if (e) expect(e.data).toMatchObject({ guest: false, reason: 'host-qmp-quit' });
    await withTimeout(new Promise<void>((r) => client.onClose(() => r())), 10_000, 'QMP connection close after quit');
    const result = await withTimeout(proc, 10_000, 'QEMU exit after quit');
    expect(result.exitCode, result.stderr).toBe(0);
  }

  it('QEMU connects to listenQmp (-chardev socket + -mon mode=control)', async () => {
    const dir = await tempDir();
    const sock = join(dir, 'qmp.sock');
    const listener = await listenQmp(sock);
    cleanups.push(() => listener.close());
    const proc = spawnQemu(['-chardev', `socket,id=qmp,path=${sock}`, '-mon', 'chardev=qmp,mode=control']);

    const client = await listener.accept({ timeoutMs: 10_000 });
    cleanups.push(() => client.close());
    await listener.close();

    const version = await client.execute<{ qemu: { major: number; minor: number; micro: number }; package: string }>('query-version');
    expect(version.qemu.major).toBeGreaterThanOrEqual(7);
    expect(client.greeting.QMP.version.qemu).toEqual(version.qemu);
    const text = await client.hmp('info version');
    expect(text).toMatch(/\d+\.\d+\.\d+/);

    await quitAndReap(client, proc);
    await rm(dir, { recursive: true, force: true });
    await expect(access(dir)).rejects.toThrow(/ENOENT/);
  });

  it('QmpClient.connect to QEMU as the server (-qmp unix:...,server=on,wait=off)', async () => {
    const dir = await tempDir();
    const sock = join(dir, 'qmp.sock');
    const proc = spawnQemu(['-qmp', `unix:${sock},server=on,wait=off`]);

    const client = await QmpClient.connect(sock, { timeoutMs: 10_000 });
    cleanups.push(() => client.close());
    const status = await client.execute<{ status: string; running: boolean }>('query-status');
    expect(typeof status.status).toBe('string');
    await expect(client.execute('no-such-command')).rejects.toMatchObject({ errorClass: 'CommandNotFound' });

    await quitAndReap(client, proc);
    await rm(dir, { recursive: true, force: true });
    await expect(access(dir)).rejects.toThrow(/ENOENT/);
  });
});
