//! Workflow definitions: a DAG of steps, checked before anything is stored. A step runs a
//! task (`capability` + `input`) or waits for a person (`approval`); it may depend on
//! earlier steps, carry a JSON Logic `condition` over `{params, steps}`, and template its
//! input from the run's params and its ancestors' outputs.
//!
//! What is checked: unique step ids, `depends_on` naming existing steps, no cycles (the
//! error names one, `a → b → a`), templates naming declared params and steps the step
//! depends on (directly or through others), conditions that compile as JSON Logic, param
//! names, types and defaults, and each step's task settings.

pub mod catalog;
pub mod template;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::OnceLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::values::{Capability, RetryPolicy, TimeoutSecs};
use crate::ValidationErrors;
use template::Reference;

/// Most steps one workflow may have.
pub const MAX_STEPS: usize = 100;
/// The longest an approval may wait: 30 days.
pub const MAX_APPROVAL_SECS: i64 = 30 * 86_400;

/// The JSON type a param's value must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    String,
    Number,
    Integer,
    Boolean,
    Object,
    Array,
}

impl ParamType {
    pub fn admits(self, value: &Value) -> bool {
        match self {
            Self::String => value.is_string(),
            Self::Number => value.is_number(),
            Self::Integer => {
                value.is_i64()
                    || value.is_u64()
                    || value
                        .as_f64()
                        .is_some_and(|f| f.fract() == 0.0 && f.is_finite())
            }
            Self::Boolean => value.is_boolean(),
            Self::Object => value.is_object(),
            Self::Array => value.is_array(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Number => "number",
            Self::Integer => "integer",
            Self::Boolean => "boolean",
            Self::Object => "object",
            Self::Array => "array",
        }
    }
}

/// One declared param: its type and, unless required, a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// A param without a default must be given when a run starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
}

/// A step that waits for the run's owner to approve or reject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalSpec {
    /// What the person is asked: 1 to 2,000 characters.
    pub prompt: String,
    /// Rejected when no decision comes within this many seconds (at most 30 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<i64>,
}

/// One step as a client writes it.
///
/// Failures: a step fails for good when its task used up its attempts (or was cancelled),
/// its approval was rejected or timed out, or its condition could not be evaluated. A
/// failure nothing handles fails the run. A failure is handled when a step that depends on
/// the failed one directly has a `condition` reading its status (see `condition`); then the
/// run goes on: the handling steps are decided by their conditions, every other step that
/// depends on the failed one directly is skipped (its input cannot be taken from a failed
/// step), and skips propagate as usual. A run whose every failure was handled succeeds; the
/// failed steps keep the status `failed` and their `error` in the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepRequest {
    /// 1 to 64 letters, digits, `_` or `-`; unique in the workflow.
    pub id: String,
    /// The task's capability; absent for an approval step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
    /// The task's input; strings may hold `{{params.x}}` and `{{steps.<id>.output.<path>}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// JSON Logic over `{params, steps: {<id>: {status, output, error}}}`; a false
    /// condition skips the step. A condition that reads the status of a step this one
    /// depends on directly — a `var` of `steps.<id>.status`, `steps.<id>.error[.…]` or
    /// `steps.<id>` — *handles* that step's failure: when it fails, the run goes on and this
    /// step is decided by its condition (the failed step's `status` is `"failed"`, its
    /// `error` the failure). This is read off the definition when it is accepted, so it does
    /// not depend on how the run went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<Uuid>,
    /// Instead of `capability` and `input`: wait for a person's decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalSpec>,
}

/// A workflow definition as a client writes it (JSON, or YAML at the HTTP edge).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowDefinitionRequest {
    /// 1 to 100 characters, no control characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$"
    )]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Names are letters, digits and `_`, not starting with a digit.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, ParamSpec>,
    /// 1 to 100 steps.
    #[schema(min_items = 1, max_items = 100)]
    pub steps: Vec<StepRequest>,
}

/// A definition that passed every check; what a Workflow aggregate stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkflowDefinition(WorkflowDefinitionRequest);

fn step_id_pattern() -> &'static Regex {
    static PATTERN: OnceLock<Regex> = OnceLock::new();
    PATTERN.get_or_init(|| Regex::new(r"^[A-Za-z0-9_-]{1,64}$").expect("static regex"))
}

