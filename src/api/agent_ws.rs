//! `GET /api/agents/{id}/ws`: a remote agent's WebSocket. The server pushes
//! `{"type":"task.assigned","task": LeasedTask}` whenever the agent has a free slot and a
//! task is ready for it (woken by the same signal as the long-poll, so a new task reaches
//! the agent at once); the agent sends `heartbeat`, `progress`, `complete` and `fail`
//! messages with the fields of the HTTP calls, each answered by `ack` or `error`.
//!
//! Messages from the agent (`ref` is optional and echoed back, to match answers):
//! - `{"type":"heartbeat", "running_task_ids"?: [id]}`
//! - `{"type":"progress", "task_id", "lease_id", "progress"}`
//! - `{"type":"complete", "task_id", "lease_id", "output"?}`
//! - `{"type":"fail", "task_id", "lease_id", "error"?}`
//! - `{"type":"auth", "token"}`: a fresh access token or API key of the same user; the
//!   socket then lives as long as it does (acked with its `expires_at`, if any).
//!
//! Answers: `{"type":"ack", "for", "ref"?, "task_id"?, "task"?}` and
//! `{"type":"error", "for"?, "ref"?, "task_id"?, "problem": <problem+json document>}`.
//! A bad message is answered with an error and changes nothing; the connection stays.
//!
//! A browser cannot send headers with a WebSocket, so besides `Authorization` and
//! `X-API-Key` the upgrade accepts `?access_token=<access token or API key>`. Leases pushed
//! on a connection that drops stay with the agent until they expire (`timeout_secs`) or it
//! reconnects and reports; a push that cannot be delivered ends that attempt at once
//! (code `delivery_failed`), so the task is retried without waiting.
//!
//! The socket lives as long as its credentials: it closes with 4401 and a reason when the
//! access token expires (unless an `auth` message extended it first), or within a second of
//! its session ending (logout, refresh-token reuse), its API key being revoked or rotated or
//! its user's roles changing, on whichever node that happened.

use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use chronicle_aggregates::agent::{Agent, AgentLifecycle};
use chronicle_aggregates::task::TaskFailure;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::agents::{acting_agent, agent_context, record_heartbeat, HeartbeatRequest};
use super::error::ApiError;
use super::extract::{from_json_value, IdPath, RequestMeta};
use super::lease::leased_view;
use super::task_updates::{update, PatchRequest, ReportedStatus, Reporter};
use super::views::TaskView;
use super::AppState;
use crate::actor::Actor;
use crate::auth::revocation::{CloseReason, Grant};
use crate::auth::{authenticate_bearer, Authentication};
use crate::bus::CommandContext;
use crate::process::dispatch::{lease_ready, DispatchError, MAX_TASKS_PER_LEASE};
use crate::process::release::fail_held;
use crate::store::StoreError;

/// A ping this often keeps proxies from closing an idle connection and finds dead peers;
/// each also records a heartbeat, so a connected agent stays online (at most one event per
/// heartbeat resolution). Leases are renewed only by the agent's own `heartbeat` messages:
/// an open socket does not prove the work is progressing.
const PING_EVERY: Duration = Duration::from_secs(20);

/// The `error.code` of an attempt whose assignment could not be delivered.
pub const DELIVERY_FAILED: &str = "delivery_failed";

