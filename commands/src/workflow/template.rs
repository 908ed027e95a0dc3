//! Templates inside a step's input: `{{params.<name>[.<path>]}}` and
//! `{{steps.<id>.output[.<path>]}}`. A string that is one template and nothing else takes
//! the JSON value it names, type and all; a template inside a longer string is replaced by
//! the value's text (a string as it is, anything else as compact JSON, nothing for a value
//! that is absent).

use std::sync::OnceLock;

use regex::Regex;
use serde_json::Value;

/// What a template names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// A run parameter, then a path inside its value.
    Param { name: String, path: Vec<String> },
    /// An earlier step's output, then a path inside it.
    StepOutput { step: String, path: Vec<String> },
}

fn pattern() -> &'static Regex {
    static PATTERN: OnceLock<Regex> = OnceLock::new();
    PATTERN.get_or_init(|| Regex::new(r"\{\{\s*([^{}]*?)\s*\}\}").expect("static regex"))
}

/// Parses the text between the braces.
pub fn parse_reference(expression: &str) -> Result<Reference, String> {
    let parts: Vec<&str> = expression.split('.').collect();
    if parts.iter().any(|part| part.is_empty()) {
        return Err(format!("`{{{{{expression}}}}}` has an empty path segment"));
    }
    match parts.as_slice() {
        ["params", name, path @ ..] => Ok(Reference::Param {
            name: (*name).to_owned(),
            path: path.iter().map(|s| (*s).to_owned()).collect(),
        }),
        ["steps", step, "output", path @ ..] => Ok(Reference::StepOutput {
            step: (*step).to_owned(),
            path: path.iter().map(|s| (*s).to_owned()).collect(),
        }),
        _ => Err(format!(
            "`{{{{{expression}}}}}` names neither `params.<name>` nor `steps.<id>.output`"
        )),
    }
}

/// Every reference in the strings of `value` (keys are never templated), or the first
/// expression that does not parse.
pub fn references(value: &Value) -> Result<Vec<Reference>, String> {
    let mut found = Vec::new();
    collect(value, &mut found)?;
    Ok(found)
}

fn collect(value: &Value, found: &mut Vec<Reference>) -> Result<(), String> {
    match value {
        Value::String(text) => {
            for captures in pattern().captures_iter(text) {
                found.push(parse_reference(&captures[1])?);
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(|item| collect(item, found)),
        Value::Object(map) => map.values().try_for_each(|item| collect(item, found)),
        _ => Ok(()),
    }
}

/// The value a reference names in `context` (`{params: {…}, steps: {<id>: {output}}}`);
/// `None` when any part of the path is absent. Numeric segments index arrays.
pub fn lookup<'a>(context: &'a Value, reference: &Reference) -> Option<&'a Value> {
    let (start, path) = match reference {
        Reference::Param { name, path } => (context.get("params")?.get(name)?, path),
        Reference::StepOutput { step, path } => {
            (context.get("steps")?.get(step)?.get("output")?, path)
        }
    };
    path.iter().try_fold(start, |value, segment| match value {
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        Value::Object(map) => map.get(segment),
        _ => None,
    })
}

/// `value` with every template replaced from `context`. Expressions that do not parse are
/// left as they are (definitions are checked when they are accepted).
pub fn render(value: &Value, context: &Value) -> Value {
    match value {
        Value::String(text) => render_string(text, context),
        Value::Array(items) => Value::Array(items.iter().map(|v| render(v, context)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, v)| (key.clone(), render(v, context)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn render_string(text: &str, context: &Value) -> Value {
    let pattern = pattern();
    if let Some(whole) = pattern.captures(text) {
        if whole.get(0).is_some_and(|m| m.len() == text.len()) {
            if let Ok(reference) = parse_reference(&whole[1]) {
                return lookup(context, &reference).cloned().unwrap_or(Value::Null);
            }
        }
    }
    let rendered = pattern.replace_all(
        text,
        |captures: &regex::Captures<'_>| match parse_reference(&captures[1]) {
            Ok(reference) => match lookup(context, &reference) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            },
            Err(_) => captures[0].to_owned(),
        },
    );
    Value::String(rendered.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn context() -> Value {
        json!({
            "params": {"topic": "rust", "count": 3, "filters": {"lang": "en"}},
            "steps": {"search": {"output": {"results": [{"url": "https://a.example"}], "total": 7}}},
        })
    }

    #[test]
    fn a_whole_string_template_keeps_the_type() {
        let input = json!({
            "n": "{{params.count}}",
            "filters": "{{ params.filters }}",
            "first": "{{steps.search.output.results.0.url}}",
            "all": "{{steps.search.output.results}}",
            "missing": "{{steps.search.output.nope}}",
        });
        assert_eq!(
            render(&input, &context()),
            json!({
                "n": 3,
                "filters": {"lang": "en"},
                "first": "https://a.example",
                "all": [{"url": "https://a.example"}],
                "missing": null,
            })
        );
    }

    #[test]
    fn inside_a_longer_string_values_are_text() {
        let input = json!(["about {{params.topic}}: {{steps.search.output.total}} of {{params.count}}",
            "{{params.filters}}!", "[{{params.absent}}]", {"{{params.topic}}": "keys stay"}]);
        assert_eq!(
            render(&input, &context()),
            json!(["about rust: 7 of 3", "{\"lang\":\"en\"}!", "[]", {"{{params.topic}}": "keys stay"}])
        );
    }

    #[test]
    fn references_are_parsed_or_refused() {
        let found =
            references(&json!({"a": ["{{params.x}} and {{steps.s1.output.a.b}}"]})).unwrap();
        assert_eq!(
            found,
            [
                Reference::Param {
                    name: "x".into(),
                    path: vec![]
                },
                Reference::StepOutput {
                    step: "s1".into(),
                    path: vec!["a".into(), "b".into()]
                },
            ]
        );
        for bad in [
            "{{env.HOME}}",
            "{{steps.s1.input}}",
            "{{params..x}}",
            "{{params}}",
            "{{}}",
        ] {
            assert!(references(&json!(bad)).is_err(), "{bad}");
        }
        assert!(references(&json!("no templates { here }"))
            .unwrap()
            .is_empty());
    }
}
