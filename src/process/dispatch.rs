//! Dispatch: leases ready tasks to an agent. Candidates come from the task view (priority
//! first, then age); each lease is a `LeaseTask` command on the task, so when two agents
//! race for one task the aggregate lets exactly one win and the loser moves on to the next
//! candidate. An agent never holds more than its `max_concurrency` leases, on however many
//! nodes it leases: each lease's append takes one of the agent's slots in its own
//! transaction, or is refused (`store::lease_slots`), and a lease for an agent that drained
//! or left after it was loaded is refused the same way. Leasing for one agent is also
//! serialised in this node and asks for no more than the view says is free, so that the
//! store's refusal is the rare case of a race between nodes.
//!
//! Every agent woken by a new task reads the same best-first candidates. So that they do
//! not all load and race for the first one (only one can win; the others pay a load, and
//! often a lost append and a retry, for nothing), a task being leased by one call in this
//! node is skipped by the others, which go on to the next candidate. Across nodes the
//! aggregate still decides. A call tries its claimed candidates concurrently, so their
//! appends share a commit.
//!
//! A task with a concurrency group (its owner's `concurrency_key`) also takes one of the
//! group's slots in the lease's transaction; a full group refuses (`StoreError::KeyBusy`)
//! and the call goes on to other candidates. The view offers no task of a full group, and a
//! call claims no more of a group's tasks than the view says are free, counting those that
//! other calls of this node are leasing, so the group's tasks go in priority-then-age order.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use chronicle_aggregates::agent::AgentState;
use chronicle_aggregates::task::{Task, TaskCommand, TaskError};
use chronicle_commands::agent::AgentKind;
use chronicle_projections::task_queue::{Candidate, ReadyQuery};
use chronicle_projections::task_view::TaskView;
use chronicle_projections::ProjectionError;
use chrono::Utc;
use uuid::Uuid;

use crate::bus::{CommandBus, CommandContext, CommandError, Committed};
use crate::read_side::ReadSide;
use crate::store::{KeySlot, LeaseSlot, StoreError};

/// Most tasks one lease call hands out.
pub const MAX_TASKS_PER_LEASE: u32 = 100;

/// How many times the candidate list is read again after every candidate was lost to
/// other agents.
const ROUNDS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Read(#[from] ProjectionError),
    /// The agent drained or deregistered since it was loaded: it takes no new work.
    #[error("the agent takes no new work")]
    AgentRetired,
}

/// One lease granted: the task as it is now, and the lease the agent must name.
pub struct Granted {
    pub task: Task,
    pub version: usize,
    pub lease_id: Uuid,
}

/// What one node's lease calls share: a lock per agent, so two lease calls of one agent
/// cannot both count a free slot, and the tasks being leased right now. Owned by the
/// server (through its [`ReadSide`]), so two servers in one process are two nodes.
#[derive(Default)]
pub struct DispatchState {
    agent_locks: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
    leasing: Mutex<HashSet<Uuid>>,
}

impl DispatchState {
    fn agent_lock(&self, agent_id: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .agent_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(agent_id).or_default().clone()
    }

    fn leasing(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.leasing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets a deregistered agent's lock.
    pub fn forget_agent(&self, agent_id: Uuid) {
        self.agent_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&agent_id);
    }
}

/// A lease call's claim on leasing one task; dropped when the attempt is over.
struct Claim<'a> {
    state: &'a DispatchState,
    task_id: Uuid,
    /// The group slot the lease takes, if the task has a concurrency group.
    key: Option<KeySlot>,
}

impl<'a> Claim<'a> {
    /// Claims the first `n` of `candidates` that no other call of this node is leasing,
    /// all at once, so that agents woken together take different tasks. Of a concurrency
    /// group it takes no more than the group's free slots, and a task of the group that
    /// another call is leasing counts as taking one: the next in line waits for it.
    fn take_first(state: &'a DispatchState, candidates: &[Candidate], n: usize) -> Vec<Self> {
        let mut taken = Vec::with_capacity(n);
        let mut used: HashMap<(Uuid, &str), u32> = HashMap::new();
        {
            let mut leasing = state.leasing();
            for candidate in candidates {
                if taken.len() >= n {
                    break;
                }
                if let Some(group) = &candidate.group {
                    let used = used
                        .entry((group.owner_id, group.key.as_str()))
                        .or_default();
                    if *used >= group.free {
                        continue;
                    }
                    *used += 1;
                }
                if leasing.insert(candidate.id) {
                    taken.push(candidate);
                }
            }
        }
        // Built only once the lock is released: dropping a claim takes it.
        taken
            .into_iter()
            .map(|candidate| Self {
                state,
                task_id: candidate.id,
                key: candidate.group.as_ref().map(|group| KeySlot {
                    owner_id: group.owner_id.to_string(),
                    key: group.key.clone(),
                    limit: group.limit,
                }),
            })
            .collect()
    }

