// What both sockets share: a WebSocket constructor (the browser's, or `ws` in Node), the
// socket URL with the access token in its query (a browser cannot send headers), and
// reconnection with exponential back-off and jitter.

export interface SocketLike {
  readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

export type SocketFactory = new (url: string) => SocketLike;

export const OPEN = 1;

export interface Backoff {
  initialMs: number;
  maxMs: number;
}

export const DEFAULT_BACKOFF: Backoff = { initialMs: 250, maxMs: 15_000 };

/** The wait before reconnect number `tries` (0 first): doubling, capped, half of it random. */
export function backoffDelay(backoff: Backoff, tries: number): number {
  const ceiling = Math.min(backoff.maxMs, backoff.initialMs * 2 ** tries);
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

export function socketUrl(baseUrl: string, path: string, query: Record<string, string | undefined>): string {
  const url = new URL(path, baseUrl);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined) url.searchParams.set(name, value);
  }
  return url.toString();
}

export function defaultFactory(): SocketFactory {
  const found = (globalThis as { WebSocket?: unknown }).WebSocket;
  if (!found) throw new Error('no WebSocket in this runtime: pass `WebSocket` (e.g. from the ws package)');
  return found as SocketFactory;
}

export function text(data: unknown): string {
  if (typeof data === 'string') return data;
  if (data instanceof ArrayBuffer) return new TextDecoder().decode(data);
  if (ArrayBuffer.isView(data)) return new TextDecoder().decode(data);
  return String(data);
}
