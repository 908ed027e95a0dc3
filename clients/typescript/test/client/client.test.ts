// The client against a real Chronicle started by the test: register, create, lease over the
// agent socket, complete, subscribe and resume, refresh rotation, idempotent retries and
// the offline queue's replay.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import WebSocket from 'ws';
import {
  AgentSocket, createChronicle, LiveSubscription, OfflineQueue, SignedOutError,
  type Chronicle, type LeasedTask, type LiveEvent,
} from '../../src/index.js';
import type { SocketFactory } from '../../src/sockets.js';
import { FlakyProxy } from '../support/proxy.js';
import { startChronicle, type RunningServer } from '../support/server.js';
import { eventually, PASSWORD, uniqueEmail } from '../support/wait.js';

const Socket = WebSocket as unknown as SocketFactory;
let server: RunningServer;

before(async () => {
  server = await startChronicle();
});

after(async () => {
  await server?.stop();
});

async function signedUp(baseUrl = server.baseUrl, onSignedOut?: (reason: string) => void): Promise<Chronicle> {
  const chronicle = createChronicle({ baseUrl, onSignedOut, retry: { attempts: 4, baseDelayMs: 20, maxDelayMs: 200 } });
  await chronicle.session.register(uniqueEmail(), PASSWORD);
  return chronicle;
}

async function registerAgent(chronicle: Chronicle, capability: string): Promise<string> {
  const { data, error, response } = await chronicle.api.POST('/api/agents/register', {
    body: { name: `agent-${capability}`, kind: 'remote', capabilities: [capability], max_concurrency: 4 },
  });
  assert.equal(response.status, 201, JSON.stringify(error));
  return data!.id;
}

async function createTask(chronicle: Chronicle, capability: string, input: unknown, tags: string[] = []): Promise<string> {
  const { data, error, response } = await chronicle.api.POST('/api/tasks', { body: { capability, input, tags } });
  assert.equal(response.status, 201, JSON.stringify(error));
  return data!.id;
}

async function tasksTagged(chronicle: Chronicle, tag: string) {
  const { data } = await chronicle.api.GET('/api/tasks', { params: { query: { tag, limit: 500 } } });
  return data!.items;
}