    /// How many tasks this node is leasing right now.
    fn outstanding(state: &DispatchState) -> usize {
        state.leasing().len()
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.state.leasing().remove(&self.task_id);
    }
}

/// Built-in agents (run by Chronicle itself, owned by the system) serve every user; any
/// other agent only its owner.
pub fn serves_every_user(agent: &AgentState) -> bool {
    agent.kind != AgentKind::Remote && agent.owner_id == Uuid::nil()
}

/// Leases up to `max_tasks` ready tasks to `agent` (as of its `agent_version`), fewer if its
/// concurrency limit or the queue says so; an empty list when nothing fits.
pub async fn lease_ready(
    bus: &CommandBus,
    read: &ReadSide,
    agent: &AgentState,
    agent_version: usize,
    max_tasks: u32,
    context: &CommandContext,
) -> Result<Vec<Granted>, DispatchError> {
    let dispatch = read.dispatch();
    let lock = dispatch.agent_lock(agent.id);
    let _serialised = lock.lock().await;
    let slot = LeaseSlot {
        agent_id: agent.id.to_string(),
        agent_version,
        max_concurrency: agent.max_concurrency.get(),
        key: None,
    };
    // A repeat of a request whose leases committed before it failed answers the leases
    // granted then, whether or not the queue still shows their tasks as ready (once the
    // view has caught up, it does not).
    let replayed: Vec<Uuid> = context
        .commit_log
        .as_ref()
        .map(|log| log.pending(<Task as cqrs_es::Aggregate>::TYPE))
        .unwrap_or_default()
        .iter()
        .filter_map(|id| Uuid::parse_str(id).ok())
        .collect();
    if !replayed.is_empty() {
        let mut granted = Vec::with_capacity(replayed.len());
        for task_id in replayed {
            if let Leased::Granted(grant) = try_lease(bus, read, &slot, task_id, context).await? {
                granted.push(*grant);
            }
        }
        return Ok(granted);
    }
    let held = TaskView::held_by(&read.db, agent.id).await?.len();
    let free = agent
        .max_concurrency
        .get()
        .saturating_sub(u32::try_from(held).unwrap_or(u32::MAX));
    let wanted = max_tasks.min(free).min(MAX_TASKS_PER_LEASE) as usize;
    let capabilities: Vec<String> = agent
        .capabilities
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    let mut granted = Vec::with_capacity(wanted);
    let mut tried = HashSet::new();
    let mut full = false;
    for _ in 0..ROUNDS {
        if full {
            break;
        }
        let still = wanted - granted.len();
        if still == 0 {
            break;
        }
        let query = ReadyQuery {
            owner_id: (!serves_every_user(agent)).then_some(agent.owner_id),
            team_id: agent.team_id,
            agent_id: agent.id,
            capabilities: &capabilities,
            now: Utc::now(),
            // Enough to get past what other calls are leasing and what racing nodes take
            // first, without reading the queue.
            limit: u32::try_from(still * 2 + 8 + tried.len() + Claim::outstanding(dispatch))
                .unwrap_or(u32::MAX),
        };
        let candidates: Vec<Candidate> = TaskView::ready_for(&read.db, &query)
            .await?
            .into_iter()
            .filter(|candidate| !tried.contains(&candidate.id))
            .collect();
        let claims = Claim::take_first(dispatch, &candidates, still);
        if claims.is_empty() {
            // Nothing, or only what other calls are leasing; a task they fail to lease
            // wakes the queue again.
            break;
        }
        tried.extend(claims.iter().map(|claim| claim.task_id));
        // At once: their appends share a commit, and the call takes one lease's time.
        let slots: Vec<LeaseSlot> = claims
            .iter()
            .map(|claim| LeaseSlot {
                key: claim.key.clone(),
                ..slot.clone()
            })
            .collect();
        let attempts = claims
            .iter()
            .zip(&slots)
            .map(|(claim, slot)| try_lease(bus, read, slot, claim.task_id, context));
        let mut failure = None;
        for attempt in futures::future::join_all(attempts).await {
            match attempt {
                Ok(Leased::Granted(grant)) => granted.push(*grant),
                Ok(Leased::Lost) => {}
                // Another node's leases took the free slots.
                Ok(Leased::Full) => full = true,
                Err(DispatchError::AgentRetired) if !granted.is_empty() => full = true,
                Err(error) => failure = Some(error),
            }
        }
        if let Some(error) = failure {
            if granted.is_empty() {
                return Err(error);
            }
            // The leases granted are the agent's: hand them out rather than let them run
            // out unused.
            tracing::warn!(%error, "a lease attempt failed; answering the others");
            break;
        }
    }
    Ok(granted)
}

/// How one lease attempt ended, short of an error.
enum Leased {
    Granted(Box<Granted>),
    /// The task is no longer there to lease (another agent won, it was cancelled, it is
    /// not ready after all).
    Lost,
    /// The agent holds as many leases as it may.
    Full,
}