fn param_name_pattern() -> &'static Regex {
    static PATTERN: OnceLock<Regex> = OnceLock::new();
    PATTERN.get_or_init(|| Regex::new(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$").expect("static regex"))
}

/// Checks that a condition is JSON Logic: every object is one operation the engine knows
/// (the engine itself compiles an unknown operator and fails only when it runs), and the
/// whole compiles.
pub fn compile_condition(condition: &Value) -> Result<(), String> {
    let engine = datalogic_rs::Engine::new();
    check_operators(condition, &engine)?;
    engine
        .compile(condition.to_string().as_str())
        .map(|_| ())
        .map_err(|e| format!("is not valid JSON Logic: {e}"))
}

fn check_operators(rule: &Value, engine: &datalogic_rs::Engine) -> Result<(), String> {
    match rule {
        Value::Object(map) => {
            let mut entries = map.iter();
            match (entries.next(), entries.next()) {
                (Some((operator, arguments)), None) => {
                    if !engine
                        .builtin_operator_names()
                        .any(|known| known == operator)
                    {
                        return Err(format!(
                            "is not valid JSON Logic: unknown operator `{operator}`"
                        ));
                    }
                    check_operators(arguments, engine)
                }
                _ => Err("is not valid JSON Logic: an operation is an object with one key".into()),
            }
        }
        Value::Array(items) => items
            .iter()
            .try_for_each(|item| check_operators(item, engine)),
        _ => Ok(()),
    }
}

/// The steps whose status a condition reads: the `<id>` of each `var` (a string, or the
/// first item of an array) naming `steps.<id>`, `steps.<id>.status` or
/// `steps.<id>.error[.<path>]`. A path built at run time (a `var` of an operation) reads
/// nothing that can be known here.
pub fn status_reads(condition: &Value) -> BTreeSet<&str> {
    let mut found = BTreeSet::new();
    collect_status_reads(condition, &mut found);
    found
}

fn collect_status_reads<'a>(rule: &'a Value, found: &mut BTreeSet<&'a str>) {
    match rule {
        Value::Object(map) => {
            for (operator, arguments) in map {
                let path = match (operator.as_str(), arguments) {
                    ("var", Value::String(path)) => Some(path.as_str()),
                    ("var", Value::Array(items)) => items.first().and_then(Value::as_str),
                    _ => None,
                };
                if let Some(step) = path.and_then(status_read) {
                    found.insert(step);
                }
                collect_status_reads(arguments, found);
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|item| collect_status_reads(item, found)),
        _ => {}
    }
}

/// The step a `var` path reads the status of, if it does.
fn status_read(path: &str) -> Option<&str> {
    let mut parts = path.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("steps"), Some(step), None | Some("status" | "error")) if !step.is_empty() => {
            Some(step)
        }
        _ => None,
    }
}

impl StepRequest {
    /// Whether this step handles the failure of `step_id`: it depends on it directly and
    /// its condition reads its status.
    pub fn handles_failure_of(&self, step_id: &str) -> bool {
        self.depends_on.iter().any(|d| d == step_id)
            && self
                .condition
                .as_ref()
                .is_some_and(|condition| status_reads(condition).contains(step_id))
    }
}

/// Evaluates a condition over `data` (`{params, steps}`) to its JSON Logic truth.
pub fn evaluate_condition(condition: &Value, data: &Value) -> Result<bool, String> {
    let result = datalogic_rs::Engine::new()
        .eval_str(condition.to_string().as_str(), data.to_string().as_str())
        .map_err(|e| format!("could not be evaluated: {e}"))?;
    let value: Value =
        serde_json::from_str(&result).map_err(|e| format!("gave no JSON value: {e}"))?;
    Ok(truthy(&value))
}

/// JSON Logic's truth: `false`, `null`, `0`, `""` and `[]` are false.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(_) => true,
    }
}

