// Writes made while the server cannot be reached wait in a queue, in order, each with the
// Idempotency-Key it was given when made; `replay()` sends them when the server is back.
// A write that reached the server before the connection broke is answered from the
// server's record of that key, so replaying it has no second effect.
//
// Replay sends each write as it was made (`POST /api/sync/push` is not on the server yet;
// its `op_id` is this key, so moving to it changes nothing for callers).

import type { Chronicle } from './client.js';
import { NetworkError, newIdempotencyKey } from './transport.js';

export interface QueuedWrite {
  op_id: string;
  method: string;
  path: string;
  body?: unknown;
  if_match?: string;
  queued_at: string;
}

/** Where the queue lives between runs (memory unless given one, e.g. over localStorage). */
export interface QueueStore {
  load(): QueuedWrite[];
  save(writes: QueuedWrite[]): void;
}

export class MemoryQueueStore implements QueueStore {
  private writes: QueuedWrite[] = [];
  load(): QueuedWrite[] {
    return [...this.writes];
  }
  save(writes: QueuedWrite[]): void {
    this.writes = [...writes];
  }
}

export interface WriteResult {
  op_id: string;
  /** `null` while queued. */
  status: number | null;
  body: unknown;
}

export class OfflineQueue {
  private readonly store: QueueStore;
  private replaying: Promise<WriteResult[]> | null = null;

  constructor(private readonly chronicle: Chronicle, store?: QueueStore) {
    this.store = store ?? new MemoryQueueStore();
  }

  get pending(): QueuedWrite[] {
    return this.store.load();
  }

  /** Sends the write now, or queues it when the server cannot be reached (or others wait). */
  async write(method: string, path: string, body?: unknown, options: { ifMatch?: string } = {}): Promise<WriteResult> {
    const write: QueuedWrite = {
      op_id: newIdempotencyKey(), method: method.toUpperCase(), path, body, if_match: options.ifMatch,
      queued_at: new Date().toISOString(),
    };
    if (this.pending.length === 0) {
      try {
        return await this.send(write);
      } catch (error) {
        if (!(error instanceof NetworkError)) throw error;
      }
    }
    this.store.save([...this.pending, write]);
    return { op_id: write.op_id, status: null, body: null };
  }

  /** Sends the queued writes in order; stops at the first that still cannot get through. */
  replay(): Promise<WriteResult[]> {
    if (!this.replaying) {
      this.replaying = this.drain().finally(() => {
        this.replaying = null;
      });
    }
    return this.replaying;
  }

  private async drain(): Promise<WriteResult[]> {
    const results: WriteResult[] = [];
    for (;;) {
      const [next] = this.pending;
      if (!next) return results;
      try {
        results.push(await this.send(next));
      } catch (error) {
        if (error instanceof NetworkError) return results;
        throw error;
      }
      this.store.save(this.pending.filter((write) => write.op_id !== next.op_id));
    }
  }

  private async send(write: QueuedWrite): Promise<WriteResult> {
    const headers: Record<string, string> = { 'Idempotency-Key': write.op_id, Accept: 'application/json' };
    if (write.body !== undefined) headers['Content-Type'] = 'application/json';
    if (write.if_match) headers['If-Match'] = write.if_match;
    const response = await this.chronicle.fetch(new Request(new URL(write.path, this.chronicle.baseUrl), {
      method: write.method,
      headers,
      body: write.body === undefined ? undefined : JSON.stringify(write.body),
    }));
    const type = response.headers.get('content-type') ?? '';
    const body = response.status === 204 ? null : type.includes('json') ? await response.json() : await response.text();
    return { op_id: write.op_id, status: response.status, body };
  }
}
