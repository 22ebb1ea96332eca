//! Routing: one `match` on (method, path segments). Each arm names the route's metrics label
//! and calls its handler; adding an endpoint is adding one line here.

use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::AppState;
use crate::api::{
    admin, audit, ingest, keys, mcp, memories, openapi, ops, prepare, provider_keys, transfer,
};
use crate::error::ApiError;
use crate::http::{Body, error_response};
use crate::proxy;

/// Handles one request; never fails (errors become OpenAI-shaped responses).
pub(crate) async fn route(state: Arc<AppState>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let state = &state;
    // Cluster mode: a request for a vault another node owns is forwarded there whole;
    // `/internal/cluster/…` are the node-to-node routes of a vault move.
    let vault = match &state.cluster {
        Some(node) if segments.first() == Some(&"internal") => {
            let node = std::sync::Arc::clone(node);
            let response = crate::cluster::internal(state, &node, &segments, req)
                .await
                .unwrap_or_else(|| error_response(&unmatched(&method, &segments)));
            state
                .metrics
                .record_request("internal", response.status().as_u16(), started.elapsed());
            return response;
        }
        Some(_) => crate::cluster::vault_of(state, &segments, &req).await,
        None => None,
    };
    // Counted in flight on its vault until the handler returns (a move waits for it).
    let mut _in_flight = None;
    let req = match (&state.cluster, vault) {
        (Some(node), Some(vault)) => match node.route(&vault, req).await {
            crate::cluster::Route::Local(req, guard) => {
                _in_flight = Some(guard);
                req
            }
            crate::cluster::Route::Answered(response) => {
                state.metrics.record_request(
                    "forwarded",
                    response.status().as_u16(),
                    started.elapsed(),
                );
                return response;
            }
        },
        _ => req,
    };

    let (label, result): (&'static str, Result<Response<Body>, ApiError>) =
        match (&method, segments.as_slice()) {
            (&Method::GET, ["healthz"]) => ("GET /healthz", ops::healthz(state)),
            (&Method::GET, ["readyz"]) => ("GET /readyz", ops::readyz(state)),
            (&Method::GET, ["metrics"]) => ("GET /metrics", ops::metrics(state)),
            (&Method::GET, ["openapi.json"]) => ("GET /openapi.json", openapi::handle()),
            (&Method::GET, [] | ["index.html"] | ["assets", _]) => (
                "GET /",
                Ok(crate::dashboard::response(&path, req.headers())),
            ),
            (&Method::POST, ["v1", "keys"]) => ("POST /v1/keys", keys::create(state, req).await),
            (&Method::GET, ["v1", "keys"]) => ("GET /v1/keys", keys::list(state, req).await),
            (&Method::DELETE, ["v1", "keys", id]) => {
                ("DELETE /v1/keys/{id}", keys::revoke(state, req, id).await)
            }
            (&Method::GET, ["v1", "provider-keys"]) => (
                "GET /v1/provider-keys",
                provider_keys::list(state, req).await,
            ),
            (&Method::PUT, ["v1", "provider-keys", p]) => (
                "PUT /v1/provider-keys/{provider}",
                provider_keys::put(state, req, p).await,
            ),
            (&Method::DELETE, ["v1", "provider-keys", p]) => (
                "DELETE /v1/provider-keys/{provider}",
                provider_keys::delete(state, req, p).await,
            ),
            (&Method::POST, ["v1", "memory", "prepare"]) => {
                ("POST /v1/memory/prepare", prepare::handle(state, req).await)
            }
            (&Method::POST, ["v1", "memory", "ingest"]) => {
                ("POST /v1/memory/ingest", ingest::handle(state, req).await)
            }
            (&Method::POST, ["v1", "memory", "search"]) => {
                ("POST /v1/memory/search", memories::search(state, req).await)
            }
            (&Method::GET, ["v1", "memory"]) => {
                ("GET /v1/memory", memories::list(state, req).await)
            }
            (&Method::DELETE, ["v1", "memory"]) => {
                ("DELETE /v1/memory", memories::clear(state, req).await)
            }
            (&Method::GET, ["v1", "memory", "export"]) => {
                ("GET /v1/memory/export", transfer::export(state, req).await)
            }
            (&Method::POST, ["v1", "memory", "import"]) => {
                ("POST /v1/memory/import", transfer::import(state, req).await)
            }
            (&Method::POST, ["v1", "memory", "upload"]) => {
                ("POST /v1/memory/upload", transfer::upload(state, req).await)
            }
            (&Method::POST, ["v1", "memory", "warmup"]) => {
                ("POST /v1/memory/warmup", memories::warmup(state, req).await)
            }
            (&Method::GET, ["v1", "memory", "stats"]) => {
                ("GET /v1/memory/stats", memories::stats(state, req).await)
            }
            (&Method::GET, ["v1", "memory", id]) => {
                ("GET /v1/memory/{id}", memories::get(state, req, id).await)
            }
            (&Method::DELETE, ["v1", "memory", id]) => (
                "DELETE /v1/memory/{id}",
                memories::delete(state, req, id).await,
            ),
            (&Method::GET, ["v1", "audit"]) => ("GET /v1/audit", audit::list(state, req).await),
            (&Method::GET, ["v1", "admin", "overview"]) => {
                ("GET /v1/admin/overview", admin::overview(state, req).await)
            }
            (&Method::POST, ["v1", "chat", "completions"]) => (
                "POST /v1/chat/completions",
                proxy::chat::handle(state, req).await,
            ),
            (&Method::POST, ["v1", "messages"]) => (
                "POST /v1/messages",
                proxy::messages::handle(state, req).await,
            ),
            (&Method::GET, ["v1", "models"]) => {
                ("GET /v1/models", proxy::chat::models(state, req).await)
            }
            (&Method::POST, ["mcp"]) => ("POST /mcp", mcp::handle(state, req).await),
            _ => ("unmatched", Err(unmatched(&method, &segments))),
        };

    let mut response = match result {
        Ok(response) => response,
        Err(error) => error_response(&error),
    };
    if response.status() == StatusCode::METHOD_NOT_ALLOWED
        && let Some(methods) = allowed_methods(&segments)
    {
        response
            .headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static(methods));
    }
    state
        .metrics
        .record_request(label, response.status().as_u16(), started.elapsed());
    if response.status() == StatusCode::INTERNAL_SERVER_ERROR
        || response.status() == StatusCode::SERVICE_UNAVAILABLE
    {
        tracing::warn!(
            route = label,
            status = response.status().as_u16(),
            "request failed"
        );
    } else {
        tracing::debug!(
            route = label,
            status = response.status().as_u16(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "request"
        );
    }
    response
}

/// Paths that exist (with `*` for a parameter) and the methods they answer: a known path
/// with another method is 405 with this `Allow` header (RFC 9110). The first pattern that
/// matches wins, so literal paths come before the `*` that would also match them. A test
/// in `api/openapi.rs` holds this table to the OpenAPI document.
pub(crate) const KNOWN_PATHS: &[(&[&str], &str)] = &[
    (&[], "GET"),
    (&["index.html"], "GET"),
    (&["assets", "*"], "GET"),
    (&["healthz"], "GET"),
    (&["readyz"], "GET"),
    (&["metrics"], "GET"),
    (&["openapi.json"], "GET"),
    (&["mcp"], "POST"),
    (&["v1", "keys"], "GET, POST"),
    (&["v1", "keys", "*"], "DELETE"),
    (&["v1", "provider-keys"], "GET"),
    (&["v1", "provider-keys", "*"], "DELETE, PUT"),
    (&["v1", "memory"], "DELETE, GET"),
    (&["v1", "memory", "prepare"], "POST"),
    (&["v1", "memory", "ingest"], "POST"),
    (&["v1", "memory", "search"], "POST"),
    (&["v1", "memory", "export"], "GET"),
    (&["v1", "memory", "import"], "POST"),
    (&["v1", "memory", "upload"], "POST"),
    (&["v1", "memory", "warmup"], "POST"),
    (&["v1", "memory", "stats"], "GET"),
    (&["v1", "memory", "*"], "DELETE, GET"),
    (&["v1", "admin", "overview"], "GET"),
    (&["v1", "audit"], "GET"),
    (&["v1", "chat", "completions"], "POST"),
    (&["v1", "messages"], "POST"),
    (&["v1", "models"], "GET"),
];

/// The methods a known path answers, for a 405's `Allow` header.
fn allowed_methods(segments: &[&str]) -> Option<&'static str> {
    KNOWN_PATHS
        .iter()
        .find(|(pattern, _)| {
            pattern.len() == segments.len()
                && pattern
                    .iter()
                    .zip(segments)
                    .all(|(p, s)| *p == "*" || p == s)
        })
        .map(|(_, methods)| *methods)
}

fn unmatched(method: &Method, segments: &[&str]) -> ApiError {
    if allowed_methods(segments).is_some() {
        ApiError::method_not_allowed(format!(
            "Method {method} is not allowed on /{}.",
            segments.join("/")
        ))
    } else {
        ApiError::not_found(format!("No route for {method} /{}.", segments.join("/")))
    }
}