impl WorkflowDefinitionRequest {
    /// Checks everything; every problem found is reported, each naming its field.
    pub fn validate(self) -> Result<WorkflowDefinition, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            errors.push(
                "name",
                "must be 1 to 100 characters, without control characters",
            );
        }
        if self
            .description
            .as_ref()
            .is_some_and(|d| d.chars().count() > 2000)
        {
            errors.push("description", "must be at most 2,000 characters");
        }
        for (param, spec) in &self.params {
            if !param_name_pattern().is_match(param) {
                errors.push(
                    format!("params.{param}"),
                    "must be letters, digits and `_`, not starting with a digit",
                );
            }
            if let Some(default) = &spec.default {
                if !spec.kind.admits(default) {
                    errors.push(
                        format!("params.{param}.default"),
                        format!("must be of type {}", spec.kind.name()),
                    );
                }
            }
        }
        if self.steps.is_empty() || self.steps.len() > MAX_STEPS {
            errors.push("steps", "must hold 1 to 100 steps");
        }
        let mut index_of: HashMap<&str, usize> = HashMap::new();
        for (i, step) in self.steps.iter().enumerate() {
            if !step_id_pattern().is_match(&step.id) {
                errors.push(
                    format!("steps[{i}].id"),
                    "must be 1 to 64 letters, digits, `_` or `-`",
                );
            } else if let Some(first) = index_of.insert(step.id.as_str(), i) {
                errors.push(
                    format!("steps[{i}].id"),
                    format!("`{}` is already the id of steps[{first}]", step.id),
                );
                index_of.insert(step.id.as_str(), first);
            }
        }
        for (i, step) in self.steps.iter().enumerate() {
            check_step(i, step, &index_of, &mut errors);
        }
        let dangling = errors.0.iter().any(|e| e.field.contains(".depends_on"));
        if !dangling {
            if let Some((i, cycle)) = find_cycle(&self.steps, &index_of) {
                errors.push(
                    format!("steps[{i}].depends_on"),
                    format!("forms a cycle: {}", cycle.join(" → ")),
                );
            } else {
                check_references(&self, &index_of, &mut errors);
            }
        }
        errors.finish(|| WorkflowDefinition(self))
    }
}

fn check_step(
    i: usize,
    step: &StepRequest,
    index_of: &HashMap<&str, usize>,
    errors: &mut ValidationErrors,
) {
    let at = |field: &str| format!("steps[{i}].{field}");
    match (&step.approval, &step.capability) {
        (Some(approval), None) => {
            if step.input.is_some() {
                errors.push(at("input"), "an approval step has no input");
            }
            let prompt = approval.prompt.trim();
            if prompt.is_empty() || prompt.chars().count() > 2000 {
                errors.push(at("approval.prompt"), "must be 1 to 2,000 characters");
            }
            if approval
                .timeout_secs
                .is_some_and(|t| !(1..=MAX_APPROVAL_SECS).contains(&t))
            {
                errors.push(
                    at("approval.timeout_secs"),
                    "must be 1 to 2,592,000 (30 days)",
                );
            }
            for field in ["max_attempts", "timeout_secs", "agent_id"] {
                let given = match field {
                    "max_attempts" => step.max_attempts.is_some(),
                    "timeout_secs" => step.timeout_secs.is_some(),
                    _ => step.agent_id.is_some(),
                };
                if given {
                    errors.push(at(field), "an approval step runs no task");
                }
            }
        }
        (Some(_), Some(_)) => {
            errors.push(
                at("approval"),
                "a step has either `approval` or `capability`",
            );
        }
        (None, None) => errors.push(
            at("capability"),
            "is required unless the step is an approval",
        ),
        (None, Some(capability)) => {
            errors.check(&at("capability"), Capability::parse(capability));
            if let Some(max) = step.max_attempts {
                if !(1..=i64::from(RetryPolicy::MAX_ATTEMPTS)).contains(&max) {
                    errors.push(at("max_attempts"), "must be 1 to 100");
                }
            }
            if let Some(timeout) = step.timeout_secs {
                errors.check(&at("timeout_secs"), TimeoutSecs::new(timeout));
            }
        }
    }
    let mut seen = HashSet::new();
    for (d, dependency) in step.depends_on.iter().enumerate() {
        if !index_of.contains_key(dependency.as_str()) {
            errors.push(
                format!("steps[{i}].depends_on[{d}]"),
                format!("no step has the id `{dependency}`"),
            );
        } else if !seen.insert(dependency.as_str()) {
            errors.push(
                format!("steps[{i}].depends_on[{d}]"),
                format!("`{dependency}` is named twice"),
            );
        }
    }
    if let Some(condition) = &step.condition {
        errors.check(&at("condition"), compile_condition(condition));
    }
}

