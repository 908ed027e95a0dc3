//! What Chronicle serves to read: projectors that fold the global event feed into read
//! models, with checkpoints, in one transaction per batch. A projection never issues a
//! command.
//!
//! Layout:
//! - [`feed`]: the event feed as projections see it, and the `EventSource` they read from
//!   (implemented by the runtime's store).
//! - [`db`]: the read-model database, PostgreSQL or SQLite, one SQL text for both.
//! - [`runner`]: the `Projection` trait and checkpointed catch-up.
//! - [`rebuild`]: a projection built again beside the live one and swapped in atomically.
//! - [`task_view`]: the task list read model.
//! - [`team_view`]: teams and their memberships.
//! - [`task_queue`]: the task view's queue reads — ready tasks, held leases, deadlines.
//! - [`agent_view`]: the agent registry read model.
//! - [`api_key_view`]: each user's API keys, without their secrets.
//! - [`aggregate_owners`]: who owns each aggregate, for scoping the event history.
//! - [`conversations`]: the turns of an `llm.chat` conversation, a query over the task view.
//! - [`usage`]: usage analytics — one fact per counted task event, reported by bucket.
//! - [`workflow_view`]: the workflow list read model, every version in each row.
//! - [`workflow_run_view`]: workflow runs with their per-step map.
//! - [`scope`]: whose rows a reader sees (their own, their teams', or all).
//! - [`schedule_view`]: schedules with their next fire time, for the schedule process.
//! - [`search`]: the search index (tantivy and HNSW on local disk), not SQL.

pub mod agent_view;
pub mod aggregate_owners;
pub mod api_key_view;
pub mod backoff;
pub mod conversations;
pub mod db;
pub mod feed;
pub mod rebuild;
pub mod runner;
pub mod schedule_view;
pub mod scope;
pub mod search;
pub mod task_queue;
pub mod task_view;
pub mod team_view;
pub mod usage;
pub mod workflow_run_view;
pub mod workflow_view;

pub use db::{ReadDb, ReadTx};
pub use feed::{EventSource, FeedCursor, RecordedEvent};
pub use runner::{
    AnyProjector, Projection, ProjectionError, ProjectionFailure, ProjectionStatus, Projector,
};
pub use scope::ReadScope;
