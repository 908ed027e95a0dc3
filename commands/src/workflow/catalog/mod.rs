//! The built-in workflow templates (`GET /api/workflow-templates`): definitions kept as
//! JSON files beside this module, each with declared params, and how one becomes an
//! ordinary workflow (`POST /api/workflows {template, params}`).
//!
//! Instantiating copies the template's steps and makes each given param the default of
//! its declaration: the workflow is then executed or scheduled like any other, and a run
//! may still override a param. A param the template declares without a default and the
//! caller does not give stays required at run time.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::WorkflowDefinitionRequest;
use crate::ValidationErrors;

const SOURCES: [&str; 3] = [
    include_str!("research-topic.json"),
    include_str!("monitor-page.json"),
    include_str!("form-fill-with-approval.json"),
];

/// Every built-in template, in the order they are listed.
pub fn templates() -> &'static [WorkflowDefinitionRequest] {
    static TEMPLATES: OnceLock<Vec<WorkflowDefinitionRequest>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        SOURCES
            .iter()
            .map(|source| serde_json::from_str(source).expect("built-in template (tested)"))
            .collect()
    })
}

/// The built-in template named `name`.
pub fn find(name: &str) -> Option<&'static WorkflowDefinitionRequest> {
    templates().iter().find(|template| template.name == name)
}

/// `POST /api/workflows` with a template instead of a definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateRequest {
    /// The name of a built-in template (`GET /api/workflow-templates`).
    pub template: String,
    /// Values for the template's declared params; they become the workflow's defaults.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
    /// The workflow's name; the template's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The workflow's description; the template's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl TemplateRequest {
    /// The definition the template and params make, not yet validated as a definition
    /// (the caller does that, as for any other). An unknown template names `template`; a
    /// param the template does not declare, or of the wrong type, names `params.<name>`.
    pub fn instantiate(self) -> Result<WorkflowDefinitionRequest, ValidationErrors> {
        let Some(template) = find(&self.template) else {
            let known: Vec<&str> = templates().iter().map(|t| t.name.as_str()).collect();
            return Err(ValidationErrors::single(
                "template",
                format!("is not a built-in template (one of {})", known.join(", ")),
            ));
        };
        let mut definition = template.clone();
        let mut errors = ValidationErrors::default();
        for (name, value) in self.params {
            match definition.params.get_mut(&name) {
                None => errors.push(
                    format!("params.{name}"),
                    format!("is not a param of the template `{}`", template.name),
                ),
                Some(spec) if !spec.kind.admits(&value) => errors.push(
                    format!("params.{name}"),
                    format!("must be of type {}", spec.kind.name()),
                ),
                Some(spec) => spec.default = Some(value),
            }
        }
        if let Some(name) = self.name {
            definition.name = name;
        }
        if let Some(description) = self.description {
            definition.description = Some(description);
        }
        errors.finish(|| definition)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn request(body: Value) -> TemplateRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn every_template_is_a_valid_definition_named_as_listed() {
        let names: Vec<&str> = templates().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["research-topic", "monitor-page", "form-fill-with-approval"]
        );
        for template in templates() {
            template
                .clone()
                .validate()
                .unwrap_or_else(|e| panic!("{}: {:?}", template.name, e.0));
            assert!(template.description.is_some(), "{}", template.name);
        }
    }

    #[test]
    fn each_template_instantiates_and_validates_with_its_params_as_defaults() {
        let cases = [
            json!({"template": "research-topic", "params": {"topic": "event sourcing", "max_results": 5}}),
            json!({"template": "monitor-page", "params": {"url": "https://example.com/", "notify_url": "https://hooks.example.com/x"}}),
            json!({"template": "form-fill-with-approval", "params": {"url": "https://example.com/form", "fields": {"#email": "a@example.com"}}, "name": "Sign up"}),
        ];
        for case in cases {
            let given = case["params"].as_object().cloned().unwrap();
            let definition = request(case.clone())
                .instantiate()
                .unwrap()
                .validate()
                .unwrap();
            for (name, value) in &given {
                assert_eq!(
                    definition.request().params[name].default.as_ref(),
                    Some(value)
                );
            }
            // Every param now has a value: a run needs none.
            definition.bind_params(Map::new()).unwrap();
        }
        let named = request(json!({"template": "monitor-page", "name": "Prices"}))
            .instantiate()
            .unwrap();
        assert_eq!(named.name, "Prices");
    }

    #[test]
    fn the_approval_template_waits_before_submitting() {
        let form = find("form-fill-with-approval").unwrap();
        let approve = form.steps.iter().find(|s| s.approval.is_some()).unwrap();
        let submit = form.steps.iter().find(|s| s.id == "submit").unwrap();
        assert_eq!(submit.depends_on, std::slice::from_ref(&approve.id));
    }

    #[test]
    fn an_unknown_template_or_bad_params_name_their_field() {
        let fields = |body: Value| -> Vec<String> {
            let mut fields: Vec<String> = request(body)
                .instantiate()
                .unwrap_err()
                .0
                .into_iter()
                .map(|e| e.field)
                .collect();
            fields.sort();
            fields
        };
        assert_eq!(fields(json!({"template": "nope"})), ["template"]);
        assert_eq!(
            fields(json!({"template": "research-topic", "params": {"topic": 7, "colour": "red"}})),
            ["params.colour", "params.topic"]
        );
        assert_eq!(
            fields(json!({"template": "research-topic", "params": {"max_results": "3"}})),
            ["params.max_results"]
        );
    }
}
