// The live subscription socket (`/api/ws`): topics, every event in feed order, and on a
// reconnect the resume right after the last position received (no gap, no duplicate).

import type { Session } from './session.js';
import {
  backoffDelay, DEFAULT_BACKOFF, defaultFactory, OPEN, socketUrl, text,
  type Backoff, type SocketFactory, type SocketLike,
} from './sockets.js';

export interface LiveEvent {
  position: number;
  aggregate_type: string;
  aggregate_id: string;
  sequence: number;
  event_type: string;
  payload: unknown;
  [field: string]: unknown;
}

export interface LiveOptions {
  baseUrl: string;
  session: Session;
  topics: string[];
  onEvent: (event: LiveEvent, topic: string) => void;
  /** Start right after this position (the last one a previous run received). */
  after?: number;
  backoff?: Backoff;
  WebSocket?: SocketFactory;
  /** `subscribed`, `unsubscribed` and `error` messages. */
  onMessage?: (message: Record<string, unknown>) => void;
}

export class LiveSubscription {
  private socket: SocketLike | null = null;
  private stopped = false;
  private tries = 0;
  private retry: ReturnType<typeof setTimeout> | null = null;
  private readonly topics: Set<string>;
  /** The position of the last event received: where a reconnect resumes. */
  after: number | undefined;
  connections = 0;

  constructor(private readonly options: LiveOptions) {
    this.topics = new Set(options.topics);
    this.after = options.after;
  }

  start(): void {
    this.stopped = false;
    void this.connect();
  }

  stop(): void {
    this.stopped = true;
    if (this.retry) clearTimeout(this.retry);
    this.socket?.close(1000);
    this.socket = null;
  }

  /** Drops the connection as a network failure would (it reconnects and resumes). */
  drop(): void {
    this.socket?.close(4000, 'dropped');
  }

  subscribe(...topics: string[]): void {
    for (const topic of topics) this.topics.add(topic);
    this.send({ type: 'subscribe', topics });
  }

  unsubscribe(...topics: string[]): void {
    for (const topic of topics) this.topics.delete(topic);
    this.send({ type: 'unsubscribe', topics });
  }

  private send(message: Record<string, unknown>): void {
    if (this.socket && this.socket.readyState === OPEN) this.socket.send(JSON.stringify(message));
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    let token: string | null;
    try {
      token = await this.options.session.token();
    } catch {
      this.schedule();
      return;
    }
    if (this.stopped) return;
    const Factory = this.options.WebSocket ?? defaultFactory();
    const socket = new Factory(socketUrl(this.options.baseUrl, '/api/ws', { access_token: token ?? undefined }));
    this.socket = socket;
    socket.onopen = () => {
      this.tries = 0;
      this.connections += 1;
      const message: Record<string, unknown> = { type: 'subscribe', topics: [...this.topics] };
      if (this.after !== undefined) message.after = this.after;
      socket.send(JSON.stringify(message));
    };
    socket.onmessage = (event) => {
      let message: Record<string, unknown>;
      try {
        message = JSON.parse(text(event.data)) as Record<string, unknown>;
      } catch {
        return;
      }
      if (message.type === 'event') {
        const live = message.event as LiveEvent;
        this.after = live.position;
        this.options.onEvent(live, String(message.topic));
        return;
      }
      // The first subscribe fixes the start: a reconnect before any event resumes there.
      if (message.type === 'subscribed' && this.after === undefined && typeof message.after === 'number' && message.after > 0) {
        this.after = message.after;
      }
      this.options.onMessage?.(message);
    };
    socket.onerror = () => undefined;
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.schedule();
    };
  }

  private schedule(): void {
    if (this.stopped) return;
    const wait = backoffDelay(this.options.backoff ?? DEFAULT_BACKOFF, this.tries);
    this.tries += 1;
    this.retry = setTimeout(() => void this.connect(), wait);
  }
}
