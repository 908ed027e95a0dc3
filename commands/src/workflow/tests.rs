use serde_json::{json, Map, Value};

use super::*;

fn definition(value: Value) -> Result<WorkflowDefinition, ValidationErrors> {
    serde_json::from_value::<WorkflowDefinitionRequest>(value)
        .expect("well-formed")
        .validate()
}

fn fields(value: Value) -> Vec<(String, String)> {
    definition(value)
        .expect_err("invalid")
        .0
        .into_iter()
        .map(|e| (e.field, e.message))
        .collect()
}

fn diamond() -> Value {
    json!({
        "name": "research",
        "params": {"topic": {"type": "string"}, "depth": {"type": "integer", "default": 2}},
        "steps": [
            {"id": "search", "capability": "browser.search", "input": {"q": "{{params.topic}}", "n": "{{params.depth}}"}},
            {"id": "open", "capability": "browser.navigate", "depends_on": ["search"],
             "input": {"url": "{{steps.search.output.results.0.url}}"}},
            {"id": "extract", "capability": "browser.extract", "depends_on": ["search"],
             "condition": {">": [{"var": "steps.search.output.total"}, 0]}},
            {"id": "summarise", "capability": "llm.chat", "depends_on": ["open", "extract"],
             "input": {"messages": [{"role": "user", "content": "Summarise {{steps.open.output.text}} about {{params.topic}}"}]}},
            {"id": "ask", "approval": {"prompt": "Publish?", "timeout_secs": 3600}, "depends_on": ["summarise"]},
        ],
    })
}

#[test]
fn a_diamond_with_templates_conditions_and_an_approval_is_accepted() {
    let accepted = definition(diamond()).expect("valid");
    assert_eq!(accepted.name(), "research");
    assert_eq!(accepted.steps().len(), 5);
}

#[test]
fn a_cycle_is_named_in_running_order() {
    let errors = fields(json!({"name": "w", "steps": [
        {"id": "a", "capability": "x.y", "depends_on": ["c"]},
        {"id": "b", "capability": "x.y", "depends_on": ["a"]},
        {"id": "c", "capability": "x.y", "depends_on": ["b"]},
    ]}));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].0.starts_with("steps[") && errors[0].0.ends_with("].depends_on"));
    assert!(
        ["a → b → c → a", "b → c → a → b", "c → a → b → c"]
            .iter()
            .any(|cycle| errors[0].1 == format!("forms a cycle: {cycle}")),
        "{errors:?}"
    );
    let errors = fields(
        json!({"name": "w", "steps": [{"id": "a", "capability": "x.y", "depends_on": ["a"]}]}),
    );
    assert_eq!(
        errors,
        [("steps[0].depends_on".into(), "forms a cycle: a → a".into())]
    );
}

#[test]
fn dangling_and_duplicate_ids_name_their_field() {
    let errors = fields(json!({"name": "w", "steps": [
        {"id": "a", "capability": "x.y"},
        {"id": "b", "capability": "x.y", "depends_on": ["a", "ghost", "a"]},
        {"id": "a", "capability": "x.y"},
        {"id": "bad id!", "capability": "x.y"},
    ]}));
    assert_eq!(
        errors,
        [
            (
                "steps[2].id".into(),
                "`a` is already the id of steps[0]".into()
            ),
            (
                "steps[3].id".into(),
                "must be 1 to 64 letters, digits, `_` or `-`".into()
            ),
            (
                "steps[1].depends_on[1]".into(),
                "no step has the id `ghost`".into()
            ),
            ("steps[1].depends_on[2]".into(), "`a` is named twice".into()),
        ]
    );
}

#[test]
fn templates_may_name_only_declared_params_and_upstream_steps() {
    let errors = fields(
        json!({"name": "w", "params": {"x": {"type": "string"}}, "steps": [
            {"id": "a", "capability": "x.y", "input": "{{params.y}}"},
            {"id": "b", "capability": "x.y", "input": {"v": "{{steps.c.output}}"}},
            {"id": "c", "capability": "x.y", "depends_on": ["a"], "input": ["{{steps.a.output.k}}", "{{params.x}}", "{{env.HOME}}"]},
        ]}),
    );
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert_eq!(
        errors[0],
        (
            "steps[0].input".into(),
            "`params.y` is not a declared param".into()
        )
    );
    assert_eq!(
        errors[1],
        (
            "steps[1].input".into(),
            "`steps.c` is not a step this one depends on".into()
        )
    );
    assert_eq!(errors[2].0, "steps[2].input");
    // Through another step is upstream too.
    definition(json!({"name": "w", "steps": [
        {"id": "a", "capability": "x.y"},
        {"id": "b", "capability": "x.y", "depends_on": ["a"]},
        {"id": "c", "capability": "x.y", "depends_on": ["b"], "input": "{{steps.a.output}}"},
    ]}))
    .expect("a grandparent's output");
}

#[test]
fn conditions_must_be_json_logic() {
    let errors = fields(json!({"name": "w", "steps": [
        {"id": "a", "capability": "x.y", "condition": {"frobnicate": [1, 2]}},
    ]}));
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0, "steps[0].condition");
    assert!(
        errors[0].1.starts_with("is not valid JSON Logic"),
        "{errors:?}"
    );
}