/// One `LeaseTask`, taking one of the agent's slots.
async fn try_lease(
    bus: &CommandBus,
    read: &ReadSide,
    slot: &LeaseSlot,
    task_id: Uuid,
    context: &CommandContext,
) -> Result<Leased, DispatchError> {
    let lease_id = Uuid::now_v7();
    let agent_id = Uuid::parse_str(&slot.agent_id).map_err(|e| {
        DispatchError::Store(StoreError::Codec(format!(
            "agent id `{}`: {e}",
            slot.agent_id
        )))
    })?;
    let result = bus
        .lease::<Task, CommandError<TaskError>>(&task_id.to_string(), context, slot, |_| {
            Ok(TaskCommand::LeaseTask {
                agent_id,
                lease_id,
                at: Utc::now(),
            })
        })
        .await;
    match result {
        Ok(Committed {
            aggregate, version, ..
        }) => {
            read.task_committed(&aggregate, version).await;
            // The lease in force: this one, or, when a repeated request is answered from
            // its first attempt's commit (`bus::CommitLog`), the one granted then.
            let lease_id = aggregate
                .state()
                .and_then(|state| state.lease_id)
                .unwrap_or(lease_id);
            Ok(Leased::Granted(Box::new(Granted {
                task: aggregate,
                version,
                lease_id,
            })))
        }
        Err(CommandError::Store(StoreError::NoFreeSlot)) => {
            // The task is still ready: calls that skipped it look again.
            read.notify_queue();
            Ok(Leased::Full)
        }
        Err(CommandError::Store(StoreError::KeyBusy)) => {
            // Its group is full (another node's leases, or a view behind them): the task
            // waits for a hold of its group to end, which wakes the queue.
            tracing::debug!(%task_id, "its concurrency group is full; trying the next candidate");
            Ok(Leased::Lost)
        }
        Err(CommandError::Store(StoreError::AgentRetired)) => {
            read.notify_queue();
            Err(DispatchError::AgentRetired)
        }
        Err(CommandError::Store(error)) => {
            // Calls that skipped the task while it was claimed look again.
            read.notify_queue();
            Err(error.into())
        }
        Err(CommandError::Conflict) => {
            read.notify_queue();
            tracing::debug!(%task_id, "the task kept changing; trying the next candidate");
            Ok(Leased::Lost)
        }
        Err(error) => {
            tracing::debug!(%task_id, %error, "lease lost; trying the next candidate");
            Ok(Leased::Lost)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Claim, DispatchState};
    use chronicle_projections::task_queue::{Candidate, CandidateGroup};
    use uuid::Uuid;

    fn candidate(group: Option<(&str, u32)>) -> Candidate {
        Candidate {
            id: Uuid::now_v7(),
            group: group.map(|(key, free)| CandidateGroup {
                owner_id: Uuid::nil(),
                key: key.to_owned(),
                limit: 2,
                free,
            }),
        }
    }

    fn ids(claims: &[Claim<'_>]) -> Vec<Uuid> {
        claims.iter().map(|c| c.task_id).collect()
    }

    #[test]
    fn claims_take_no_more_of_a_group_than_it_has_free() {
        let node = DispatchState::default();
        let tasks = [
            candidate(Some(("a", 2))),
            candidate(Some(("a", 2))),
            candidate(Some(("a", 2))),
            candidate(None),
            candidate(Some(("b", 1))),
            candidate(Some(("b", 1))),
        ];
        let first = Claim::take_first(&node, &tasks[..1], 1);
        // The task of `a` another call is leasing takes one of its two slots.
        let second = Claim::take_first(&node, &tasks, 10);
        assert_eq!(ids(&first), [tasks[0].id]);
        assert_eq!(ids(&second), [tasks[1].id, tasks[3].id, tasks[4].id]);
        assert_eq!(second[0].key.as_ref().map(|k| k.key.as_str()), Some("a"));
        assert_eq!(second[1].key, None);
    }

    #[test]
    fn claims_are_a_nodes_own_and_end_with_the_attempt() {
        let (node_a, node_b) = (DispatchState::default(), DispatchState::default());
        let tasks = [candidate(None), candidate(None)];
        let first = Claim::take_first(&node_a, &tasks, 1);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].task_id, tasks[0].id);
        // Another call of the same node skips the claimed task…
        let second = Claim::take_first(&node_a, &tasks, 2);
        assert_eq!(
            second.iter().map(|c| c.task_id).collect::<Vec<_>>(),
            [tasks[1].id]
        );
        // …another node does not know of it: the aggregate decides between nodes.
        assert_eq!(Claim::take_first(&node_b, &tasks, 2).len(), 2);
        assert_eq!(Claim::outstanding(&node_a), 2);
        drop(first);
        drop(second);
        assert_eq!(Claim::outstanding(&node_a), 0);
    }
}
