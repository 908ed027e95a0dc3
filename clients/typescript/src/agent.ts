// The agent socket (`/api/agents/{id}/ws`): the server pushes `task.assigned`, the agent
// runs it through a callback and answers `complete` or `fail`; heartbeats keep its leases;
// a dropped socket reconnects with back-off and a fresh token.

import type { Session } from './session.js';
import {
  backoffDelay, DEFAULT_BACKOFF, defaultFactory, OPEN, socketUrl, text,
  type Backoff, type SocketFactory, type SocketLike,
} from './sockets.js';

/** A task as the socket hands it over: a `Task` plus its lease. */
export interface LeasedTask {
  id: string;
  capability: string;
  input: unknown;
  lease_id: string;
  lease_expires_at?: string;
  attempt: number;
  [field: string]: unknown;
}

export interface TaskContext {
  /** Reports progress (it renews the lease too). */
  progress(progress: unknown): void;
}

export interface AgentSocketOptions {
  baseUrl: string;
  agentId: string;
  session: Session;
  /** Runs one task; its value is the output, a throw fails the attempt. */
  onTask: (task: LeasedTask, context: TaskContext) => Promise<unknown> | unknown;
  heartbeatMs?: number;
  backoff?: Backoff;
  WebSocket?: SocketFactory;
  /** Every server message, for logging or tests. */
  onMessage?: (message: Record<string, unknown>) => void;
  onStateChange?: (state: 'connecting' | 'open' | 'closed') => void;
}

export class AgentSocket {
  private socket: SocketLike | null = null;
  private stopped = false;
  private tries = 0;
  private heartbeat: ReturnType<typeof setInterval> | null = null;
  private retry: ReturnType<typeof setTimeout> | null = null;
  private readonly running = new Map<string, LeasedTask>();
  /** Results finished while the socket was down, sent when it is back (the lease may still hold). */
  private readonly unsent: Record<string, unknown>[] = [];
  /** Times the socket has been opened (tests read it). */
  connections = 0;

  constructor(private readonly options: AgentSocketOptions) {}

  start(): void {
    this.stopped = false;
    void this.connect();
  }

  stop(): void {
    this.stopped = true;
    if (this.retry) clearTimeout(this.retry);
    this.stopHeartbeat();
    this.socket?.close(1000, 'agent stopping');
    this.socket = null;
    this.options.onStateChange?.('closed');
  }

  /** Drops the connection as a network failure would (it reconnects). */
  drop(): void {
    this.socket?.close(4000, 'dropped');
  }

  get runningTaskIds(): string[] {
    return [...this.running.keys()];
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    this.options.onStateChange?.('connecting');
    let token: string | null;
    try {
      token = await this.options.session.token();
    } catch {
      this.schedule();
      return;
    }
    if (this.stopped) return;
    const Factory = this.options.WebSocket ?? defaultFactory();
    const url = socketUrl(this.options.baseUrl, `/api/agents/${this.options.agentId}/ws`, { access_token: token ?? undefined });
    const socket = new Factory(url);
    this.socket = socket;
    socket.onopen = () => {
      this.tries = 0;
      this.connections += 1;
      this.options.onStateChange?.('open');
      this.startHeartbeat();
      this.send({ type: 'heartbeat', running_task_ids: this.runningTaskIds });
      for (const result of this.unsent.splice(0)) this.deliver(result);
    };
    socket.onmessage = (event) => this.receive(text(event.data));
    socket.onerror = () => undefined;
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.stopHeartbeat();
      this.options.onStateChange?.('closed');
      this.schedule();
    };
  }

  private schedule(): void {
    if (this.stopped) return;
    const wait = backoffDelay(this.options.backoff ?? DEFAULT_BACKOFF, this.tries);
    this.tries += 1;
    this.retry = setTimeout(() => void this.connect(), wait);
  }

  private startHeartbeat(): void {
    this.stopHeartbeat();
    this.heartbeat = setInterval(() => {
      this.send({ type: 'heartbeat', running_task_ids: this.runningTaskIds });
    }, this.options.heartbeatMs ?? 15_000);
  }

  private stopHeartbeat(): void {
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = null;
  }

  private send(message: Record<string, unknown>): boolean {
    if (!this.socket || this.socket.readyState !== OPEN) return false;
    this.socket.send(JSON.stringify(message));
    return true;
  }

  private deliver(result: Record<string, unknown>): void {
    if (!this.send(result)) this.unsent.push(result);
  }

  private receive(raw: string): void {
    let message: Record<string, unknown>;
    try {
      message = JSON.parse(raw) as Record<string, unknown>;
    } catch {
      return;
    }
    this.options.onMessage?.(message);
    if (message.type === 'task.assigned' && message.task) void this.run(message.task as LeasedTask);
  }

  private async run(task: LeasedTask): Promise<void> {
    this.running.set(task.id, task);
    const lease = { task_id: task.id, lease_id: task.lease_id };
    const context: TaskContext = { progress: (progress) => this.send({ type: 'progress', ...lease, progress }) };
    try {
      const output = await this.options.onTask(task, context);
      this.deliver({ type: 'complete', ...lease, output: output ?? null });
    } catch (error) {
      this.deliver({ type: 'fail', ...lease, error: { message: error instanceof Error ? error.message : String(error) } });
    } finally {
      this.running.delete(task.id);
    }
  }
}
