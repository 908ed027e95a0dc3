//! What a running run does next, from its state alone: DAG readiness, skips, conditions,
//! input templates, and when the run is over. The process manager carries it out.

use chronicle_commands::workflow::{evaluate_condition, template};
use serde_json::{json, Map, Value};

use super::state::{RunState, RunStatus, StepStatus};
use crate::task::TaskFailure;

/// One thing a run is ready for.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Start the step as a task with this (rendered) input.
    Start {
        step_id: String,
        input: Value,
    },
    Skip {
        step_id: String,
        reason: String,
    },
    /// Wait for a person's decision on the approval step.
    AwaitApproval {
        step_id: String,
    },
    /// The step cannot run (its condition does not evaluate).
    FailStep {
        step_id: String,
        error: TaskFailure,
    },
    /// A step failed for good and no step handles it: so does the run, with its error.
    FailRun {
        step_id: String,
        error: TaskFailure,
    },
    Succeed,
}

/// `{params, steps: {<id>: {status, output, error}}}`: what templates and conditions read.
pub fn context(state: &RunState) -> Value {
    let steps: Map<String, Value> = state
        .steps
        .iter()
        .map(|(id, step)| {
            (
                id.clone(),
                json!({"status": step.status, "output": step.output, "error": step.error}),
            )
        })
        .collect();
    json!({"params": state.params, "steps": steps})
}

/// Everything the run is ready for now; empty while it waits on running steps or
/// approvals, or is over (an approval's deadline is the driver's to notice: it has the
/// clock, see [`RunState::due_approvals`]).
///
/// A failure nothing handles ends the run at once. Otherwise each pending step whose
/// dependencies are all settled ([`RunState::is_settled`]) is started, or skipped when
/// every dependency was skipped, when a dependency failed that its condition does not read
/// the status of, or when its condition is false. Carrying out one answer can make more
/// steps ready: ask again until the answer is empty.
pub fn next(state: &RunState) -> Vec<Next> {
    if state.status != RunStatus::Running {
        return Vec::new();
    }
    if let Some((step_id, step)) = state.unhandled_failure() {
        let error = step.error.clone().unwrap_or_else(|| TaskFailure {
            message: "the step failed".into(),
            code: None,
            details: None,
        });
        return vec![Next::FailRun {
            step_id: step_id.to_owned(),
            error,
        }];
    }
    if state.steps.keys().all(|id| state.is_settled(id)) {
        return vec![Next::Succeed];
    }
    let context = context(state);
    let mut ready = Vec::new();
    for step in state.definition.steps() {
        let pending = state
            .steps
            .get(&step.id)
            .is_some_and(|s| s.status == StepStatus::Pending);
        if !pending {
            continue;
        }
        if !step.depends_on.iter().all(|dep| state.is_settled(dep)) {
            continue;
        }
        let status_of = |dep: &String| state.steps.get(dep).map(|s| s.status);
        let step_id = step.id.clone();
        if !step.depends_on.is_empty()
            && step
                .depends_on
                .iter()
                .all(|dep| status_of(dep) == Some(StepStatus::Skipped))
        {
            ready.push(Next::Skip {
                step_id,
                reason: "every step it depends on was skipped".into(),
            });
            continue;
        }
        if let Some(failed) = step
            .depends_on
            .iter()
            .find(|dep| status_of(dep) == Some(StepStatus::Failed) && !step.handles_failure_of(dep))
        {
            ready.push(Next::Skip {
                step_id,
                reason: format!("step `{failed}`, which it depends on, failed"),
            });
            continue;
        }
        if let Some(condition) = &step.condition {
            match evaluate_condition(condition, &context) {
                Ok(true) => {}
                Ok(false) => {
                    ready.push(Next::Skip {
                        step_id,
                        reason: "its condition was false".into(),
                    });
                    continue;
                }
                Err(message) => {
                    ready.push(Next::FailStep {
                        step_id,
                        error: TaskFailure {
                            message: format!("the condition {message}"),
                            code: Some("condition_failed".into()),
                            details: None,
                        },
                    });
                    continue;
                }
            }
        }
        if step.approval.is_some() {
            ready.push(Next::AwaitApproval { step_id });
            continue;
        }
        let input = template::render(step.input.as_ref().unwrap_or(&Value::Null), &context);
        ready.push(Next::Start { step_id, input });
    }
    ready
}
