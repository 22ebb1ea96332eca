//! The provider table: which upstream a `provider/model` name goes to.
//!
//! Base URLs come only from here (built-ins, overridden or extended by `[providers.NAME]` in
//! the config). Nothing in a request can name a host, so the proxy cannot be pointed at an
//! internal address by a client (no SSRF through request fields).

use std::collections::BTreeMap;

use http::Uri;
use serde::Deserialize;

use super::error::ProxyError;

/// Longest provider name accepted in config (it also appears in URLs of the key store).
pub(crate) const PROVIDER_NAME_BYTES_MAX: usize = 64;

/// The wire format a provider speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI Chat Completions: `POST {base_url}/chat/completions`, `Authorization: Bearer`.
    Openai,
    /// Anthropic Messages: `POST {base_url}/v1/messages`, `x-api-key`.
    Anthropic,
}

/// One `[providers.NAME]` table of the config file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Required for a new provider; for a built-in it must match (or be left out).
    pub kind: Option<ProviderKind>,
    /// Required for a new provider; overrides a built-in's URL (e.g. a regional endpoint).
    pub base_url: Option<String>,
    /// Model ids (without the prefix) listed by `GET /v1/models`.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Whether a request without any provider key is refused with 400 before calling out.
    /// Defaults: true for the hosted built-ins, false for `ollama` and new providers (local
    /// OpenAI-compatible servers such as vLLM or llama.cpp usually need none).
    pub key_required: Option<bool>,
}

/// A resolved provider.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    /// Without a trailing slash.
    pub base_url: String,
    pub models: Vec<String>,
    pub key_required: bool,
}

impl Provider {
    /// The URL a chat request goes to.
    pub(crate) fn chat_url(&self) -> Result<Uri, ProxyError> {
        let path = match self.kind {
            ProviderKind::Openai => "/chat/completions",
            ProviderKind::Anthropic => "/v1/messages",
        };
        format!("{}{path}", self.base_url)
            .parse()
            .map_err(|e| ProxyError::Config {
                name: self.name.clone(),
                reason: format!("base_url does not form a valid URL: {e}"),
            })
    }
}

/// Built-in providers: name, kind, base URL, whether a key is required, default model list.
/// The model lists are only what `GET /v1/models` shows until the config lists its own;
/// any model id is forwarded whether listed or not.
const BUILTINS: &[(&str, ProviderKind, &str, bool, &[&str])] = &[
    (
        "openai",
        ProviderKind::Openai,
        "https://api.openai.com/v1",
        true,
        &["gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini"],
    ),
    (
        "anthropic",
        ProviderKind::Anthropic,
        "https://api.anthropic.com",
        true,
        &["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"],
    ),
    (
        "openrouter",
        ProviderKind::Openai,
        "https://openrouter.ai/api/v1",
        true,
        &[],
    ),
    (
        "ollama",
        ProviderKind::Openai,
        "http://127.0.0.1:11434/v1",
        false,
        &[],
    ),
    (
        "google",
        ProviderKind::Openai,
        "https://generativelanguage.googleapis.com/v1beta/openai",
        true,
        &["gemini-2.5-flash", "gemini-2.5-pro"],
    ),
];

/// Every provider the proxy can call, by name.
#[derive(Clone, Debug)]
pub(crate) struct ProviderTable {
    providers: BTreeMap<String, Provider>,
}

