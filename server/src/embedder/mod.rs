//! The embedder the server runs, built from `[embedder]`: the built-in one, a local model
//! directory, or an OpenAI-compatible endpoint ([`remote`]), wrapped so that `/metrics`
//! sees the time every embedding takes ([`Timed`]).
//!
//! The engine's [`engine::Embedder`] trait is synchronous and the engine never does network
//! I/O: the remote embedder lives here, in the server, and is called by the engine on the
//! blocking pool (ingest and search already run there, `http::blocking`), where it waits
//! for its own small runtime to do the HTTP. So the write path is unchanged: ingest embeds
//! before its one WAL append, and a failed embedding stores nothing.

pub(crate) mod remote;

use std::sync::Arc;
use std::time::Instant;

use engine::analyzer::Analysis;
use engine::{Embedder, EmbedderKind};

use crate::config::{EmbedderChoice, EmbedderSetting};
use crate::error::Error;
use crate::metrics::EmbedderMetrics;

/// The configured embedder, timed into `metrics` (whose `kind` label it sets).
/// `env` looks up `api_key_env`, `stored_key` the first account's stored provider key
/// (`api_key_provider`).
pub(crate) fn open(
    setting: &EmbedderSetting,
    env: &dyn Fn(&str) -> Option<String>,
    stored_key: &dyn Fn(&str) -> Result<Option<String>, Error>,
    metrics: &mut EmbedderMetrics,
) -> Result<Arc<dyn Embedder>, Error> {
    let config_error = |field: &str, reason: String| Error::Config {
        field: field.to_owned(),
        reason,
    };
    let choice = setting.choice();
    let inner: Arc<dyn Embedder> = match choice {
        EmbedderChoice::Builtin => Arc::new(engine::BuiltinEmbedder::new()),
        EmbedderChoice::Local => {
            let dir = setting.model_dir.as_deref().ok_or_else(|| {
                config_error("embedder.model_dir", "kind = \"local\" needs one".into())
            })?;
            let model = engine::LocalModelEmbedder::open(dir)
                .map_err(|e| config_error("embedder.model_dir", e.to_string()))?;
            tracing::info!(embedder = %model.id(), "local embedding model loaded");
            Arc::new(model)
        }
        EmbedderChoice::Openai => {
            let remote =
                remote::RemoteEmbedder::open(setting, env, stored_key, metrics.remote.clone())?;
            tracing::info!(embedder = %remote.id(), "OpenAI-compatible embedder configured");
            Arc::new(remote)
        }
    };
    metrics.kind = label(choice);
    Ok(Arc::new(Timed {
        inner,
        metrics: metrics.timing.clone(),
    }))
}

/// The provider key `provider` stored by the catalog's first account (the one the admin key
/// of the first start belongs to): what `api_key_provider` names.
pub(crate) fn first_account_key(
    catalog: &crate::catalog::Catalog,
    provider: &str,
) -> Result<Option<String>, Error> {
    match catalog.accounts().into_iter().next() {
        Some(account) => Ok(catalog
            .provider_key(&account.id, provider)?
            .map(|k| k.api_key)),
        None => Ok(None),
    }
}

/// The `kind` label of the embedding histograms.
pub(crate) fn label(choice: EmbedderChoice) -> &'static str {
    match choice {
        EmbedderChoice::Builtin => "builtin",
        EmbedderChoice::Local => "local",
        EmbedderChoice::Openai => "openai",
    }
}

/// Times every call into the embedding histograms; otherwise exactly its inner embedder
/// (every method forwards, so an embedder's own overrides keep working).
struct Timed {
    inner: Arc<dyn Embedder>,
    metrics: Arc<crate::metrics::EmbeddingTiming>,
}

impl Timed {
    fn store<T>(&self, call: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = call();
        self.metrics.store.observe(started.elapsed());
        out
    }
}

impl Embedder for Timed {
    fn id(&self) -> &str {
        self.inner.id()
    }

    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn kind(&self) -> EmbedderKind {
        self.inner.kind()
    }

    fn embed_batch(&self, texts: &[&str]) -> engine::Result<Vec<Vec<f32>>> {
        self.store(|| self.inner.embed_batch(texts))
    }

    fn embed_query_batch(&self, texts: &[&str]) -> engine::Result<Vec<Vec<f32>>> {
        let started = Instant::now();
        let out = self.inner.embed_query_batch(texts);
        self.metrics.query.observe(started.elapsed());
        out
    }

    fn embed_analyzed_batch(
        &self,
        texts: &[&str],
        analyses: &[&Analysis],
    ) -> engine::Result<Vec<Vec<f32>>> {
        self.store(|| self.inner.embed_analyzed_batch(texts, analyses))
    }

    fn embed_memories(
        &self,
        own: &[&str],
        indexed: &[&str],
        analyses: &[&Analysis],
    ) -> engine::Result<Vec<Vec<f32>>> {
        self.store(|| self.inner.embed_memories(own, indexed, analyses))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timed_builtin_is_the_builtin_and_counts_its_calls() {
        let mut metrics = EmbedderMetrics::default();
        let e = open(
            &EmbedderSetting::default(),
            &|_| None,
            &|_| Ok(None),
            &mut metrics,
        )
        .unwrap();
        let builtin = engine::BuiltinEmbedder::new();
        assert_eq!(e.id(), builtin.id());
        assert_eq!(
            e.embed("hello there").unwrap(),
            builtin.vector("hello there")
        );
        e.embed_query_batch(&["a", "b"]).unwrap();
        assert_eq!(metrics.kind, "builtin");
        assert_eq!(metrics.timing.store.count(), 1);
        assert_eq!(metrics.timing.query.count(), 1);
    }
}