/// Open the agent's WebSocket.
///
/// Upgrades to a WebSocket (`Connection: Upgrade`, `Upgrade: websocket`). The server
/// pushes `{"type":"task.assigned","task": LeasedTask}` while the agent has free slots;
/// the agent sends `heartbeat`, `progress` (`task_id`, `lease_id`, `progress`), `complete`
/// (`task_id`, `lease_id`, `output`) and `fail` (`task_id`, `lease_id`, `error`) messages,
/// each answered by `{"type":"ack"}` or `{"type":"error","problem":…}`; an optional `ref`
/// is echoed. Browsers, which cannot send headers on a WebSocket, may pass the access
/// token or API key as `?access_token=`. The socket closes with 4401 when its credentials
/// expire or are revoked; `{"type":"auth","token"}` extends it with a fresh token of the
/// same user. The caller is checked before the upgrade, so a
/// stranger gets a plain 404 and a deregistered agent a 409 instead of a socket.
#[utoipa::path(
    get,
    path = "/agents/{id}/ws",
    operation_id = "agent_websocket",
    tag = "agents",
    params(
        ("id" = Uuid, Path, description = "The agent's id"),
        ("access_token" = Option<String>, Query, description = "An access token or API key, for clients that cannot send headers (WebSocket upgrades only)"),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket upgrade request"),
        (status = 403, description = "The caller may see the agent but not act as it (auditor)"),
        (status = 404, description = "No such agent, or not yours"),
        (status = 409, description = "The agent is deregistered"),
    ),
)]
#[tracing::instrument(skip_all, fields(agent_id = %id))]
pub async fn connect(
    State(state): State<AppState>,
    actor: Actor,
    grant: Grant,
    meta: RequestMeta,
    IdPath(id): IdPath,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    acting_agent(&state, &actor, id).await?;
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::BadRequest(format!("this route speaks WebSocket only: {rejection}"))
    })?;
    let context = agent_context(&meta, &actor, id);
    let limit = state.settings.body_limit;
    Ok(upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| async move {
            let _open = crate::meters::ConnectionGauge::open("agent_ws");
            let session = Session {
                state,
                actor,
                grant,
                context,
                agent_id: id,
            };
            session.run(socket).await;
        }))
}

struct Session {
    state: AppState,
    actor: Actor,
    /// What the credentials granted; the socket closes when it ends.
    grant: Grant,
    context: CommandContext,
    agent_id: Uuid,
}

/// Why a session ends.
enum End {
    /// The peer closed or vanished.
    Gone,
    /// The server closes with this code and reason.
    Close(u16, &'static str),
}

impl Session {
    async fn run(mut self, mut socket: WebSocket) {
        // Connecting is a sign of life, like a lease call.
        if let Err(error) = record_heartbeat(
            &self.state,
            &self.actor,
            &self.context,
            self.agent_id,
            Some(Vec::new()),
        )
        .await
        {
            let _ = send(&mut socket, error_message(None, None, None, &error)).await;
            close(&mut socket, 1011, "heartbeat failed").await;
            return;
        }
        let read = self.state.read.clone();
        let shutdown = self.state.shutdown.clone();
        let recheck = self.state.settings.dispatch.recheck();
        let revocations = self.state.auth.revocations.clone();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let end = loop {
            // Interest registered before looking, so a task made ready between the look
            // and the wait still wakes this session.
            let signal = read.queue_signal().notified();
            tokio::pin!(signal);
            signal.as_mut().enable();
            // Nothing more is leased or reported on credentials that ended.
            if let Some(reason) = revocations.ended_now(&self.grant) {
                break End::Close(CloseReason::CODE, reason.reason());
            }
            match self.assign(&mut socket).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(end) => break end,
            }
            tokio::select! {
                () = &mut signal => {}
                () = tokio::time::sleep(recheck) => {}
                _ = ping.tick() => {
                    if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                        break End::Gone;
                    }
                    // A connected agent is online; its leases still need its own heartbeats.
                    if let Err(error) = record_heartbeat(
                        &self.state,
                        &self.actor,
                        &self.context,
                        self.agent_id,
                        Some(Vec::new()),
                    )
                    .await
                    {
                        tracing::debug!(?error, "cannot record the socket's heartbeat");
                    }
                }
                () = shutdown.cancelled() => break End::Close(1012, "server restarting"),
                reason = revocations.ended(&self.grant) => {
                    tracing::debug!(reason = reason.reason(), "the socket's credentials ended");
                    break End::Close(CloseReason::CODE, reason.reason());
                }
                received = socket.recv() => match received {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(reason) = revocations.ended_now(&self.grant) {
                            break End::Close(CloseReason::CODE, reason.reason());
                        }
                        let answer = self.handle(text.as_str()).await;
                        if send(&mut socket, answer).await.is_err() {
                            break End::Gone;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let error = ApiError::BadRequest("send messages as JSON text frames".into());
                        if send(&mut socket, error_message(None, None, None, &error)).await.is_err() {
                            break End::Gone;
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break End::Gone,
                },
            }
        };
        if let End::Close(code, reason) = end {
            close(&mut socket, code, reason).await;
        }
        tracing::debug!(agent_id = %self.agent_id, "agent WebSocket closed");
    }

