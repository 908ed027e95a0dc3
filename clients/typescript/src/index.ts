// Chronicle's TypeScript client: the generated types and calls, and what a generator cannot do.

export { createChronicle, type Chronicle, type ChronicleOptions, type ApiClient, type Schemas } from './client.js';
export { Session, MemoryTokenStore, SignedOutError, type TokenPair, type TokenStore } from './session.js';
export { resilientFetch, NetworkError, DEFAULT_RETRY, type RetryPolicy } from './transport.js';
export { AgentSocket, type AgentSocketOptions, type LeasedTask, type TaskContext } from './agent.js';
export { LiveSubscription, type LiveEvent, type LiveOptions } from './live.js';
export { OfflineQueue, MemoryQueueStore, type QueuedWrite, type QueueStore, type WriteResult } from './offline.js';
export type { paths, components, operations } from './generated/schema.js';