#[test]
fn steps_params_and_approvals_are_checked() {
    let errors = fields(
        json!({"name": " ", "params": {"1x": {"type": "string"}, "n": {"type": "integer", "default": "two"}}, "steps": [
            {"id": "a"},
            {"id": "b", "capability": "Not A Capability", "max_attempts": 0, "timeout_secs": -1},
            {"id": "c", "capability": "x.y", "approval": {"prompt": "ok?"}},
            {"id": "d", "approval": {"prompt": "", "timeout_secs": 0}, "input": {}, "agent_id": "0191e5a6-8e1b-7c4e-9c39-0a8f4f6f6f6f"},
        ]}),
    );
    let named: Vec<&str> = errors.iter().map(|(field, _)| field.as_str()).collect();
    assert_eq!(
        named,
        [
            "name",
            "params.1x",
            "params.n.default",
            "steps[0].capability",
            "steps[1].capability",
            "steps[1].max_attempts",
            "steps[1].timeout_secs",
            "steps[2].approval",
            "steps[3].input",
            "steps[3].approval.prompt",
            "steps[3].approval.timeout_secs",
            "steps[3].agent_id",
        ]
    );
    assert_eq!(
        fields(json!({"name": "w", "steps": []})),
        [("steps".into(), "must hold 1 to 100 steps".into())]
    );
}

#[test]
fn unknown_fields_are_refused_when_parsed() {
    for body in [
        json!({"name": "w", "steps": [], "schedule": "* * * * *"}),
        json!({"name": "w", "steps": [{"id": "a", "capability": "x.y", "retries": 3}]}),
    ] {
        assert!(serde_json::from_value::<WorkflowDefinitionRequest>(body).is_err());
    }
}

#[test]
fn params_bind_with_types_and_defaults() {
    let accepted = definition(diamond()).expect("valid");
    let given = |value: Value| value.as_object().cloned().unwrap_or_default();
    assert_eq!(
        accepted
            .bind_params(given(json!({"topic": "rust"})))
            .expect("bound"),
        given(json!({"topic": "rust", "depth": 2}))
    );
    assert_eq!(
        accepted
            .bind_params(given(json!({"topic": "rust", "depth": 5.0})))
            .expect("a whole float"),
        given(json!({"topic": "rust", "depth": 5.0}))
    );
    let errors = accepted
        .bind_params(given(json!({"depth": "deep", "colour": "red"})))
        .expect_err("bad params");
    let named: Vec<String> = errors.0.into_iter().map(|e| e.field).collect();
    assert_eq!(named, ["params.colour", "params.depth", "params.topic"]);
    assert!(
        accepted.bind_params(Map::new()).is_err(),
        "topic is required"
    );
}

#[test]
fn conditions_evaluate_over_params_and_steps() {
    let data = json!({"params": {"min": 3}, "steps": {"search": {"output": {"total": 7}}}});
    let condition = json!({">": [{"var": "steps.search.output.total"}, {"var": "params.min"}]});
    assert_eq!(evaluate_condition(&condition, &data), Ok(true));
    let condition = json!({"==": [{"var": "steps.search.output.total"}, 0]});
    assert_eq!(evaluate_condition(&condition, &data), Ok(false));
    assert_eq!(
        evaluate_condition(&json!({"var": "steps.none"}), &data),
        Ok(false)
    );
    assert_eq!(evaluate_condition(&json!(true), &data), Ok(true));
}

#[test]
fn a_condition_reads_the_status_of_the_steps_its_vars_name() {
    let reads = |condition: Value| {
        status_reads(&condition)
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        reads(json!({"==": [{"var": "steps.approve.status"}, "failed"]})),
        ["approve"]
    );
    assert_eq!(
        reads(json!({"and": [
            {"var": ["steps.a.error.code", ""]},
            {"!": {"var": "steps.b"}},
            {"==": [{"var": "steps.c.output.status"}, "failed"]},
            {"var": "params.steps"},
        ]})),
        ["a", "b"]
    );
    // Only what can be read off the definition counts.
    assert!(reads(json!({"var": {"cat": ["steps.", "a", ".status"]}})).is_empty());
    assert!(reads(json!({"var": "steps"})).is_empty());
    assert!(reads(json!({"var": "steps..status"})).is_empty());
    assert!(reads(json!(true)).is_empty());
}

#[test]
fn a_failure_is_handled_by_a_direct_dependant_reading_its_status() {
    let accepted = definition(json!({"name": "w", "steps": [
        {"id": "a", "capability": "x.y"},
        {"id": "b", "capability": "x.y", "depends_on": ["a"],
         "condition": {"==": [{"var": "steps.a.status"}, "failed"]}},
        {"id": "c", "capability": "x.y", "depends_on": ["b"],
         "condition": {"==": [{"var": "steps.a.status"}, "failed"]}},
        {"id": "d", "capability": "x.y", "depends_on": ["c"],
         "condition": {"==": [{"var": "steps.c.output.ok"}, true]}},
    ]}))
    .expect("valid");
    assert!(accepted.failure_is_handled("a"));
    assert!(accepted.steps()[1].handles_failure_of("a"));
    // `c` reads `a` but depends on it only through `b`; `d` reads `c`'s output only.
    assert!(!accepted.steps()[2].handles_failure_of("a"));
    assert!(!accepted.failure_is_handled("b"));
    assert!(!accepted.failure_is_handled("c"));
    assert!(!accepted.failure_is_handled("d"));
}
