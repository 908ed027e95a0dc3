//! What the search index holds of a task or a workflow run: its words, owner, team, kind, status
//! and time, made from the aggregate's state.

use chronicle_aggregates::task::Task;
use chronicle_aggregates::workflow_run::WorkflowRun;
use serde_json::Value;

/// The kinds of document, as `kind` in queries and answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DocKind {
    Task,
    WorkflowRun,
}

impl DocKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Task => "task",
            Self::WorkflowRun => "workflow_run",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "task" => Some(Self::Task),
            "workflow_run" => Some(Self::WorkflowRun),
            _ => None,
        }
    }
}

/// One searchable document.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchDoc {
    pub kind: DocKind,
    pub id: String,
    pub owner: String,
    /// The team it belongs to now: the team's members find it.
    pub team: Option<String>,
    pub status: String,
    pub time_ms: i64,
    pub title: String,
    pub body: String,
}

impl SearchDoc {
    pub fn key(&self) -> String {
        key_of(self.kind, &self.id)
    }

    /// What is embedded: the title and the body.
    pub fn text(&self) -> String {
        format!("{}\n{}", self.title, self.body)
    }

    pub fn of_task(task: &Task) -> Option<Self> {
        let state = task.state()?;
        let mut body = String::new();
        push_line(&mut body, state.capability.as_str());
        push_line(&mut body, &state.tags.as_slice().join(" "));
        push_json(&mut body, &state.input);
        if let Some(output) = &state.output {
            push_json(&mut body, output);
        }
        if let Some(error) = &state.error {
            push_line(&mut body, &error.message);
            if let Some(code) = &error.code {
                push_line(&mut body, code);
            }
        }
        let title = match state.tags.as_slice() {
            [] => state.capability.as_str().to_owned(),
            tags => format!("{} [{}]", state.capability.as_str(), tags.join(", ")),
        };
        Some(Self {
            kind: DocKind::Task,
            id: state.id.to_string(),
            owner: state.owner_id.to_string(),
            team: state.team_id.map(|id| id.to_string()),
            status: state.status.as_str().to_owned(),
            time_ms: state.created_at.timestamp_millis(),
            title,
            body: body.trim_end().to_owned(),
        })
    }

    pub fn of_run(run: &WorkflowRun) -> Option<Self> {
        let state = run.state()?;
        let mut body = String::new();
        push_line(&mut body, state.definition.name());
        push_json(&mut body, &Value::Object(state.params.clone()));
        for (step_id, step) in &state.steps {
            push_line(&mut body, step_id);
            if let Some(output) = &step.output {
                push_json(&mut body, output);
            }
            if let Some(error) = &step.error {
                push_line(&mut body, &error.message);
            }
        }
        Some(Self {
            kind: DocKind::WorkflowRun,
            id: state.id.to_string(),
            owner: state.owner_id.to_string(),
            team: state.team_id.map(|id| id.to_string()),
            status: state.status.as_str().to_owned(),
            time_ms: state.started_at.timestamp_millis(),
            title: format!("{} (run)", state.definition.name()),
            body: body.trim_end().to_owned(),
        })
    }
}

pub fn key_of(kind: DocKind, id: &str) -> String {
    format!("{}:{id}", kind.as_str())
}

fn push_line(body: &mut String, text: &str) {
    if !text.is_empty() {
        body.push_str(text);
        body.push('\n');
    }
}

/// The words of a JSON value: its keys and its scalar values, one line per leaf.
fn push_json(body: &mut String, value: &Value) {
    match value {
        Value::Null => {}
        Value::Bool(b) => push_line(body, if *b { "true" } else { "false" }),
        Value::Number(n) => push_line(body, &n.to_string()),
        Value::String(s) => push_line(body, s),
        Value::Array(items) => items.iter().for_each(|item| push_json(body, item)),
        Value::Object(map) => {
            for (key, item) in map {
                match item {
                    Value::String(s) => push_line(body, &format!("{key}: {s}")),
                    Value::Number(n) => push_line(body, &format!("{key}: {n}")),
                    Value::Bool(b) => push_line(body, &format!("{key}: {b}")),
                    other => {
                        push_line(body, key);
                        push_json(body, other);
                    }
                }
            }
        }
    }
}
