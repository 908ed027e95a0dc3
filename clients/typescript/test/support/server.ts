// A real Chronicle for a test: `target/debug/chronicle serve` (or $CHRONICLE_BIN) on a free
// port, a fresh SQLite file in a temporary data dir, stopped (SIGTERM) at the end.

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
/** The repository's root: dist/test/support → clients/typescript → the root. */
export const ROOT = resolve(here, '../../../../..');

export function chronicleBinary(): string {
  return process.env.CHRONICLE_BIN ?? join(ROOT, 'target/debug/chronicle');
}

export function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.once('error', fail);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (address && typeof address === 'object' ? ok(address.port) : fail(new Error('no port'))));
    });
  });
}

export interface RunningServer {
  baseUrl: string;
  dir: string;
  log: string;
  stop(): Promise<void>;
}

export async function startChronicle(env: Record<string, string> = {}): Promise<RunningServer> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'chronicle-ts-'));
  const log = join(dir, 'chronicle.log');
  const out = openSync(log, 'a');
  const child: ChildProcess = spawn(chronicleBinary(), ['serve'], {
    cwd: dir,
    stdio: ['ignore', out, out],
    env: {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      CHRONICLE_DATABASE_URL: `sqlite://${join(dir, 'chronicle.db')}`,
      CHRONICLE_DATA_DIR: dir,
      CHRONICLE_BIND: `127.0.0.1:${port}`,
      CHRONICLE_HTTP_AGENT__ENABLED: 'false',
      CHRONICLE_RATE_LIMIT__AUTH_PER_MINUTE: '10000',
      CHRONICLE_RATE_LIMIT__PER_MINUTE: '100000',
      CHRONICLE_LOG__FORMAT: 'json',
      ...env,
    },
  });
  const exited = new Promise<number | null>((ok) => child.once('exit', (code) => ok(code)));
  const baseUrl = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    const gone = await Promise.race([exited, new Promise<'running'>((ok) => setTimeout(() => ok('running'), 50))]);
    if (gone !== 'running') throw new Error(`chronicle exited (${gone}): ${readFileSync(log, 'utf8')}`);
    try {
      const response = await fetch(`${baseUrl}/api/health`);
      if (response.ok) break;
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`chronicle did not answer /api/health: ${readFileSync(log, 'utf8')}`);
    }
  }
  return {
    baseUrl,
    dir,
    log,
    async stop() {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
