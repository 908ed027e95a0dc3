//! Chronicle's integration and black-box tests, one binary to keep link time down.
//!
//! PostgreSQL comes from `CHRONICLE_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); every test creates and drops its own
//! database. A missing PostgreSQL fails the tests, it never skips them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agent_ws;
mod analytics;
mod api;
mod audit_chain;
mod auth;
mod backup;
mod cluster;
mod concurrency_keys;
mod console;
mod crash;
mod db_link;
mod dispatch_limits;
mod edge;
mod error_tracking;
mod feed;
mod helpers;
mod http_agent;
mod import;
mod live;
mod llm;
mod logs;
mod metrics;
mod openapi;
mod oracles;
mod orchestration;
mod projections;
mod rebuild;
mod release;
mod revocation;
mod runbook;
mod schedules;
mod schema_rules;
mod search;
mod server_process;
mod store;
mod sync;
mod teams;
mod workflow_approvals;
mod workflow_failures;
mod workflow_nodes;
mod workflow_templates;
mod workflows;
