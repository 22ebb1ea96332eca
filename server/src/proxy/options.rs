//! Per-request memory options, read from every spelling clients use.
//!
//! Precedence (API.md, Compatibility): body > query > header > key suffix. Mode aliases:
//! `default`/`all` → on, `none` → off, `selective` → read. MemoryRouter's own body fields
//! (`memory_mode`, `context_limit`, `session_id`, `scope`) are removed before the request
//! is forwarded, because providers reject unknown parameters.

use http::HeaderMap;
use serde_json::{Map, Value};

use super::error::ProxyError;

/// Memories retrieved when no limit is given.
pub(crate) const CONTEXT_LIMIT_DEFAULT: usize = 30;
/// Largest accepted context limit (chunks); more would not fit any model's context.
pub(crate) const CONTEXT_LIMIT_MAX: usize = 200;

pub(crate) use crate::request::MemoryMode as Mode;

/// The resolved memory plan for one proxied request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MemoryPlan {
    pub mode: Mode,
    /// Store the user's turn (mode allows storing and no store=false option).
    pub store_input: bool,
    /// Store the assistant's answer.
    pub store_response: bool,
    /// Chunks to retrieve.
    pub context_limit: usize,
    /// `""` when the request names no session.
    pub session_id: String,
    /// Retrieval restricted to `session_id` (`X-Memory-Scope: session`).
    pub session_scope: bool,
}

/// Resolves the plan. `body` loses MemoryRouter's own fields; `key_mode` is the mode of the
/// key suffix (`mk_…:read`).
pub(crate) fn resolve(
    body: &mut Map<String, Value>,
    query: Option<&str>,
    headers: &HeaderMap,
    key_mode: Mode,
) -> Result<MemoryPlan, ProxyError> {
    let body_mode = body.remove("memory_mode");
    let body_limit = body.remove("context_limit");
    let body_session = body.remove("session_id");
    let body_scope = body.remove("scope");
    let query = parse_query(query.unwrap_or(""));
    let q = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let h = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| headers.get(*n).and_then(|v| v.to_str().ok()))
    };

    let mode_text = match &body_mode {
        Some(Value::String(s)) => Some(s.as_str()),
        Some(Value::Null) | None => q("mode").or_else(|| h(&["x-memory-mode"])),
        Some(_) => {
            return Err(ProxyError::invalid_param(
                "memory_mode must be a string",
                "memory_mode",
            ));
        }
    };
    let mode = match mode_text {
        Some(text) => Mode::parse(text).ok_or_else(|| {
            ProxyError::invalid_param(
                format!("unknown memory mode {text:?}: use on, read, write or off"),
                "memory_mode",
            )
        })?,
        None => key_mode,
    };

    let store_input = flag(
        q("store").or_else(|| h(&["x-memory-store", "x-store-input"])),
        "store",
    )?;
    let store_response = flag(
        q("store_response").or_else(|| h(&["x-memory-store-response", "x-store-response"])),
        "store_response",
    )?;

    let limit = match &body_limit {
        Some(Value::Number(n)) => Some(n.as_u64().ok_or_else(|| {
            ProxyError::invalid_param(
                "context_limit must be a non-negative integer",
                "context_limit",
            )
        })?),
        Some(Value::Null) | None => {
            match q("limit").or_else(|| h(&["x-memory-context-limit", "x-context-limit"])) {
                Some(text) => Some(text.trim().parse::<u64>().map_err(|_| {
                    ProxyError::invalid_param(
                        format!("context limit {text:?} is not an integer"),
                        "context_limit",
                    )
                })?),
                None => None,
            }
        }
        Some(_) => {
            return Err(ProxyError::invalid_param(
                "context_limit must be an integer",
                "context_limit",
            ));
        }
    };
    // 0 means "the default", as in /v1/memory/prepare.
    let context_limit = match limit {
        None | Some(0) => CONTEXT_LIMIT_DEFAULT,
        Some(n) => usize::try_from(n)
            .unwrap_or(usize::MAX)
            .min(CONTEXT_LIMIT_MAX),
    };

    let session_id = match &body_session {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => h(&["x-session-id"]).unwrap_or("").to_owned(),
        Some(_) => {
            return Err(ProxyError::invalid_param(
                "session_id must be a string",
                "session_id",
            ));
        }
    };
    // The bound every stored memory is held to, checked before the provider is called: the
    // exchange is stored with this session once the answer is complete.
    crate::request::check_session_id(&session_id).map_err(|_| {
        ProxyError::invalid_param(
            format!(
                "session_id is longer than {} bytes",
                crate::request::SESSION_ID_BYTES_MAX
            ),
            "session_id",
        )
    })?;
    let scope = match &body_scope {
        Some(Value::String(s)) => Some(s.as_str()),
        _ => h(&["x-memory-scope"]),
    };
    let session_scope =
        scope.is_some_and(|s| s.eq_ignore_ascii_case("session")) && !session_id.is_empty();

    Ok(MemoryPlan {
        mode,
        store_input: mode.stores() && store_input.unwrap_or(true),
        store_response: mode.stores() && store_response.unwrap_or(true),
        context_limit,
        session_id,
        session_scope,
    })
}

fn flag(text: Option<&str>, name: &'static str) -> Result<Option<bool>, ProxyError> {
    let Some(text) = text else { return Ok(None) };
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(Some(true)),
        "false" | "0" | "no" | "off" => Ok(Some(false)),
        _ => Err(ProxyError::invalid_param(
            format!("{name} must be true or false, got {text:?}"),
            name,
        )),
    }
}