    /// Leases what fits the agent's free slots and pushes it; `Ok(true)` when something was
    /// pushed (there may be room for more).
    async fn assign(&self, socket: &mut WebSocket) -> Result<bool, End> {
        let loaded = match self
            .state
            .store
            .aggregate::<Agent>()
            .load(&self.agent_id.to_string())
            .await
        {
            Ok(loaded) => loaded,
            Err(error) => {
                tracing::warn!(%error, "cannot load the agent; retrying on the next wake-up");
                return Ok(false);
            }
        };
        let Some(agent) = loaded.aggregate.state() else {
            return Err(End::Close(1008, "no such agent"));
        };
        match agent.lifecycle {
            AgentLifecycle::Active => {}
            // A draining agent finishes what it has and takes nothing new.
            AgentLifecycle::Draining => return Ok(false),
            AgentLifecycle::Deregistered => return Err(End::Close(1000, "agent deregistered")),
        }
        let granted = match lease_ready(
            &self.state.bus,
            &self.state.read,
            agent,
            loaded.version,
            MAX_TASKS_PER_LEASE,
            &self.context,
        )
        .await
        {
            Ok(granted) => granted,
            // Drained or deregistered meanwhile: the next wake-up loads it and says which.
            Err(DispatchError::AgentRetired) => return Ok(false),
            Err(error) => {
                tracing::warn!(%error, "dispatch failed; retrying on the next wake-up");
                return Ok(false);
            }
        };
        let mut undelivered = Vec::new();
        for grant in &granted {
            let Some(view) = leased_view(grant) else {
                continue;
            };
            let task_id = view.task.id;
            let message = json!({"type": "task.assigned", "task": view});
            if !undelivered.is_empty() || send(socket, message).await.is_err() {
                undelivered.push(task_id);
            }
        }
        if undelivered.is_empty() {
            return Ok(!granted.is_empty());
        }
        for task_id in undelivered {
            let failure = TaskFailure {
                message: "the assignment could not be delivered to the agent".into(),
                code: Some(DELIVERY_FAILED.into()),
                details: None,
            };
            if let Err(error) = fail_held(
                &self.state.bus,
                &self.state.read,
                self.agent_id,
                task_id,
                failure,
                &self.context,
            )
            .await
            {
                tracing::warn!(%task_id, %error, "cannot return an undelivered task; its lease will expire");
            }
        }
        Err(End::Gone)
    }

    /// One message from the agent, answered.
    async fn handle(&mut self, text: &str) -> Value {
        let mut fields = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(fields)) => fields,
            Ok(_) => {
                let error = ApiError::BadRequest("a message is a JSON object".into());
                return error_message(None, None, None, &error);
            }
            Err(e) => {
                let error = ApiError::BadRequest(format!("the message is not JSON: {e}"));
                return error_message(None, None, None, &error);
            }
        };
        let reference = fields.remove("ref");
        let kind = match fields.remove("type") {
            Some(Value::String(kind)) => kind,
            _ => {
                let error = ApiError::validation(
                    "type",
                    "is required: heartbeat, progress, complete, fail or auth",
                );
                return error_message(None, reference, None, &error);
            }
        };
        let task_id = fields
            .get("task_id")
            .and_then(Value::as_str)
            .and_then(|raw| Uuid::parse_str(raw).ok());
        match self.act(&kind, fields).await {
            Ok(mut ack) => {
                ack.insert("type".into(), json!("ack"));
                ack.insert("for".into(), json!(kind));
                if let Some(reference) = reference {
                    ack.insert("ref".into(), reference);
                }
                Value::Object(ack)
            }
            Err(error) => error_message(Some(&kind), reference, task_id, &error),
        }
    }

    async fn act(
        &mut self,
        kind: &str,
        fields: Map<String, Value>,
    ) -> Result<Map<String, Value>, ApiError> {
        let report = match kind {
            "heartbeat" => {
                let request: HeartbeatRequest = parse(fields)?;
                record_heartbeat(
                    &self.state,
                    &self.actor,
                    &self.context,
                    self.agent_id,
                    request.running_task_ids,
                )
                .await?;
                return Ok(Map::new());
            }
            "auth" => {
                let message: AuthMessage = parse(fields)?;
                return self.extend(&message.token).await;
            }
            "progress" => {
                let message: ProgressMessage = parse(fields)?;
                (
                    message.task_id,
                    PatchRequest {
                        lease_id: Some(message.lease_id),
                        progress: Some(message.progress),
                        ..PatchRequest::default()
                    },
                )
            }
            "complete" => {
                let message: CompleteMessage = parse(fields)?;
                (
                    message.task_id,
                    PatchRequest {
                        status: Some(ReportedStatus::Succeeded),
                        lease_id: Some(message.lease_id),
                        output: Some(message.output),
                        ..PatchRequest::default()
                    },
                )
            }
            "fail" => {
                let message: FailMessage = parse(fields)?;
                (
                    message.task_id,
                    PatchRequest {
                        status: Some(ReportedStatus::Failed),
                        lease_id: Some(message.lease_id),
                        error: message.error,
                        ..PatchRequest::default()
                    },
                )
            }
            other => {
                return Err(ApiError::validation(
                    "type",
                    format!("{other:?} is not one of heartbeat, progress, complete, fail, auth"),
                ))
            }
        };
        let (task_id, request) = report;
        let (task, version) = update(
            &self.state,
            &self.actor,
            Reporter::Agent(self.agent_id),
            &self.context,
            task_id,
            request,
            None,
        )
        .await?;
        let mut ack = Map::new();
        ack.insert("task_id".into(), json!(task_id));
        if let Some(state) = task.state() {
            ack.insert("task".into(), json!(TaskView::new(state, version)));
        }
        Ok(ack)
    }
}