/// A cycle through `depends_on`, as the step index where it was found and the ids along
/// it, the first repeated at the end.
fn find_cycle(
    steps: &[StepRequest],
    index_of: &HashMap<&str, usize>,
) -> Option<(usize, Vec<String>)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(
        i: usize,
        steps: &[StepRequest],
        index_of: &HashMap<&str, usize>,
        marks: &mut [Mark],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        marks[i] = Mark::OnPath;
        path.push(i);
        for dependency in &steps[i].depends_on {
            let Some(&j) = index_of.get(dependency.as_str()) else {
                continue;
            };
            match marks[j] {
                Mark::OnPath => {
                    let start = path.iter().position(|&k| k == j).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(j);
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(j, steps, index_of, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[i] = Mark::Done;
        None
    }
    let mut marks = vec![Mark::New; steps.len()];
    for i in 0..steps.len() {
        if marks[i] == Mark::New {
            if let Some(cycle) = visit(i, steps, index_of, &mut marks, &mut Vec::new()) {
                // `depends_on` points backwards in time: say it in running order.
                let ids: Vec<String> = cycle.iter().rev().map(|&k| steps[k].id.clone()).collect();
                return Some((cycle[0], ids));
            }
        }
    }
    None
}

/// The steps `i` depends on, directly or through others (the DAG has no cycle).
fn ancestors<'a>(
    i: usize,
    steps: &'a [StepRequest],
    index_of: &HashMap<&str, usize>,
) -> HashSet<&'a str> {
    let mut found = HashSet::new();
    let mut stack: Vec<usize> = vec![i];
    while let Some(k) = stack.pop() {
        for dependency in &steps[k].depends_on {
            if found.insert(dependency.as_str()) {
                if let Some(&j) = index_of.get(dependency.as_str()) {
                    stack.push(j);
                }
            }
        }
    }
    found
}

fn check_references(
    definition: &WorkflowDefinitionRequest,
    index_of: &HashMap<&str, usize>,
    errors: &mut ValidationErrors,
) {
    for (i, step) in definition.steps.iter().enumerate() {
        let Some(input) = &step.input else {
            continue;
        };
        let field = format!("steps[{i}].input");
        match template::references(input) {
            Err(message) => errors.push(field, message),
            Ok(references) => {
                let upstream = ancestors(i, &definition.steps, index_of);
                for reference in references {
                    match reference {
                        Reference::Param { name, .. } if !definition.params.contains_key(&name) => {
                            errors.push(&field, format!("`params.{name}` is not a declared param"));
                        }
                        Reference::StepOutput { step: other, .. }
                            if !upstream.contains(other.as_str()) =>
                        {
                            errors.push(
                                &field,
                                format!("`steps.{other}` is not a step this one depends on"),
                            );
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

impl WorkflowDefinition {
    pub fn name(&self) -> &str {
        self.0.name.trim()
    }

    pub fn request(&self) -> &WorkflowDefinitionRequest {
        &self.0
    }

    pub fn steps(&self) -> &[StepRequest] {
        &self.0.steps
    }

    /// Whether a failure of `step_id` is handled, rather than failing the run: some step
    /// [`handles_failure_of`](StepRequest::handles_failure_of) it.
    pub fn failure_is_handled(&self, step_id: &str) -> bool {
        self.0
            .steps
            .iter()
            .any(|step| step.handles_failure_of(step_id))
    }

    /// The params of a run: those given, checked against their declared types, with the
    /// defaults of the rest; unknown or missing ones are errors naming `params.<name>`.
    pub fn bind_params(
        &self,
        given: Map<String, Value>,
    ) -> Result<Map<String, Value>, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        for name in given.keys() {
            if !self.0.params.contains_key(name) {
                errors.push(format!("params.{name}"), "is not a param of this workflow");
            }
        }
        let mut bound = Map::new();
        for (name, spec) in &self.0.params {
            match given.get(name).or(spec.default.as_ref()) {
                Some(value) if spec.kind.admits(value) => {
                    bound.insert(name.clone(), value.clone());
                }
                Some(_) => errors.push(
                    format!("params.{name}"),
                    format!("must be of type {}", spec.kind.name()),
                ),
                None => errors.push(format!("params.{name}"), "is required"),
            }
        }
        errors.finish(|| bound)
    }
}

#[cfg(test)]
mod tests;