describe('the typed client', () => {
  it('registers, creates a task, leases it over the agent socket and completes it', async () => {
    const chronicle = await signedUp();
    const me = await chronicle.api.GET('/api/users/me');
    assert.equal(me.response.status, 200);
    const agentId = await registerAgent(chronicle, 'demo.echo');
    const assigned: LeasedTask[] = [];
    const agent = new AgentSocket({
      baseUrl: server.baseUrl, agentId, session: chronicle.session, WebSocket: Socket, heartbeatMs: 200,
      onTask: (task) => {
        assigned.push(task);
        return { echoed: task.input };
      },
    });
    agent.start();
    try {
      const id = await createTask(chronicle, 'demo.echo', { say: 'hello' });
      const done = await eventually('the task succeeds', async () => {
        const { data } = await chronicle.api.GET('/api/tasks/{id}', { params: { path: { id } } });
        return data?.status === 'succeeded' ? data : undefined;
      });
      assert.deepEqual(done.output, { echoed: { say: 'hello' } });
      assert.equal(done.agent_id, agentId);
      assert.deepEqual(assigned.map((task) => task.id), [id]);
      assert.ok(assigned[0]!.lease_id, 'a leased task carries its lease');
    } finally {
      agent.stop();
    }
  });

  it('the agent socket reconnects after a drop and serves the next task', async () => {
    const chronicle = await signedUp();
    const agentId = await registerAgent(chronicle, 'demo.again');
    const agent = new AgentSocket({
      baseUrl: server.baseUrl, agentId, session: chronicle.session, WebSocket: Socket,
      backoff: { initialMs: 20, maxMs: 200 }, onTask: () => 'done',
    });
    agent.start();
    try {
      await eventually('connected', () => (agent.connections === 1 ? true : undefined));
      agent.drop();
      await eventually('reconnected', () => (agent.connections === 2 ? true : undefined));
      const id = await createTask(chronicle, 'demo.again', {});
      await eventually('the task succeeds after the reconnect', async () => {
        const { data } = await chronicle.api.GET('/api/tasks/{id}', { params: { path: { id } } });
        return data?.status === 'succeeded' ? data : undefined;
      });
    } finally {
      agent.stop();
    }
  });

  it('a failing task callback fails the attempt with its message', async () => {
    const chronicle = await signedUp();
    const agentId = await registerAgent(chronicle, 'demo.fail');
    const agent = new AgentSocket({
      baseUrl: server.baseUrl, agentId, session: chronicle.session, WebSocket: Socket,
      onTask: () => { throw new Error('no such page'); },
    });
    agent.start();
    try {
      const { data } = await chronicle.api.POST('/api/tasks', { body: { capability: 'demo.fail', input: {}, max_attempts: 1 } });
      const failed = await eventually('the task fails', async () => {
        const task = await chronicle.api.GET('/api/tasks/{id}', { params: { path: { id: data!.id } } });
        return task.data?.status === 'failed' ? task.data : undefined;
      });
      assert.equal((failed.error as { message?: string } | null)?.message, 'no such page');
    } finally {
      agent.stop();
    }
  });

  it('subscribes to live events and resumes after the last position with no gap or duplicate', async () => {
    const chronicle = await signedUp();
    const seen: LiveEvent[] = [];
    const first = new LiveSubscription({
      baseUrl: server.baseUrl, session: chronicle.session, topics: ['mine'], WebSocket: Socket,
      onEvent: (event) => seen.push(event),
    });
    let subscribed = false;
    first.start();
    const one = await (async () => {
      await eventually('subscribed', () => (first.after !== undefined ? true : undefined));
      subscribed = true;
      return createTask(chronicle, 'demo.live', { n: 1 });
    })();
    assert.ok(subscribed);
    await eventually('the first task is pushed', () => (seen.some((e) => e.aggregate_id === one) ? true : undefined));
    // A drop: the same subscription reconnects and resumes.
    first.drop();
    const two = await createTask(chronicle, 'demo.live', { n: 2 });
    await eventually('the second task is pushed after the reconnect', () => (seen.some((e) => e.aggregate_id === two) ? true : undefined));
    assert.ok(first.connections >= 2, 'it reconnected');
    first.stop();
    // Stopped while more happens; a new subscription from the last position gets exactly that.
    const resumeAfter = first.after!;
    const three = await createTask(chronicle, 'demo.live', { n: 3 });
    const later: LiveEvent[] = [];
    const second = new LiveSubscription({
      baseUrl: server.baseUrl, session: chronicle.session, topics: ['mine'], WebSocket: Socket, after: resumeAfter,
      onEvent: (event) => later.push(event),
    });
    second.start();
    await eventually('the missed task is pushed', () => (later.some((e) => e.aggregate_id === three) ? true : undefined));
    second.stop();
    const positions = [...seen, ...later].map((event) => event.position);
    assert.deepEqual(positions, [...new Set(positions)].sort((a, b) => a - b), 'in order, none twice');
    assert.ok(later.every((event) => event.position > resumeAfter));
  });

  it('rotates the refresh token with one request in flight, and a reused token signs out', async () => {
    const reasons: string[] = [];
    const chronicle = await signedUp(server.baseUrl, (reason) => reasons.push(reason));
    const before = chronicle.session.store.load()!;
    const tokens = await Promise.all([chronicle.session.refresh(), chronicle.session.refresh(), chronicle.session.refresh()]);
    assert.equal(chronicle.session.refreshes, 1, 'concurrent callers share one refresh');
    assert.equal(new Set(tokens).size, 1);
    const rotated = chronicle.session.store.load()!;
    assert.notEqual(rotated, before, 'the refresh token rotated');
    // A 401 on a call refreshes once and repeats the call.
    chronicle.session.adopt({ access_token: 'not-a-token', refresh_token: rotated, expires_in: 900 });
    const me = await chronicle.api.GET('/api/users/me');
    assert.equal(me.response.status, 200);
    assert.equal(chronicle.session.refreshes, 2);
    // Someone replays the dead token: the server revokes the family, and the session ends.
    const replay = await fetch(`${server.baseUrl}/api/auth/refresh`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ refresh_token: before }),
    });
    assert.equal(replay.status, 401);
    await assert.rejects(chronicle.session.refresh(), SignedOutError);
    assert.equal(reasons.length, 1, 'told once');
    assert.equal(chronicle.session.signedIn, false);
  });

  it('every write carries an Idempotency-Key; a write whose answer was lost is retried with it and has one effect', async () => {
    const proxy = new FlakyProxy(Number(new URL(server.baseUrl).port));
    await proxy.start();
    try {
      const chronicle = await signedUp(proxy.baseUrl);
      const tag = `lost-${Date.now()}`;
      proxy.lose(1);
      const id = await createTask(chronicle, 'demo.idem', {}, [tag]);
      const tasks = await tasksTagged(chronicle, tag);
      assert.deepEqual(tasks.map((task) => task.id), [id], 'created once although sent twice');
      proxy.fail502(1);
      const other = await createTask(chronicle, 'demo.idem', {}, [tag]);
      assert.equal((await tasksTagged(chronicle, tag)).length, 2, 'a 502 is retried');
      assert.notEqual(other, id);
    } finally {
      await proxy.stop();
    }
  });

  it('queues writes while offline and replays them with their keys when back', async () => {
    const proxy = new FlakyProxy(Number(new URL(server.baseUrl).port));
    await proxy.start();
    try {
      const chronicle = await signedUp(proxy.baseUrl);
      await chronicle.session.token();
      const queue = new OfflineQueue(chronicle);
      const tag = `offline-${Date.now()}`;
      const body = (n: number) => ({ capability: 'demo.offline', input: { n }, tags: [tag] });
      // The answer to this one is lost three times over: the server created it, the client does not know.
      proxy.lose(4);
      const lost = await queue.write('POST', '/api/tasks', body(0));
      assert.equal(lost.status, null, 'queued');
      proxy.goOffline();
      const queued = [lost, await queue.write('POST', '/api/tasks', body(1)), await queue.write('POST', '/api/tasks', body(2))];
      assert.ok(queued.every((write) => write.status === null));
      assert.equal(queue.pending.length, 3);
      assert.deepEqual(await queue.replay(), [], 'still offline: nothing sent');
      assert.equal(queue.pending.length, 3);
      proxy.goOnline();
      const results = await queue.replay();
      assert.deepEqual(results.map((r) => r.status), [201, 201, 201]);
      assert.deepEqual(results.map((r) => r.op_id), queued.map((w) => w.op_id), 'in the order made');
      assert.equal(queue.pending.length, 0);
      const tasks = await tasksTagged(chronicle, tag);
      assert.equal(tasks.length, 3, 'each write took effect once');
      assert.deepEqual(tasks.map((t) => (t.input as { n: number }).n).sort(), [0, 1, 2]);
      // Online again: a write goes straight through.
      const direct = await queue.write('POST', '/api/tasks', body(3));
      assert.equal(direct.status, 201);
    } finally {
      await proxy.stop();
    }
  });
});