impl ProviderTable {
    /// The built-ins merged with the config's `[providers.*]` tables; validated once at start.
    pub(crate) fn new(configured: &BTreeMap<String, ProviderConfig>) -> Result<Self, ProxyError> {
        let mut providers: BTreeMap<String, Provider> = BUILTINS
            .iter()
            .map(|&(name, kind, base_url, key_required, models)| {
                let provider = Provider {
                    name: name.to_owned(),
                    kind,
                    base_url: base_url.to_owned(),
                    models: models.iter().map(|m| (*m).to_owned()).collect(),
                    key_required,
                };
                (name.to_owned(), provider)
            })
            .collect();
        for (name, config) in configured {
            let invalid = |reason: String| ProxyError::Config {
                name: name.clone(),
                reason,
            };
            let name_ok = !name.is_empty()
                && name.len() <= PROVIDER_NAME_BYTES_MAX
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !name_ok {
                return Err(invalid(format!(
                    "provider names are 1-{PROVIDER_NAME_BYTES_MAX} of [a-z0-9_-]"
                )));
            }
            let provider = match providers.remove(name) {
                Some(mut builtin) => {
                    if let Some(kind) = config.kind
                        && kind != builtin.kind
                    {
                        return Err(invalid(format!(
                            "kind of the built-in provider is {:?}",
                            builtin.kind
                        )));
                    }
                    if let Some(url) = &config.base_url {
                        builtin.base_url = validate_base_url(url).map_err(invalid)?;
                    }
                    if let Some(models) = &config.models {
                        builtin.models = models.clone();
                    }
                    if let Some(required) = config.key_required {
                        builtin.key_required = required;
                    }
                    builtin
                }
                None => {
                    let kind = config.kind.ok_or_else(|| {
                        invalid("kind = \"openai\" or \"anthropic\" is required".into())
                    })?;
                    let url = config
                        .base_url
                        .as_deref()
                        .ok_or_else(|| invalid("base_url is required".into()))?;
                    Provider {
                        name: name.clone(),
                        kind,
                        base_url: validate_base_url(url).map_err(invalid)?,
                        models: config.models.clone().unwrap_or_default(),
                        key_required: config.key_required.unwrap_or(false),
                    }
                }
            };
            if let Some(model) = provider.models.iter().find(|m| m.trim().is_empty()) {
                return Err(invalid(format!("empty model id {model:?} in models")));
            }
            providers.insert(name.clone(), provider);
        }
        Ok(ProviderTable { providers })
    }

    /// Splits `provider/model` at the first `/` (model ids may contain more slashes, as
    /// OpenRouter's `meta-llama/llama-3.1-8b` do) and finds the provider.
    pub(crate) fn resolve<'m>(&self, model: &'m str) -> Result<(&Provider, &'m str), ProxyError> {
        let (prefix, id) = model
            .split_once('/')
            .filter(|(p, id)| !p.is_empty() && !id.is_empty())
            .ok_or_else(|| ProxyError::BadModel {
                model: model.to_owned(),
            })?;
        let provider = self
            .providers
            .get(prefix)
            .ok_or_else(|| ProxyError::UnknownProvider {
                provider: prefix.to_owned(),
                known: self.names().collect::<Vec<_>>().join(", "),
            })?;
        Ok((provider, id))
    }

    /// Looks a provider up by name.
    pub(crate) fn get(&self, name: &str) -> Option<&Provider> {
        self.providers.get(name)
    }

    /// Provider names in sorted order.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.providers.keys().map(String::as_str)
    }

    /// `GET /v1/models` in the OpenAI list shape, ids carrying the provider prefix.
    pub(crate) fn models_list(&self, created_s: u64) -> serde_json::Value {
        let data: Vec<serde_json::Value> = self
            .providers
            .values()
            .flat_map(|p| {
                p.models.iter().map(move |m| {
                    serde_json::json!({
                        "id": format!("{}/{m}", p.name),
                        "object": "model",
                        "created": created_s,
                        "owned_by": p.name,
                    })
                })
            })
            .collect();
        serde_json::json!({"object": "list", "data": data})
    }
}

