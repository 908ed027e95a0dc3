// The fetch every generated call goes through: credentials, a 401 answered by one refresh,
// an Idempotency-Key on every write, and retries of writes and reads on network errors and
// 5xx answers (a write's retries carry the same key, so none has a second effect).

import type { Session } from './session.js';

export interface RetryPolicy {
  /** Tries in all, the first included. */
  attempts: number;
  /** The wait before the first retry; doubled each time, with jitter. */
  baseDelayMs: number;
  maxDelayMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { attempts: 4, baseDelayMs: 100, maxDelayMs: 2000 };

/** Every try failed without an answer from the server. */
export class NetworkError extends Error {
  constructor(readonly request: Request, override readonly cause: unknown) {
    super(`network error: ${request.method} ${new URL(request.url).pathname}: ${String(cause)}`);
    this.name = 'NetworkError';
  }
}

const SAFE = new Set(['GET', 'HEAD', 'OPTIONS']);

export function isWrite(method: string): boolean {
  return !SAFE.has(method.toUpperCase());
}

export function newIdempotencyKey(): string {
  return crypto.randomUUID();
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function delay(policy: RetryPolicy, retry: number): number {
  const ceiling = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** retry);
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

export interface TransportOptions {
  session?: Session;
  retry?: RetryPolicy;
  fetch?: typeof fetch;
}

/** A `fetch` with the behaviour of the module's doc, for `openapi-fetch` or direct use. */
export function resilientFetch(options: TransportOptions): (input: Request) => Promise<Response> {
  const policy = options.retry ?? DEFAULT_RETRY;
  const doFetch = options.fetch ?? fetch;
  return async (input: Request) => {
    const original = input.clone();
    if (isWrite(original.method) && !original.headers.has('Idempotency-Key')) {
      original.headers.set('Idempotency-Key', newIdempotencyKey());
    }
    const auth = options.session && !new URL(original.url).pathname.startsWith('/api/auth/');
    let refreshed = false;
    for (let attempt = 0; ; attempt += 1) {
      const request = original.clone();
      if (auth && options.session && !request.headers.has('Authorization')) {
        const token = await options.session.token();
        if (token) request.headers.set('Authorization', `Bearer ${token}`);
      }
      let response: Response;
      try {
        response = await doFetch(request);
      } catch (error) {
        if (attempt + 1 >= policy.attempts) throw new NetworkError(original, error);
        await sleep(delay(policy, attempt));
        continue;
      }
      if (response.status === 401 && auth && options.session?.store.load() && !refreshed) {
        refreshed = true;
        await response.body?.cancel();
        await options.session.refresh();
        attempt -= 1;
        continue;
      }
      if (response.status >= 500 && attempt + 1 < policy.attempts) {
        await response.body?.cancel();
        await sleep(delay(policy, attempt));
        continue;
      }
      return response;
    }
  };
}
