//! `/api/workflow-templates`: the built-in workflow templates, and the `{template, params}`
//! form of `POST /api/workflows` that makes an ordinary workflow from one.

use std::collections::BTreeMap;

use axum::Json;
use chronicle_commands::workflow::catalog::{self, TemplateRequest};
use chronicle_commands::workflow::{ParamSpec, StepRequest, WorkflowDefinitionRequest};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::ApiError;
use super::extract::from_json_value;
use super::paging::Page;
use crate::actor::Actor;

/// The body of `POST /api/workflows`: a definition, or a built-in template and its params.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // the document's schema; the handler reads the body with `definition_request`
pub enum CreateWorkflowRequest {
    Definition(WorkflowDefinitionRequest),
    Template(TemplateRequest),
}

/// The definition a `POST /api/workflows` body asks for: the body itself, or what its
/// template makes with its params. A definition's `schedule` is refused with a pointer to
/// the schedules of a workflow (a schedule is its own resource, made once the workflow
/// exists).
pub(crate) fn definition_request(body: Value) -> Result<WorkflowDefinitionRequest, ApiError> {
    if body.get("template").is_some() {
        let request: TemplateRequest = from_json_value(body)?;
        return Ok(request.instantiate()?);
    }
    if body.get("schedule").is_some() {
        return Err(ApiError::validation(
            "schedule",
            "is not supported in a definition: create the workflow, then \
             POST /api/workflows/{id}/schedules",
        ));
    }
    from_json_value(body)
}

/// A built-in template as listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateBody {
    /// What `POST /api/workflows {template}` takes.
    pub name: String,
    pub description: Option<String>,
    /// The params the template declares: their types and defaults (none: required).
    pub params: BTreeMap<String, ParamSpec>,
    pub steps: Vec<StepRequest>,
}

impl From<&WorkflowDefinitionRequest> for TemplateBody {
    fn from(template: &WorkflowDefinitionRequest) -> Self {
        Self {
            name: template.name.clone(),
            description: template.description.clone(),
            params: template.params.clone(),
            steps: template.steps.clone(),
        }
    }
}

/// The built-in workflow templates, with their params and steps.
#[utoipa::path(
    get,
    path = "/workflow-templates",
    operation_id = "list_workflow_templates",
    tag = "workflows",
    responses(
        (status = 200, description = "Every built-in template (one page)", body = Page<TemplateBody>),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn list(_actor: Actor) -> Json<Page<TemplateBody>> {
    Json(Page {
        items: catalog::templates()
            .iter()
            .map(TemplateBody::from)
            .collect(),
        next_cursor: None,
    })
}