/// Checks a configured base URL: absolute http(s) with a host, no query or fragment.
/// Returns it without a trailing slash.
fn validate_base_url(url: &str) -> Result<String, String> {
    let trimmed = url.trim_end_matches('/');
    let uri: Uri = trimmed
        .parse()
        .map_err(|e| format!("base_url {url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(format!(
                "base_url {url:?} must start with http:// or https://"
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("base_url {url:?} has no host"));
    }
    if uri.query().is_some() || trimmed.contains('#') {
        return Err(format!(
            "base_url {url:?} must not have a query or fragment"
        ));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(toml_text: &str) -> Result<ProviderTable, ProxyError> {
        let configured: BTreeMap<String, ProviderConfig> = toml::from_str(toml_text).unwrap();
        ProviderTable::new(&configured)
    }

    #[test]
    fn builtins_resolve_with_their_urls() {
        let t = table("").unwrap();
        let (p, id) = t.resolve("openai/gpt-4o-mini").unwrap();
        assert_eq!((p.kind, id), (ProviderKind::Openai, "gpt-4o-mini"));
        assert_eq!(
            p.chat_url().unwrap().to_string(),
            "https://api.openai.com/v1/chat/completions"
        );
        let (p, _) = t.resolve("anthropic/claude-haiku-4-5").unwrap();
        assert_eq!(
            p.chat_url().unwrap().to_string(),
            "https://api.anthropic.com/v1/messages"
        );
        let (p, id) = t.resolve("openrouter/meta-llama/llama-3.1-8b").unwrap();
        assert_eq!(
            (p.name.as_str(), id),
            ("openrouter", "meta-llama/llama-3.1-8b")
        );
        let (p, _) = t.resolve("google/gemini-2.5-flash").unwrap();
        assert!(p.base_url.ends_with("/v1beta/openai"));
        let (p, _) = t.resolve("ollama/llama3").unwrap();
        assert!(!p.key_required);
    }

    #[test]
    fn bad_and_unknown_models_are_refused() {
        let t = table("").unwrap();
        for model in ["gpt-4o", "/gpt-4o", "openai/", ""] {
            let err = t.resolve(model).unwrap_err();
            assert!(matches!(err, ProxyError::BadModel { .. }), "{model}: {err}");
        }
        let err = t.resolve("nope/x").unwrap_err();
        assert!(matches!(err, ProxyError::UnknownProvider { .. }));
        assert!(err.to_string().contains("openai"));
    }

    #[test]
    fn config_overrides_builtin_and_adds_providers() {
        let t = table(
            r#"
            [openai]
            base_url = "http://127.0.0.1:9999/v1/"
            [vllm]
            kind = "openai"
            base_url = "http://127.0.0.1:8000/v1"
            models = ["qwen"]
            [claude-proxy]
            kind = "anthropic"
            base_url = "http://127.0.0.1:8001"
            key_required = true
            "#,
        )
        .unwrap();
        let (p, _) = t.resolve("openai/gpt-4o").unwrap();
        assert_eq!(
            p.chat_url().unwrap().to_string(),
            "http://127.0.0.1:9999/v1/chat/completions"
        );
        assert!(
            p.key_required,
            "an override keeps the built-in's key requirement"
        );
        let (p, id) = t.resolve("vllm/qwen").unwrap();
        assert_eq!(
            (p.kind, id, p.key_required),
            (ProviderKind::Openai, "qwen", false)
        );
        let (p, _) = t.resolve("claude-proxy/x").unwrap();
        assert_eq!(p.kind, ProviderKind::Anthropic);
        assert!(p.key_required);
        let list = t.models_list(7);
        let ids: Vec<&str> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert!(
            ids.contains(&"vllm/qwen") && ids.contains(&"openai/gpt-4o-mini"),
            "{ids:?}"
        );
        assert_eq!(list["object"], "list");
    }

    #[test]
    fn invalid_config_is_refused_with_the_table_name() {
        for (text, needle) in [
            ("[x]\nbase_url = \"http://h\"", "kind"),
            ("[x]\nkind = \"openai\"", "base_url"),
            ("[x]\nkind = \"openai\"\nbase_url = \"ftp://h\"", "http"),
            (
                "[x]\nkind = \"openai\"\nbase_url = \"http://h/v1?a=b\"",
                "query",
            ),
            ("[openai]\nkind = \"anthropic\"", "kind"),
            ("[Bad]\nkind = \"openai\"\nbase_url = \"http://h\"", "names"),
        ] {
            let err = table(text).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, ProxyError::Config { .. }), "{text}: {msg}");
            assert!(msg.contains(needle), "{text}: {msg}");
        }
        let unknown_field: Result<BTreeMap<String, ProviderConfig>, _> =
            toml::from_str("[x]\nurl = \"http://h\"");
        assert!(unknown_field.is_err());
    }
}