/// `a=1&b=x%20y` → pairs, percent- and `+`-decoded.
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(
        body: Value,
        query: &str,
        headers: &[(&str, &str)],
        key: Mode,
    ) -> Result<(MemoryPlan, Map<String, Value>), ProxyError> {
        let mut body = body.as_object().unwrap().clone();
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let p = resolve(&mut body, Some(query), &map, key)?;
        Ok((p, body))
    }

    #[test]
    fn defaults_follow_the_key_suffix() {
        let (p, _) = plan(json!({}), "", &[], Mode::On).unwrap();
        assert_eq!(
            (p.mode, p.store_input, p.store_response, p.context_limit),
            (Mode::On, true, true, 30)
        );
        let (p, _) = plan(json!({}), "", &[], Mode::Read).unwrap();
        assert!(!p.store_input && !p.store_response && p.mode.retrieves());
        let (p, _) = plan(json!({}), "", &[], Mode::Write).unwrap();
        assert!(p.store_input && !p.mode.retrieves());
    }

    #[test]
    fn precedence_is_body_query_header_key() {
        let h = [("x-memory-mode", "off")];
        assert_eq!(plan(json!({}), "", &h, Mode::On).unwrap().0.mode, Mode::Off);
        assert_eq!(
            plan(json!({}), "mode=write", &h, Mode::On).unwrap().0.mode,
            Mode::Write
        );
        let (p, body) = plan(
            json!({"memory_mode": "selective", "model": "m"}),
            "mode=write",
            &h,
            Mode::On,
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Read);
        assert!(!body.contains_key("memory_mode") && body.contains_key("model"));
        let hl = [("x-context-limit", "5")];
        assert_eq!(
            plan(json!({}), "", &hl, Mode::On).unwrap().0.context_limit,
            5
        );
        assert_eq!(
            plan(json!({}), "limit=7", &hl, Mode::On)
                .unwrap()
                .0
                .context_limit,
            7
        );
        assert_eq!(
            plan(json!({"context_limit": 9}), "limit=7", &hl, Mode::On)
                .unwrap()
                .0
                .context_limit,
            9
        );
        assert_eq!(
            plan(json!({"context_limit": 0}), "", &[], Mode::On)
                .unwrap()
                .0
                .context_limit,
            30
        );
    }

    #[test]
    fn store_flags_and_aliases() {
        let (p, _) = plan(json!({}), "", &[("x-store-input", "false")], Mode::On).unwrap();
        assert!(!p.store_input && p.store_response);
        let (p, _) = plan(
            json!({}),
            "store_response=0",
            &[("x-memory-store-response", "true")],
            Mode::On,
        )
        .unwrap();
        assert!(p.store_input && !p.store_response);
        let (p, _) = plan(json!({}), "", &[("x-memory-store", "true")], Mode::Off).unwrap();
        assert!(
            !p.store_input,
            "store=true cannot override a mode that stores nothing"
        );
        for (alias, mode) in [
            ("default", Mode::On),
            ("ALL", Mode::On),
            ("none", Mode::Off),
            ("selective", Mode::Read),
        ] {
            assert_eq!(
                plan(json!({}), "", &[("x-memory-mode", alias)], Mode::Off)
                    .unwrap()
                    .0
                    .mode,
                mode
            );
        }
        assert_eq!(
            plan(json!({}), "mode=bogus", &[], Mode::On)
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            plan(json!({}), "store=maybe", &[], Mode::On)
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            plan(json!({"context_limit": "x"}), "", &[], Mode::On)
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn session_id_is_bounded_like_the_memory_api() {
        let long = "s".repeat(crate::request::SESSION_ID_BYTES_MAX + 1);
        let err = plan(json!({"session_id": long}), "", &[], Mode::On).unwrap_err();
        assert_eq!((err.status(), err.param()), (400, Some("session_id")));
        let err = plan(json!({}), "", &[("x-session-id", &long)], Mode::On).unwrap_err();
        assert_eq!(err.status(), 400);
        let fits = "s".repeat(crate::request::SESSION_ID_BYTES_MAX);
        let (p, _) = plan(json!({"session_id": fits.clone()}), "", &[], Mode::On).unwrap();
        assert_eq!(p.session_id, fits);
    }

    #[test]
    fn session_from_body_or_header() {
        let (p, body) = plan(
            json!({"session_id": "s1", "scope": "session"}),
            "",
            &[("x-session-id", "s2")],
            Mode::On,
        )
        .unwrap();
        assert_eq!(p.session_id, "s1");
        assert!(p.session_scope);
        assert!(body.is_empty());
        let (p, _) = plan(
            json!({}),
            "",
            &[("x-session-id", "s2"), ("x-memory-scope", "session")],
            Mode::On,
        )
        .unwrap();
        assert_eq!((p.session_id.as_str(), p.session_scope), ("s2", true));
        let (p, _) = plan(json!({}), "", &[("x-memory-scope", "session")], Mode::On).unwrap();
        assert!(!p.session_scope, "no session, nothing to scope to");
    }

    #[test]
    fn query_decoding() {
        assert_eq!(
            parse_query("a=x%20y&b=c+d&e"),
            vec![
                ("a".into(), "x y".into()),
                ("b".into(), "c d".into()),
                ("e".into(), "".into())
            ]
        );
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
    }
}