impl Session {
    /// Replaces the socket's credentials with `token`'s, which must name the same user and
    /// still be allowed to act as the agent; on refusal the old ones stay.
    async fn extend(&mut self, token: &str) -> Result<Map<String, Value>, ApiError> {
        let (actor, grant) =
            match authenticate_bearer(&self.state.store, &self.state.auth, token).await {
                (Authentication::Actor(actor), Some(grant)) => (actor, grant),
                (Authentication::Unavailable, _) => {
                    return Err(ApiError::Unavailable(StoreError::Unavailable(
                        "the credentials could not be checked".into(),
                    )))
                }
                _ => {
                    return Err(ApiError::Unauthorized(
                        "the credentials are not valid or have expired",
                    ))
                }
            };
        if actor.id != self.actor.id {
            return Err(ApiError::validation(
                "token",
                "names another user than the one this socket was opened by",
            ));
        }
        acting_agent(&self.state, &actor, self.agent_id).await?;
        self.actor = actor;
        self.grant = grant;
        let mut ack = Map::new();
        if let Some(at) = self.grant.expires_at() {
            ack.insert("expires_at".into(), json!(at));
        }
        Ok(ack)
    }
}

async fn send(socket: &mut WebSocket, message: Value) -> Result<(), axum::Error> {
    socket.send(Message::Text(message.to_string().into())).await
}

async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthMessage {
    token: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProgressMessage {
    task_id: Uuid,
    lease_id: Uuid,
    progress: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompleteMessage {
    task_id: Uuid,
    lease_id: Uuid,
    #[serde(default)]
    output: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailMessage {
    task_id: Uuid,
    lease_id: Uuid,
    error: Option<Value>,
}

/// A message's fields (without `type` and `ref`) as `T`; a wrong field is a 422 naming it.
fn parse<T: DeserializeOwned>(fields: Map<String, Value>) -> Result<T, ApiError> {
    from_json_value(Value::Object(fields))
}

fn error_message(
    kind: Option<&str>,
    reference: Option<Value>,
    task_id: Option<Uuid>,
    error: &ApiError,
) -> Value {
    let mut message = Map::new();
    message.insert("type".into(), json!("error"));
    if let Some(kind) = kind {
        message.insert("for".into(), json!(kind));
    }
    if let Some(reference) = reference {
        message.insert("ref".into(), reference);
    }
    if let Some(task_id) = task_id {
        message.insert("task_id".into(), json!(task_id));
    }
    message.insert("problem".into(), error.problem());
    Value::Object(message)
}
