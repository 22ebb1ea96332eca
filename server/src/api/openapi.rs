//! `GET /openapi.json`: the OpenAPI 3.1 description of every route, `docs/openapi.json`
//! compiled into the binary and served as is (no key needed).
//!
//! The document is written by hand (a code generator would cost the slow build a proc-macro
//! stack and still not know our hand-rolled router). It cannot drift from the router: the
//! tests below read the `match` arms of `router.rs` — each method and path pattern, and its
//! metrics label — and fail when a route exists that the document lacks, or the reverse.
//! Schemathesis (`tests/python/test_schemathesis.py`) then holds the real server's answers
//! to the document's schemas, statuses and error codes.

use http::header::{CACHE_CONTROL, HeaderValue};
use http::{Response, StatusCode};

use crate::error::ApiError;
use crate::http::{Body, text_response};

/// The document, exactly as committed.
pub(crate) const DOCUMENT: &str = include_str!("../../../docs/openapi.json");

pub(crate) fn handle() -> Result<Response<Body>, ApiError> {
    let mut response = text_response(StatusCode::OK, DOCUMENT, "application/json");
    // It changes only with the binary; a short cache keeps gateways from re-fetching it.
    response.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::DOCUMENT;

    const ROUTER: &str = include_str!("../router.rs");

    /// One arm of the router's `match`: its method, the paths its pattern matches (a
    /// binding or `_` becomes `{}`), and the metrics label it records.
    #[derive(Debug)]
    struct Arm {
        method: String,
        paths: Vec<String>,
        label: String,
    }

    /// Parses the router's arms from its source: each `(&Method::X, PATTERN) => ("LABEL"`.
    /// Patterns are slices of string literals and bindings, alternatives joined by `|`.
    fn router_arms(source: &str) -> Vec<Arm> {
        let mut arms = Vec::new();
        for chunk in source.split("(&Method::").skip(1) {
            let (method, rest) = chunk.split_once(',').expect("a method, then a comma");
            let (pattern, after) = rest.split_once("=>").expect("an arm has `=>`");
            let label = after
                .split('"')
                .nth(1)
                .expect("each arm names its label first")
                .to_owned();
            let pattern = pattern.trim().trim_end_matches(')').trim();
            let paths = pattern
                .split('|')
                .map(|alternative| {
                    let inner = alternative
                        .trim()
                        .trim_start_matches('[')
                        .trim_end_matches(']');
                    let segments: Vec<String> = inner
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| match s.strip_prefix('"') {
                            Some(literal) => literal.trim_end_matches('"').to_owned(),
                            None => "{}".to_owned(),
                        })
                        .collect();
                    format!("/{}", segments.join("/"))
                })
                .collect();
            arms.push(Arm {
                method: method.trim().to_owned(),
                paths,
                label,
            });
        }
        arms
    }

    /// `/v1/memory/{id}` → `/v1/memory/{}`: parameter names are the document's business.
    fn erase_names(path: &str) -> String {
        path.split('/')
            .map(|s| if s.starts_with('{') { "{}" } else { s })
            .collect::<Vec<_>>()
            .join("/")
    }

    fn document() -> Value {
        serde_json::from_str(DOCUMENT).expect("docs/openapi.json is JSON")
    }

    /// (METHOD, path with `{}`) of every operation in the document.
    fn documented(doc: &Value) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                out.insert((method.to_uppercase(), erase_names(path)));
            }
        }
        out
    }

    #[test]
    fn the_parser_reads_the_router() {
        let arms = router_arms(ROUTER);
        assert!(arms.len() >= 25, "{arms:?}");
        let dashboard = arms.iter().find(|a| a.label == "GET /").expect("dashboard");
        assert_eq!(dashboard.paths, ["/", "/index.html", "/assets/{}"]);
        let get = arms
            .iter()
            .find(|a| a.label == "GET /v1/memory/{id}")
            .expect("get memory");
        assert_eq!(
            (get.method.as_str(), get.paths[0].as_str()),
            ("GET", "/v1/memory/{}")
        );
    }

    /// Every route of the router is in the document, and every operation of the document
    /// is a route of the router. (Broken once by deleting `/v1/memory/stats` from the
    /// document, and once by adding a router arm for `GET /v1/nothing`: both went red.)
    #[test]
    fn the_document_and_the_router_have_the_same_routes() {
        let doc = document();
        let documented = documented(&doc);
        let mut routed = BTreeSet::new();
        for arm in router_arms(ROUTER) {
            for path in arm.paths {
                routed.insert((arm.method.clone(), path));
            }
        }
        let missing: Vec<_> = routed.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&routed).collect();
        assert!(
            missing.is_empty(),
            "routes missing from docs/openapi.json: {missing:?}"
        );
        assert!(
            extra.is_empty(),
            "operations in docs/openapi.json that the router does not have: {extra:?}"
        );
    }

    /// Each arm's metrics label is its method and first path (with the document's
    /// parameter names), so the label a dashboard shows is an operation of the document.
    #[test]
    fn every_metrics_label_is_a_documented_operation() {
        let doc = document();
        for arm in router_arms(ROUTER) {
            let (method, path) = arm.label.split_once(' ').expect("METHOD /path");
            assert_eq!(method, arm.method, "{}", arm.label);
            assert_eq!(erase_names(path), arm.paths[0], "{}", arm.label);
            assert!(
                doc["paths"][path][method.to_lowercase()].is_object(),
                "label {} is not an operation of the document",
                arm.label
            );
        }
    }

    /// The known-path table (405 versus 404, and the 405's `Allow` header) lists each
    /// documented path with exactly the document's methods.
    #[test]
    fn the_405_table_allows_exactly_the_documented_methods() {
        let doc = document();
        let mut table = BTreeSet::new();
        for (segments, methods) in crate::router::KNOWN_PATHS {
            let segments: Vec<&str> = segments
                .iter()
                .map(|s| if *s == "*" { "{}" } else { s })
                .collect();
            let path = format!("/{}", segments.join("/"));
            for method in methods.split(", ") {
                table.insert((method.to_owned(), path.clone()));
            }
        }
        assert_eq!(table, documented(&doc));
    }

    /// Every operation names its operationId, a 2xx answer, and (unless it is open) the 401.
    #[test]
    fn every_operation_is_complete() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut ids = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let id = op["operationId"].as_str().expect("operationId");
                assert!(ids.insert(id.to_owned()), "duplicate operationId {id}");
                let responses = op["responses"].as_object().expect("responses");
                assert!(
                    responses.keys().any(|s| s.starts_with('2')),
                    "{method} {path} has no 2xx"
                );
                let open = op["security"].as_array().is_some_and(Vec::is_empty);
                assert_eq!(
                    responses.contains_key("401"),
                    !open,
                    "{method} {path}: keyed routes answer 401, open ones do not"
                );
            }
        }
    }
}
