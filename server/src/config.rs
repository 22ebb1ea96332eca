//! Typed configuration, layered defaults < TOML file < `MEMORYROUTER_*` env < CLI flags, and
//! validated once at start with messages that name the setting.
//!
//! Long (~710 lines, 190 of them tests): every setting, its default, env name and
//! range check in one place is what keeps them from drifting apart.
//!
//! ```toml
//! listen = "127.0.0.1:8787"
//! data_dir = "./memoryrouter-data"
//! durability = "fsync"             # or "buffered": acknowledged writes may be lost on power loss
//! proxy_timeout_ms = 300000        # proxy: whole answer, or the gap between stream chunks
//! proxy_connect_timeout_ms = 10000
//!
//! [limits]
//! body_bytes_max = 8388608
//! messages_per_request_max = 1000
//! message_chars_max = 200000
//! requests_per_minute = 1200        # per key; 0 = unlimited
//! account_requests_per_minute = 0   # every key of the account together; 0 = unlimited
//! proxy_requests_per_minute = 600   # proxied calls per key (spends provider keys); 0 = unlimited
//! proxy_tokens_per_minute = 2000000 # estimated tokens of proxied calls per key; 0 = unlimited
//! open_vaults_max = 1024
//! open_vaults_memory_mb = 1024      # heap the open vaults may hold; idle ones beyond are closed
//! connections_max = 1024
//! connections_per_address_max = 256 # one client address; behind a reverse proxy every
//!                                   # client is its address: raise it to connections_max
//! first_byte_timeout_ms = 2000      # a new connection's first byte, else it is closed
//! body_buffer_bytes_max = 268435456 # request bodies buffered at once (503 server_busy above;
//!                                   # default the larger of 256 MiB and body_bytes_max)
//! memtable_records_max = 4096       # records a vault holds in memory before sealing a segment
//!
//! [retrieval]                       # every field optional: defaults follow the embedder
//! similarity_min = 0.3              # prepare: embedding cosine that counts as relevant
//!                                   # (default 0.3 built-in, 0.4 with a local model, 0.8
//!                                   # with multilingual-e5; none for a static model or a
//!                                   # BERT retrieval model such as bge or e5-base, whose
//!                                   # gate was not measured (no bge weights could be
//!                                   # obtained): set it, from `locomo --cosines`)
//! fusion = "weighted"               # or "rrf" (with rrf_k0 = 60)
//! vector_weight = 0.2               # weights of the vector and BM25 lists in the fusion
//! lexical_weight = 0.8
//! prior_max = 0.1                   # most the priors below may add
//! recency_prior_max = 0.03          # recency prior of a memory made now; halves every
//! recency_half_life_days = 30.0
//! session_boost = 0.05              # prior of memories in the request's session
//! candidates_per_k = 2              # each retriever proposes max(k × this, candidates_min)
//! candidates_min = 40
//! date_boost_day = 0.8              # a memory in the window of a day the query names
//! date_boost_month = 0.8            # … of a month it names ("in June")
//! date_boost_year = 0.1             # … of a year it names
//! date_window_days = 7              # window: the date (or month, year) and this many days after
//! session_weight = 0.2              # session-level BM25, added to every turn of the session
//! neighbour_weight = 0.3            # × the better fused score of the previous/next turn
//! question_penalty = 0.3            # taken from memories ending in "?"
//!                                   # (0 turns a signal off; engine::Signals documents each)
//!
//! [embedder]                        # unset = the built-in lexical embedder
//! model_dir = "/models/all-MiniLM-L6-v2"  # kind = "local": a model directory (docs/format.md)
//! # or kind = "openai": an OpenAI-compatible endpoint (see `embedder::remote`)
//! # base_url = "http://127.0.0.1:11434/v1"
//! # model = "nomic-embed-text"
//! # dimensions = 768                # pinned by every vault; answers of another length refused
//! # api_key_env = "OPENAI_API_KEY"  # unset = no Authorization header
//! # api_key_provider = "openai"     # or: the first account's stored provider key of that name
//! # send_dimensions = false         # also send `dimensions` (OpenAI text-embedding-3)
//! # batch_size_max = 32             # texts per request; a larger ingest is split
//! # timeout_ms = 30000              # per request, ingest
//! # query_timeout_ms = 3000         # per request, search (then lexical-only, flagged)
//! # retries_max = 3                 # on 429 (Retry-After honoured), 5xx, timeout, refused
//!
//! [keys]
//! mint = "any"                      # or "admin": only the admin key mints (POST /v1/keys)
//! active_max = 100000               # active keys per account; minting beyond is a 409
//!
//! [ingest]
//! store_system = false              # system messages are instructions, not memories
//!
//! [providers.vllm]                  # any OpenAI- or Anthropic-format server; see proxy::providers
//! kind = "openai"
//! base_url = "http://127.0.0.1:8000/v1"
//! models = ["qwen2.5-7b-instruct"]  # listed by GET /v1/models as vllm/qwen2.5-7b-instruct
//! ```
//!
//! A new section is one more field with `#[serde(default)]` on [`Config`]; the file parser
//! denies unknown keys so a typo is an error, not a silently ignored setting.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::Error;

/// Default listen address: loopback only, so a fresh install is not exposed by accident.
pub(crate) const LISTEN_DEFAULT: &str = "127.0.0.1:8787";
pub(crate) const DATA_DIR_DEFAULT: &str = "./memoryrouter-data";
pub(crate) const BODY_BYTES_MAX_DEFAULT: usize = 8 * 1024 * 1024;
/// Smallest body limit accepted: below this even a one-message ingest cannot fit.
pub(crate) const BODY_BYTES_MAX_FLOOR: usize = 1024;
/// Largest body limit accepted; bodies are buffered in memory.
pub(crate) const BODY_BYTES_MAX_CEILING: usize = 1024 * 1024 * 1024;
pub(crate) const MESSAGES_PER_REQUEST_MAX_DEFAULT: usize = 1000;
pub(crate) const MESSAGE_CHARS_MAX_DEFAULT: usize = 200_000;
pub(crate) const REQUESTS_PER_MINUTE_DEFAULT: u32 = 1200;
/// Off by default: a self-hosted server usually has one account, so this would be a cap on
/// the whole server; operators who host several accounts set it.
pub(crate) const ACCOUNT_REQUESTS_PER_MINUTE_DEFAULT: u32 = 0;
/// Proxied calls per key per minute: ten a second is far above a person chatting and far
/// below what a script with a leaked key would spend.
pub(crate) const PROXY_REQUESTS_PER_MINUTE_DEFAULT: u32 = 600;
/// Estimated tokens (request and requested answer) per key per minute through the proxy.
pub(crate) const PROXY_TOKENS_PER_MINUTE_DEFAULT: u32 = 2_000_000;
/// Active keys an account may hold by default.
pub(crate) const KEYS_ACTIVE_MAX_DEFAULT: usize = 100_000;
/// Largest accepted `[keys] active_max`: the key list is held in memory.
pub(crate) const KEYS_ACTIVE_MAX_CEILING: usize = 10_000_000;
pub(crate) const OPEN_VAULTS_MAX_DEFAULT: usize = 1024;
/// The engine's default bound on the open vaults' heap estimate, in MiB (see
/// `engine::OPEN_VAULTS_MEMORY_BYTES_MAX_DEFAULT` for why 1 GiB).
pub(crate) const OPEN_VAULTS_MEMORY_MB_DEFAULT: u64 =
    engine::OPEN_VAULTS_MEMORY_BYTES_MAX_DEFAULT >> 20;
/// Largest accepted memory bound, in MiB (1 PiB): keeps the conversion to bytes exact.
pub(crate) const OPEN_VAULTS_MEMORY_MB_CEILING: u64 = 1 << 30;
pub(crate) const CONNECTIONS_MAX_DEFAULT: usize = 1024;
/// A quarter of the connections for one client address: a flood of idle or trickling
/// connections from one place leaves three quarters to everyone else.
pub(crate) const CONNECTIONS_PER_ADDRESS_MAX_DEFAULT: usize = CONNECTIONS_MAX_DEFAULT / 4;
/// Time a new connection has to send its first byte. Clients send their request at once;
/// hyper's header timeout (10 s) still bounds a head that trickles in after it.
pub(crate) const FIRST_BYTE_TIMEOUT_MS_DEFAULT: u64 = 2_000;
/// Longest accepted first-byte timeout.
pub(crate) const FIRST_BYTE_TIMEOUT_MS_CEILING: u64 = 600_000;
/// Request bodies buffered at once across all connections: 32 bodies of the default
/// maximum (issue 14: 1,024 connections × 8 MiB could otherwise hold 8 GiB).
pub(crate) const BODY_BUFFER_BYTES_MAX_DEFAULT: usize = 256 * 1024 * 1024;
const _: () = assert!(BODY_BUFFER_BYTES_MAX_DEFAULT >= BODY_BYTES_MAX_DEFAULT);
/// Cosine similarity (of the configured embedder) at which a memory that shares no word
/// with the query still counts as relevant for prepare. 0.3 sits above the built-in
/// embedder's noise between unrelated sentences (measured up to ~0.18) and below its score
/// for paraphrases that share word pieces; see `prepare.rs`.
pub(crate) const SIMILARITY_MIN_DEFAULT: f32 = engine::SIMILARITY_MIN_LEXICAL;
/// Default `similarity_min` with a local semantic model: measured with all-MiniLM-L6-v2 on
/// LoCoMo (`docs/benchmarks.md`), 0.3 admits 4.6 % of unrelated turns, 0.4 admits 0.32 %
/// while keeping 71 % of the evidence by cosine alone.
pub(crate) const SIMILARITY_MIN_LOCAL_MODEL_DEFAULT: f32 = engine::SIMILARITY_MIN_TRANSFORMER;

/// Whether an acknowledged write has been fsynced (`fsync`, the default) or only written
/// to the OS (`buffered`: faster, loses the last moments of writes on power loss).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilitySetting {
    #[default]
    Fsync,
    Buffered,
}

impl DurabilitySetting {
    pub fn to_wal(self) -> wal::Durability {
        match self {
            DurabilitySetting::Fsync => wal::Durability::Fsync,
            DurabilitySetting::Buffered => wal::Durability::Buffered,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body accepted (413 above).
    pub body_bytes_max: usize,
    /// Most messages in one prepare/ingest request (413 above).
    pub messages_per_request_max: usize,
    /// Longest message text, in characters (413 above).
    pub message_chars_max: usize,
    /// Requests per minute per key (429 with `Retry-After` above); 0 = unlimited.
    pub requests_per_minute: u32,
    /// Requests per minute of all the account's keys together (429 above); 0 = unlimited.
    pub account_requests_per_minute: u32,
    /// Proxied calls (`/v1/chat/completions`, `/v1/messages`) per key per minute, on top
    /// of `requests_per_minute`: they spend the account's provider keys. 0 = unlimited.
    pub proxy_requests_per_minute: u32,
    /// Estimated tokens per key per minute through the proxy (request bytes / 4 plus the
    /// answer's `max_tokens`, and what the answer's bytes / 4 exceed that once it is in); a
    /// call is refused while the key's budget is spent. 0 = unlimited.
    pub proxy_tokens_per_minute: u32,
    /// Vaults kept open at once; idle ones beyond are closed (LRU) by the engine.
    pub open_vaults_max: usize,
    /// Heap the open vaults may hold together, in MiB, by the engine's estimate (mapped
    /// segment files are page cache and not counted); idle ones beyond are closed (LRU).
    pub open_vaults_memory_mb: u64,
    /// Simultaneous client connections; more wait in the kernel's accept queue.
    pub connections_max: usize,
    /// Simultaneous connections from one client address; more are answered
    /// `503 too_many_connections` and closed.
    pub connections_per_address_max: usize,
    /// Milliseconds a new connection has to send its first byte before it is closed.
    pub first_byte_timeout_ms: u64,
    /// Bytes of request bodies buffered at once across all connections; a body that does
    /// not fit is refused with `503 server_busy` and `Retry-After`. At least
    /// `body_bytes_max`; unset = the larger of 256 MiB and `body_bytes_max`
    /// ([`Limits::body_buffer_bytes`]).
    pub body_buffer_bytes_max: Option<usize>,
    /// A vault's memtable is sealed into a segment past this many records. The default suits
    /// production; crash campaigns set it small so seals and compactions race the kill.
    pub memtable_records_max: usize,
}

impl Limits {
    /// The bytes of request bodies buffered at once: `body_buffer_bytes_max`, or by
    /// default the larger of [`BODY_BUFFER_BYTES_MAX_DEFAULT`] and `body_bytes_max` (so a
    /// configuration that raised `body_bytes_max` keeps starting).
    pub fn body_buffer_bytes(&self) -> usize {
        self.body_buffer_bytes_max
            .unwrap_or(BODY_BUFFER_BYTES_MAX_DEFAULT.max(self.body_bytes_max))
    }

    /// `open_vaults_memory_mb` in bytes, for `engine::EngineConfig`.
    pub fn open_vaults_memory_bytes(&self) -> u64 {
        self.open_vaults_memory_mb.saturating_mul(1 << 20)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes_max: BODY_BYTES_MAX_DEFAULT,
            messages_per_request_max: MESSAGES_PER_REQUEST_MAX_DEFAULT,
            message_chars_max: MESSAGE_CHARS_MAX_DEFAULT,
            requests_per_minute: REQUESTS_PER_MINUTE_DEFAULT,
            account_requests_per_minute: ACCOUNT_REQUESTS_PER_MINUTE_DEFAULT,
            proxy_requests_per_minute: PROXY_REQUESTS_PER_MINUTE_DEFAULT,
            proxy_tokens_per_minute: PROXY_TOKENS_PER_MINUTE_DEFAULT,
            open_vaults_max: OPEN_VAULTS_MAX_DEFAULT,
            open_vaults_memory_mb: OPEN_VAULTS_MEMORY_MB_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            connections_per_address_max: CONNECTIONS_PER_ADDRESS_MAX_DEFAULT,
            first_byte_timeout_ms: FIRST_BYTE_TIMEOUT_MS_DEFAULT,
            body_buffer_bytes_max: None,
            memtable_records_max: engine::MEMTABLE_RECORDS_MAX_DEFAULT,
        }
    }
}

/// `[retrieval]`: overrides of single fields of the engine's retrieval policy
/// (`engine::RetrievalPolicy`, whose defaults follow the embedder's kind). Unset = default.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retrieval {
    /// `None` = the embedder's default ([`Config::similarity_min`]).
    pub similarity_min: Option<f32>,
    /// `"weighted"` (min-max normalised scores, weighted sum) or `"rrf"` (reciprocal rank).
    pub fusion: Option<FusionSetting>,
    pub vector_weight: Option<f32>,
    pub lexical_weight: Option<f32>,
    /// RRF's rank offset (`rrf` only).
    pub rrf_k0: Option<f32>,
    /// Most the priors (recency, session) may add to a fused score.
    pub prior_max: Option<f32>,
    pub recency_prior_max: Option<f32>,
    pub recency_half_life_days: Option<f32>,
    pub session_boost: Option<f32>,
    pub candidates_per_k: Option<usize>,
    pub candidates_min: Option<usize>,
    /// The recall signals (`engine::Signals`): dates named in the query, session-level
    /// BM25, neighbour smoothing, the question penalty. 0 turns one off.
    pub date_boost_day: Option<f32>,
    pub date_boost_month: Option<f32>,
    pub date_boost_year: Option<f32>,
    pub date_window_days: Option<u32>,
    pub session_weight: Option<f32>,
    pub neighbour_weight: Option<f32>,
    pub question_penalty: Option<f32>,
}

/// How `[retrieval] fusion` combines the vector and BM25 lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FusionSetting {
    Weighted,
    Rrf,
}

/// RRF's usual rank offset, used when `fusion = "rrf"` names none.
const RRF_K0_DEFAULT: f32 = 60.0;

impl Retrieval {
    /// The policy for an embedder of `kind`: its defaults with every set field replaced,
    /// validated (the error names the setting).
    pub(crate) fn policy(
        &self,
        kind: engine::EmbedderKind,
    ) -> Result<engine::RetrievalPolicy, Error> {
        use engine::fusion::FusionMethod;
        let mut p = engine::RetrievalPolicy::for_kind(kind);
        let (mut wv, mut wl) = match p.fusion.method {
            FusionMethod::Weighted {
                vector_weight,
                lexical_weight,
            }
            | FusionMethod::Rrf {
                vector_weight,
                lexical_weight,
                ..
            } => (vector_weight, lexical_weight),
        };
        wv = self.vector_weight.unwrap_or(wv);
        wl = self.lexical_weight.unwrap_or(wl);
        let rrf = match (self.fusion, p.fusion.method) {
            (Some(FusionSetting::Rrf), FusionMethod::Rrf { k0, .. }) => {
                Some(self.rrf_k0.unwrap_or(k0))
            }
            (Some(FusionSetting::Rrf), _) => Some(self.rrf_k0.unwrap_or(RRF_K0_DEFAULT)),
            (None, FusionMethod::Rrf { k0, .. }) => Some(self.rrf_k0.unwrap_or(k0)),
            _ => None,
        };
        p.fusion.method = match rrf {
            Some(k0) => FusionMethod::Rrf {
                k0,
                vector_weight: wv,
                lexical_weight: wl,
            },
            None => FusionMethod::Weighted {
                vector_weight: wv,
                lexical_weight: wl,
            },
        };
        p.fusion.prior_max = self.prior_max.unwrap_or(p.fusion.prior_max);
        p.recency_prior_max = self.recency_prior_max.unwrap_or(p.recency_prior_max);
        p.recency_half_life_days = self
            .recency_half_life_days
            .unwrap_or(p.recency_half_life_days);
        p.session_boost = self.session_boost.unwrap_or(p.session_boost);
        p.candidates_per_k = self.candidates_per_k.unwrap_or(p.candidates_per_k);
        p.candidates_min = self.candidates_min.unwrap_or(p.candidates_min);
        let g = &mut p.signals;
        g.date_boost_day = self.date_boost_day.unwrap_or(g.date_boost_day);
        g.date_boost_month = self.date_boost_month.unwrap_or(g.date_boost_month);
        g.date_boost_year = self.date_boost_year.unwrap_or(g.date_boost_year);
        g.date_window_days = self.date_window_days.unwrap_or(g.date_window_days);
        g.session_weight = self.session_weight.unwrap_or(g.session_weight);
        g.neighbour_weight = self.neighbour_weight.unwrap_or(g.neighbour_weight);
        g.question_penalty = self.question_penalty.unwrap_or(g.question_penalty);
        if self.similarity_min.is_some() {
            p.similarity_min = self.similarity_min;
        }
        if self.rrf_k0.is_some() && rrf.is_none() {
            return Err(invalid(
                "retrieval.rrf_k0",
                "applies only with fusion = \"rrf\"".to_owned(),
            ));
        }
        p.validate().map_err(|reason| {
            let field = reason.split(' ').next().unwrap_or("retrieval");
            invalid(&format!("retrieval.{field}"), reason.clone())
        })?;
        Ok(p)
    }
}

/// `[embedder] kind`: where vectors come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbedderChoice {
    /// The built-in lexical embedder (no file, no network).
    Builtin,
    /// A model directory run in-process (`model_dir`).
    Local,
    /// An OpenAI-compatible `POST {base_url}/embeddings` endpoint (OpenAI, Ollama, vLLM,
    /// llama.cpp server, Hugging Face TEI).
    Openai,
}

/// Default `[embedder] batch_size_max`: texts per request to a remote endpoint. 32 is
/// Hugging Face TEI's default `max_client_batch_size`, the smallest limit among the common
/// servers (OpenAI takes 2,048); a larger ingest is split into several requests.
pub(crate) const EMBEDDER_BATCH_SIZE_MAX_DEFAULT: usize = 32;
/// Largest accepted `batch_size_max` (OpenAI's own limit on inputs per request).
pub(crate) const EMBEDDER_BATCH_SIZE_MAX_CEILING: usize = 2048;
/// Default `[embedder] timeout_ms`: one remote request for an ingest's batch.
pub(crate) const EMBEDDER_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Default `[embedder] query_timeout_ms`: one remote request for a search query. Short,
/// because a chat waits on it and falls back to lexical retrieval past it.
pub(crate) const EMBEDDER_QUERY_TIMEOUT_MS_DEFAULT: u64 = 3_000;
/// Default `[embedder] retries_max`: retries after a 429, a 5xx, a timeout or a refused
/// connection (ingest; a query retries at most once, within its timeout).
pub(crate) const EMBEDDER_RETRIES_MAX_DEFAULT: u32 = 3;
/// Largest accepted `retries_max`.
pub(crate) const EMBEDDER_RETRIES_MAX_CEILING: u32 = 10;
/// Largest accepted `dimensions` (OpenAI's largest model has 3,072).
pub(crate) const EMBEDDER_DIMENSIONS_MAX: usize = 16_384;

/// Which embedder new vaults use. Each vault records the embedder that wrote it and refuses
/// another one (a clear 422 naming both), so change this only for a fresh data directory
/// (or run `memoryrouter reembed`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedderSetting {
    /// Unset = `local` when `model_dir` is set, `openai` when `base_url` is, else `builtin`.
    pub kind: Option<EmbedderChoice>,
    /// A local model directory: a model2vec static model or a BERT sentence-transformer
    /// such as all-MiniLM-L6-v2 (`tokenizer.json`, `model.safetensors`, `config.json`).
    /// Unset = the built-in embedder, which needs no file at all.
    pub model_dir: Option<PathBuf>,
    /// `openai`: the API base, e.g. `https://api.openai.com/v1` or
    /// `http://127.0.0.1:11434/v1` (Ollama); requests go to `{base_url}/embeddings`.
    pub base_url: Option<String>,
    /// `openai`: the model name sent with every request; pinned by every vault.
    pub model: Option<String>,
    /// `openai`: the length of the vectors the model returns; pinned by every vault, and
    /// an answer of another length is refused.
    pub dimensions: Option<usize>,
    /// `openai`: also send `dimensions` in the request (OpenAI's text-embedding-3 models
    /// shorten their vectors on request; other servers may refuse the field).
    pub send_dimensions: bool,
    /// `openai`: the environment variable holding the API key (e.g. `OPENAI_API_KEY`);
    /// unset = no `Authorization` header (a local Ollama or TEI needs none). The key is
    /// read once at start and never written anywhere.
    pub api_key_env: Option<String>,
    /// `openai`: instead of `api_key_env`, the provider key stored (`PUT
    /// /v1/provider-keys/NAME`) under this name by the server's first account (the one
    /// made at first start), read at start.
    pub api_key_provider: Option<String>,
    pub batch_size_max: usize,
    pub timeout_ms: u64,
    pub query_timeout_ms: u64,
    pub retries_max: u32,
}

impl Default for EmbedderSetting {
    fn default() -> Self {
        Self {
            kind: None,
            model_dir: None,
            base_url: None,
            model: None,
            dimensions: None,
            send_dimensions: false,
            api_key_env: None,
            api_key_provider: None,
            batch_size_max: EMBEDDER_BATCH_SIZE_MAX_DEFAULT,
            timeout_ms: EMBEDDER_TIMEOUT_MS_DEFAULT,
            query_timeout_ms: EMBEDDER_QUERY_TIMEOUT_MS_DEFAULT,
            retries_max: EMBEDDER_RETRIES_MAX_DEFAULT,
        }
    }
}

impl EmbedderSetting {
    /// The kind in effect: the configured one, else the one the other fields imply.
    pub fn choice(&self) -> EmbedderChoice {
        self.kind.unwrap_or(if self.model_dir.is_some() {
            EmbedderChoice::Local
        } else if self.base_url.is_some() {
            EmbedderChoice::Openai
        } else {
            EmbedderChoice::Builtin
        })
    }

    /// Checks that the fields the kind needs are set, and only those.
    fn validate(&self) -> Result<(), Error> {
        let field = |name: &str| format!("embedder.{name}");
        let choice = self.choice();
        let remote_fields = [
            ("base_url", self.base_url.is_some()),
            ("model", self.model.is_some()),
            ("dimensions", self.dimensions.is_some()),
            ("api_key_env", self.api_key_env.is_some()),
            ("api_key_provider", self.api_key_provider.is_some()),
        ];
        if choice != EmbedderChoice::Openai
            && let Some((name, _)) = remote_fields.iter().find(|(_, set)| *set)
        {
            return Err(invalid(
                &field(name),
                "is a setting of kind = \"openai\"".to_owned(),
            ));
        }
        if choice != EmbedderChoice::Local && self.model_dir.is_some() {
            return Err(invalid(
                "embedder.model_dir",
                "is a setting of kind = \"local\"".to_owned(),
            ));
        }
        match choice {
            EmbedderChoice::Builtin => Ok(()),
            EmbedderChoice::Local => match self.model_dir {
                Some(_) => Ok(()),
                None => Err(invalid(
                    "embedder.model_dir",
                    "kind = \"local\" needs a model directory".to_owned(),
                )),
            },
            EmbedderChoice::Openai => self.validate_remote(),
        }
    }

    fn validate_remote(&self) -> Result<(), Error> {
        let needs = |name: &str, what: &str| {
            invalid(
                &format!("embedder.{name}"),
                format!("kind = \"openai\" needs {what}"),
            )
        };
        let base_url = self
            .base_url
            .as_deref()
            .ok_or_else(|| needs("base_url", "the endpoint's base URL"))?;
        if self.api_key_env.is_some() && self.api_key_provider.is_some() {
            return Err(invalid(
                "embedder.api_key_provider",
                "set api_key_env or api_key_provider, not both".to_owned(),
            ));
        }
        if !(base_url.starts_with("http://") || base_url.starts_with("https://"))
            || base_url.parse::<http::Uri>().is_err()
        {
            return Err(invalid(
                "embedder.base_url",
                format!("{base_url:?} is not an http:// or https:// URL"),
            ));
        }
        match self.model.as_deref() {
            None => return Err(needs("model", "the model name")),
            Some(m) if m.trim().is_empty() || m.len() > 256 || m.chars().any(char::is_control) => {
                return Err(invalid(
                    "embedder.model",
                    "must be 1..=256 characters, without control characters".to_owned(),
                ));
            }
            Some(_) => {}
        }
        match self.dimensions {
            None => return Err(needs("dimensions", "the model's vector length")),
            Some(d) if !(1..=EMBEDDER_DIMENSIONS_MAX).contains(&d) => {
                return Err(invalid(
                    "embedder.dimensions",
                    format!("{d} is outside 1..={EMBEDDER_DIMENSIONS_MAX}"),
                ));
            }
            Some(_) => {}
        }
        if !(1..=EMBEDDER_BATCH_SIZE_MAX_CEILING).contains(&self.batch_size_max) {
            return Err(invalid(
                "embedder.batch_size_max",
                format!(
                    "{} is outside 1..={EMBEDDER_BATCH_SIZE_MAX_CEILING}",
                    self.batch_size_max
                ),
            ));
        }
        for (name, value) in [
            ("timeout_ms", self.timeout_ms),
            ("query_timeout_ms", self.query_timeout_ms),
        ] {
            if !(1..=3_600_000).contains(&value) {
                return Err(invalid(
                    &format!("embedder.{name}"),
                    format!("{value} is outside 1..=3600000"),
                ));
            }
        }
        if self.retries_max > EMBEDDER_RETRIES_MAX_CEILING {
            return Err(invalid(
                "embedder.retries_max",
                format!(
                    "{} is above {EMBEDDER_RETRIES_MAX_CEILING}",
                    self.retries_max
                ),
            ));
        }
        Ok(())
    }
}

/// `[keys] mint`: which keys may mint keys with `POST /v1/keys`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MintPolicy {
    /// Any active key of the account (the hosted contract); minted keys record their
    /// parent and fall with it.
    #[default]
    Any,
    /// Only the account's admin key: for deployments where end users hold their own keys.
    Admin,
}

/// `[keys]`: who mints keys and how many an account may hold.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Keys {
    pub mint: MintPolicy,
    /// Active (not revoked) keys per account, the admin key included; minting beyond is a
    /// 409 `active_keys_max`.
    pub active_max: usize,
}

impl Default for Keys {
    fn default() -> Self {
        Self {
            mint: MintPolicy::default(),
            active_max: KEYS_ACTIVE_MAX_DEFAULT,
        }
    }
}

/// `[cluster]`: cluster mode on etcd (see `docs/scaling.md`). Off unless `etcd` is set.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSetting {
    /// `etcd://HOST:PORT` of the etcd holding the shared catalog and the placement
    /// (`--cluster`, env `MEMORYROUTER_CLUSTER`).
    pub etcd: Option<String>,
    /// This node's name in the registry and in placements; must stay the same across
    /// restarts, since the vaults placed here are found by it (env `MEMORYROUTER_NODE_ID`).
    pub node_id: Option<String>,
    /// `HOST:PORT` other nodes forward this node's vaults' requests to (default: the
    /// bound listen address; env `MEMORYROUTER_ADVERTISE`).
    pub advertise: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ingest {
    /// Store `system` messages too (off by default: they are instructions, not memories).
    pub store_system: bool,
}

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub durability: DurabilitySetting,
    pub limits: Limits,
    pub retrieval: Retrieval,
    pub embedder: EmbedderSetting,
    pub ingest: Ingest,
    pub keys: Keys,
    pub cluster: ClusterSetting,
    /// Proxy providers beyond (or overriding) the built-ins: `[providers.NAME]` with
    /// `kind`, `base_url`, `models`, `key_required` (see `proxy::providers`).
    pub providers: std::collections::BTreeMap<String, crate::proxy::ProviderConfig>,
    /// Proxy: longest wait for a provider's whole answer, or between two stream chunks.
    pub proxy_timeout_ms: u64,
    /// Proxy: TCP connect timeout to a provider.
    pub proxy_connect_timeout_ms: u64,
    /// Provider-key encryption secret as 64 hex digits; env only (`MEMORYROUTER_SECRET_KEY`)
    /// so it is never written to a config file by accident. `None` = `DATA_DIR/secret.key`.
    #[serde(skip)]
    pub secret_key_hex: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: LISTEN_DEFAULT
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8787))),
            data_dir: PathBuf::from(DATA_DIR_DEFAULT),
            durability: DurabilitySetting::default(),
            limits: Limits::default(),
            retrieval: Retrieval::default(),
            embedder: EmbedderSetting::default(),
            ingest: Ingest::default(),
            keys: Keys::default(),
            cluster: ClusterSetting::default(),
            providers: std::collections::BTreeMap::new(),
            proxy_timeout_ms: crate::proxy::client::TIMEOUT_MS_DEFAULT,
            proxy_connect_timeout_ms: crate::proxy::client::CONNECT_TIMEOUT_MS_DEFAULT,
            secret_key_hex: None,
        }
    }
}

// The secret must never reach a log line through `{:?}`.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("durability", &self.durability)
            .field("limits", &self.limits)
            .field("retrieval", &self.retrieval)
            .field("embedder", &self.embedder)
            .field("ingest", &self.ingest)
            .field("keys", &self.keys)
            .field("cluster", &self.cluster)
            .field("providers", &self.providers)
            .field("proxy_timeout_ms", &self.proxy_timeout_ms)
            .field("proxy_connect_timeout_ms", &self.proxy_connect_timeout_ms)
            .field(
                "secret_key_hex",
                &self.secret_key_hex.as_ref().map(|_| "<set>"),
            )
            .finish()
    }
}

/// Values given on the command line; `None` = not given.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// `serve --cluster etcd://HOST:PORT`.
    pub cluster: Option<String>,
}

impl Config {
    /// Builds the configuration from every layer. `env` is passed in (normally
    /// `std::env::vars()`) so tests do not have to mutate the process environment.
    pub fn load(flags: &Flags, env: &HashMap<String, String>) -> Result<Config, Error> {
        let file = flags
            .config
            .clone()
            .or_else(|| env.get("MEMORYROUTER_CONFIG").map(PathBuf::from));
        let mut config = match file {
            Some(path) => Config::from_file(&path)?,
            None => Config::default(),
        };
        config.apply_env(env)?;
        if let Some(listen) = &flags.listen {
            config.listen = parse_listen(listen, "--listen")?;
        }
        if let Some(dir) = &flags.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(etcd) = &flags.cluster {
            config.cluster.etcd = Some(etcd.clone());
        }
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigFile {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text).map_err(|message| Error::ConfigParse {
            path: path.to_owned(),
            message,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    fn apply_env(&mut self, env: &HashMap<String, String>) -> Result<(), Error> {
        for (name, value) in env {
            let Some(setting) = name.strip_prefix("MEMORYROUTER_") else {
                continue;
            };
            match setting {
                "LISTEN" => self.listen = parse_listen(value, name)?,
                "DATA_DIR" => self.data_dir = PathBuf::from(value),
                "DURABILITY" => {
                    self.durability = match value.as_str() {
                        "fsync" => DurabilitySetting::Fsync,
                        "buffered" => DurabilitySetting::Buffered,
                        _ => {
                            return Err(invalid(
                                name,
                                format!("`{value}` is not `fsync` or `buffered`"),
                            ));
                        }
                    }
                }
                "BODY_BYTES_MAX" => self.limits.body_bytes_max = parse_number(name, value)?,
                "MESSAGES_PER_REQUEST_MAX" => {
                    self.limits.messages_per_request_max = parse_number(name, value)?
                }
                "MESSAGE_CHARS_MAX" => self.limits.message_chars_max = parse_number(name, value)?,
                "REQUESTS_PER_MINUTE" => {
                    self.limits.requests_per_minute = parse_number(name, value)?
                }
                "ACCOUNT_REQUESTS_PER_MINUTE" => {
                    self.limits.account_requests_per_minute = parse_number(name, value)?
                }
                "PROXY_REQUESTS_PER_MINUTE" => {
                    self.limits.proxy_requests_per_minute = parse_number(name, value)?
                }
                "PROXY_TOKENS_PER_MINUTE" => {
                    self.limits.proxy_tokens_per_minute = parse_number(name, value)?
                }
                "KEYS_MINT" => {
                    self.keys.mint = match value.as_str() {
                        "any" => MintPolicy::Any,
                        "admin" => MintPolicy::Admin,
                        _ => {
                            return Err(invalid(
                                name,
                                format!("`{value}` is not `any` or `admin`"),
                            ));
                        }
                    }
                }
                "KEYS_ACTIVE_MAX" => self.keys.active_max = parse_number(name, value)?,
                "OPEN_VAULTS_MAX" => self.limits.open_vaults_max = parse_number(name, value)?,
                "OPEN_VAULTS_MEMORY_MB" => {
                    self.limits.open_vaults_memory_mb = parse_number(name, value)?
                }
                "CONNECTIONS_MAX" => self.limits.connections_max = parse_number(name, value)?,
                "CONNECTIONS_PER_ADDRESS_MAX" => {
                    self.limits.connections_per_address_max = parse_number(name, value)?
                }
                "FIRST_BYTE_TIMEOUT_MS" => {
                    self.limits.first_byte_timeout_ms = parse_number(name, value)?
                }
                "BODY_BUFFER_BYTES_MAX" => {
                    self.limits.body_buffer_bytes_max = Some(parse_number(name, value)?)
                }
                "MEMTABLE_RECORDS_MAX" => {
                    self.limits.memtable_records_max = parse_number(name, value)?
                }
                "SIMILARITY_MIN" => {
                    self.retrieval.similarity_min = Some(parse_number(name, value)?)
                }
                "EMBEDDER_MODEL_DIR" => self.embedder.model_dir = Some(PathBuf::from(value)),
                "EMBEDDER_KIND" => {
                    self.embedder.kind = Some(match value.as_str() {
                        "builtin" => EmbedderChoice::Builtin,
                        "local" => EmbedderChoice::Local,
                        "openai" => EmbedderChoice::Openai,
                        _ => {
                            return Err(invalid(
                                name,
                                format!("`{value}` is not `builtin`, `local` or `openai`"),
                            ));
                        }
                    })
                }
                "EMBEDDER_BASE_URL" => self.embedder.base_url = Some(value.clone()),
                "EMBEDDER_MODEL" => self.embedder.model = Some(value.clone()),
                "EMBEDDER_DIMENSIONS" => {
                    self.embedder.dimensions = Some(parse_number(name, value)?)
                }
                "EMBEDDER_API_KEY_ENV" => self.embedder.api_key_env = Some(value.clone()),
                "STORE_SYSTEM" => self.ingest.store_system = parse_number(name, value)?,
                "PROXY_TIMEOUT_MS" => self.proxy_timeout_ms = parse_number(name, value)?,
                "PROXY_CONNECT_TIMEOUT_MS" => {
                    self.proxy_connect_timeout_ms = parse_number(name, value)?
                }
                "SECRET_KEY" => self.secret_key_hex = Some(value.clone()),
                "CLUSTER" => self.cluster.etcd = Some(value.clone()),
                "NODE_ID" => self.cluster.node_id = Some(value.clone()),
                "ADVERTISE" => self.cluster.advertise = Some(value.clone()),
                // Read by `load` itself, by the logger, or by other components.
                _ => {}
            }
        }
        Ok(())
    }

    /// The cosine at which prepare counts a memory without a shared word as relevant, as
    /// far as the file tells: the configured value, else the default of the embedder it
    /// names (the built-in one, or a model directory — a transformer unless the model turns
    /// out static at start, which then needs an explicit value).
    pub fn similarity_min(&self) -> f32 {
        self.retrieval.similarity_min.unwrap_or(
            if self.embedder.choice() == EmbedderChoice::Builtin {
                SIMILARITY_MIN_DEFAULT
            } else {
                SIMILARITY_MIN_LOCAL_MODEL_DEFAULT
            },
        )
    }

    /// The embedder kind the file implies before any model is opened (ranges are checked
    /// against its defaults at load; the real kind's policy is built at start).
    fn embedder_kind_hint(&self) -> engine::EmbedderKind {
        match self.embedder.choice() {
            EmbedderChoice::Builtin => engine::EmbedderKind::Lexical,
            EmbedderChoice::Local | EmbedderChoice::Openai => engine::EmbedderKind::Transformer,
        }
    }

    /// Checks every setting once; the message names the setting and the accepted range.
    pub fn validate(&self) -> Result<(), Error> {
        if self.cluster.etcd.is_some() {
            let valid_id = |id: &str| {
                !id.is_empty()
                    && id.len() <= 64
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            };
            match &self.cluster.node_id {
                None => {
                    return Err(invalid(
                        "cluster.node_id",
                        "cluster mode needs a node id that stays the same across restarts \
                         (`[cluster] node_id` or MEMORYROUTER_NODE_ID)"
                            .to_owned(),
                    ));
                }
                Some(id) if !valid_id(id) => {
                    return Err(invalid(
                        "cluster.node_id",
                        format!("`{id}` is not 1 to 64 of [A-Za-z0-9_-]"),
                    ));
                }
                Some(_) => {}
            }
        }
        let limits = &self.limits;
        if !(BODY_BYTES_MAX_FLOOR..=BODY_BYTES_MAX_CEILING).contains(&limits.body_bytes_max) {
            return Err(invalid(
                "limits.body_bytes_max",
                format!(
                    "{} is outside {BODY_BYTES_MAX_FLOOR}..={BODY_BYTES_MAX_CEILING}",
                    limits.body_bytes_max
                ),
            ));
        }
        for (field, value) in [
            (
                "limits.messages_per_request_max",
                limits.messages_per_request_max,
            ),
            ("limits.message_chars_max", limits.message_chars_max),
            ("limits.open_vaults_max", limits.open_vaults_max),
            ("limits.connections_max", limits.connections_max),
            (
                "limits.connections_per_address_max",
                limits.connections_per_address_max,
            ),
            ("limits.memtable_records_max", limits.memtable_records_max),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be at least 1".to_owned()));
            }
        }
        if let Some(buffered) = limits.body_buffer_bytes_max
            && buffered < limits.body_bytes_max
        {
            return Err(invalid(
                "limits.body_buffer_bytes_max",
                format!(
                    "{buffered} is below limits.body_bytes_max ({}): a body of the largest \
                     size could never be read",
                    limits.body_bytes_max
                ),
            ));
        }
        if !(1..=FIRST_BYTE_TIMEOUT_MS_CEILING).contains(&limits.first_byte_timeout_ms) {
            return Err(invalid(
                "limits.first_byte_timeout_ms",
                format!(
                    "{} is outside 1..={FIRST_BYTE_TIMEOUT_MS_CEILING}",
                    limits.first_byte_timeout_ms
                ),
            ));
        }
        if !(1..=OPEN_VAULTS_MEMORY_MB_CEILING).contains(&limits.open_vaults_memory_mb) {
            return Err(invalid(
                "limits.open_vaults_memory_mb",
                format!(
                    "{} is outside 1..={OPEN_VAULTS_MEMORY_MB_CEILING}",
                    limits.open_vaults_memory_mb
                ),
            ));
        }
        if !(1..=KEYS_ACTIVE_MAX_CEILING).contains(&self.keys.active_max) {
            return Err(invalid(
                "keys.active_max",
                format!(
                    "{} is outside 1..={KEYS_ACTIVE_MAX_CEILING}",
                    self.keys.active_max
                ),
            ));
        }
        self.embedder.validate()?;
        self.retrieval.policy(self.embedder_kind_hint())?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty".to_owned()));
        }
        if let Some(hex) = &self.secret_key_hex
            && crate::secret::from_hex(hex)
                .is_none_or(|bytes| bytes.len() != crate::secret::SECRET_KEY_BYTES)
        {
            return Err(invalid(
                "MEMORYROUTER_SECRET_KEY",
                "must be 64 hex digits (32 bytes)".to_owned(),
            ));
        }
        Ok(())
    }
}

fn invalid(field: &str, reason: String) -> Error {
    Error::Config {
        field: field.to_owned(),
        reason,
    }
}

fn parse_listen(value: &str, field: &str) -> Result<SocketAddr, Error> {
    value.parse().map_err(|_| {
        invalid(
            field,
            format!("`{value}` is not an address like 127.0.0.1:8787"),
        )
    })
}

fn parse_number<T: std::str::FromStr>(field: &str, value: &str) -> Result<T, Error> {
    value
        .trim()
        .parse()
        .map_err(|_| invalid(field, format!("`{value}` is not a valid value")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn layers_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:1000\"\ndurability = \"buffered\"\n[limits]\nbody_bytes_max = 5000\nmessage_chars_max = 7\nopen_vaults_memory_mb = 64\n").unwrap();
        let flags = Flags {
            config: Some(file),
            listen: Some("127.0.0.1:3000".into()),
            data_dir: None,
            cluster: None,
        };
        let config = Config::load(
            &flags,
            &env(&[
                ("MEMORYROUTER_BODY_BYTES_MAX", "6000"),
                ("MEMORYROUTER_LISTEN", "127.0.0.1:2000"),
            ]),
        )
        .unwrap();
        assert_eq!(config.listen.port(), 3000, "flag beats env beats file");
        assert_eq!(config.limits.body_bytes_max, 6000, "env beats file");
        assert_eq!(config.limits.message_chars_max, 7, "file beats default");
        assert_eq!(config.limits.open_vaults_memory_bytes(), 64 << 20);
        assert_eq!(config.durability, DurabilitySetting::Buffered);
        assert_eq!(
            config.limits.messages_per_request_max,
            MESSAGES_PER_REQUEST_MAX_DEFAULT
        );
    }

    #[test]
    fn similarity_min_defaults_follow_the_embedder_and_an_explicit_value_wins() {
        let builtin = Config::load(&Flags::default(), &env(&[])).unwrap();
        assert!(builtin.embedder.model_dir.is_none());
        assert_eq!(builtin.similarity_min(), SIMILARITY_MIN_DEFAULT);
        let file = Config::from_toml("[embedder]\nmodel_dir = \"/models/m\"\n").unwrap();
        assert_eq!(
            file.embedder.model_dir.as_deref(),
            Some(Path::new("/models/m"))
        );
        assert_eq!(file.similarity_min(), SIMILARITY_MIN_LOCAL_MODEL_DEFAULT);
        let env_model = Config::load(
            &Flags::default(),
            &env(&[
                ("MEMORYROUTER_EMBEDDER_MODEL_DIR", "/m"),
                ("MEMORYROUTER_SIMILARITY_MIN", "0.55"),
            ]),
        )
        .unwrap();
        assert_eq!(
            env_model.embedder.model_dir.as_deref(),
            Some(Path::new("/m"))
        );
        assert_eq!(env_model.similarity_min(), 0.55);
        assert!(
            Config::from_toml("[embedder]\nmodel_path = \"x\"\n")
                .unwrap_err()
                .contains("model_path")
        );
        let err = Config::load(
            &Flags::default(),
            &env(&[("MEMORYROUTER_SIMILARITY_MIN", "1.5")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("similarity_min"), "{err}");
    }

    #[test]
    fn retrieval_settings_override_single_fields_of_the_embedder_default() {
        use engine::fusion::FusionMethod;
        let lexical = engine::EmbedderKind::Lexical;
        let default = Config::from_toml("")
            .unwrap()
            .retrieval
            .policy(lexical)
            .unwrap();
        assert_eq!(default, engine::RetrievalPolicy::for_kind(lexical));
        let config = Config::from_toml(
            "[retrieval]\nfusion = \"rrf\"\nvector_weight = 0.5\nsession_boost = 0.0\ncandidates_min = 80\nneighbour_weight = 0.0\ndate_window_days = 3\n",
        )
        .unwrap();
        let p = config.retrieval.policy(lexical).unwrap();
        let FusionMethod::Weighted { lexical_weight, .. } = default.fusion.method else {
            panic!("the built-in embedder's default fusion is weighted");
        };
        assert_eq!(
            p.fusion.method,
            FusionMethod::Rrf {
                k0: 60.0,
                vector_weight: 0.5,
                lexical_weight,
            }
        );
        assert_eq!((p.session_boost, p.candidates_min), (0.0, 80));
        assert_eq!(p.recency_half_life_days, default.recency_half_life_days);
        assert_eq!(
            (p.signals.neighbour_weight, p.signals.date_window_days),
            (0.0, 3)
        );
        assert_eq!(p.signals.session_weight, default.signals.session_weight);
        for (toml, field) in [
            ("session_boost = 3.0", "retrieval.session_boost"),
            ("question_penalty = 1.5", "retrieval.question_penalty"),
            ("date_window_days = 1000", "retrieval.date_window_days"),
            ("candidates_per_k = 0", "retrieval.candidates_per_k"),
            ("rrf_k0 = 10.0", "retrieval.rrf_k0"),
            (
                "vector_weight = 0.0\nlexical_weight = 0.0",
                "retrieval.vector_weight",
            ),
        ] {
            let err = Config::from_toml(&format!("[retrieval]\n{toml}\n"))
                .and_then(|c| c.validate().map(|_| c).map_err(|e| e.to_string()))
                .unwrap_err();
            assert!(err.contains(field), "{toml}: {err}");
        }
    }

    #[test]
    fn abuse_limits_have_defaults_env_names_and_ranges() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.limits.body_buffer_bytes(), 256 << 20);
        assert_eq!(config.limits.connections_per_address_max, 256);
        assert_eq!(config.limits.first_byte_timeout_ms, 2_000);
        // A raised body limit raises the default buffer budget with it.
        let big = Config::from_toml("[limits]\nbody_bytes_max = 536870912\n").unwrap();
        assert!(big.validate().is_ok());
        assert_eq!(big.limits.body_buffer_bytes(), 512 << 20);
        let config = Config::load(
            &Flags::default(),
            &env(&[
                ("MEMORYROUTER_BODY_BUFFER_BYTES_MAX", "9000000"),
                ("MEMORYROUTER_CONNECTIONS_PER_ADDRESS_MAX", "3"),
                ("MEMORYROUTER_FIRST_BYTE_TIMEOUT_MS", "250"),
            ]),
        )
        .unwrap();
        assert_eq!(config.limits.body_buffer_bytes(), 9_000_000);
        assert_eq!(config.limits.connections_per_address_max, 3);
        assert_eq!(config.limits.first_byte_timeout_ms, 250);
        for (toml, field) in [
            (
                "body_buffer_bytes_max = 1000",
                "limits.body_buffer_bytes_max",
            ),
            (
                "connections_per_address_max = 0",
                "limits.connections_per_address_max",
            ),
            ("first_byte_timeout_ms = 0", "limits.first_byte_timeout_ms"),
        ] {
            let err = Config::from_toml(&format!("[limits]\n{toml}\n"))
                .and_then(|c| c.validate().map(|_| c).map_err(|e| e.to_string()))
                .unwrap_err();
            assert!(err.contains(field), "{toml}: {err}");
        }
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values_with_the_setting_named() {
        assert!(
            Config::from_toml("lissen = \"x\"")
                .unwrap_err()
                .contains("lissen")
        );
        assert!(
            Config::from_toml("durability = \"sometimes\"")
                .unwrap_err()
                .contains("sometimes")
        );
        let err = Config::load(
            &Flags::default(),
            &env(&[("MEMORYROUTER_BODY_BYTES_MAX", "10")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("limits.body_bytes_max"), "{err}");
        for bad in ["0", "1073741825", "lots"] {
            let err = Config::load(
                &Flags::default(),
                &env(&[("MEMORYROUTER_OPEN_VAULTS_MEMORY_MB", bad)]),
            )
            .unwrap_err();
            assert!(
                err.to_string().contains("OPEN_VAULTS_MEMORY_MB")
                    || err.to_string().contains("open_vaults_memory_mb"),
                "{err}"
            );
        }
        let config = Config::load(
            &Flags::default(),
            &env(&[("MEMORYROUTER_OPEN_VAULTS_MEMORY_MB", "256")]),
        )
        .unwrap();
        assert_eq!(config.limits.open_vaults_memory_mb, 256);
        assert_eq!(
            Config::load(&Flags::default(), &env(&[]))
                .unwrap()
                .limits
                .open_vaults_memory_bytes(),
            engine::OPEN_VAULTS_MEMORY_BYTES_MAX_DEFAULT
        );
        let err = Config::load(
            &Flags::default(),
            &env(&[("MEMORYROUTER_SECRET_KEY", "abc")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("MEMORYROUTER_SECRET_KEY"), "{err}");
        let err = Config::load(
            &Flags {
                listen: Some("nowhere".into()),
                ..Flags::default()
            },
            &env(&[]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("--listen"), "{err}");
    }

    #[test]
    fn keys_and_account_limits_load_from_file_and_env() {
        let config = Config::from_toml(
            "[keys]\nmint = \"admin\"\nactive_max = 3\n[limits]\naccount_requests_per_minute = 50\nproxy_tokens_per_minute = 9\n",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.keys.mint, MintPolicy::Admin);
        assert_eq!(config.keys.active_max, 3);
        assert_eq!(config.limits.account_requests_per_minute, 50);
        assert_eq!(config.limits.proxy_tokens_per_minute, 9);
        assert_eq!(
            config.limits.proxy_requests_per_minute,
            PROXY_REQUESTS_PER_MINUTE_DEFAULT
        );
        let defaults = Config::default();
        assert_eq!(defaults.keys.mint, MintPolicy::Any, "compatible default");
        let from_env = Config::load(
            &Flags::default(),
            &env(&[
                ("MEMORYROUTER_KEYS_MINT", "admin"),
                ("MEMORYROUTER_PROXY_REQUESTS_PER_MINUTE", "7"),
            ]),
        )
        .unwrap();
        assert_eq!(from_env.keys.mint, MintPolicy::Admin);
        assert_eq!(from_env.limits.proxy_requests_per_minute, 7);
        for (key, value, field) in [
            ("MEMORYROUTER_KEYS_MINT", "some", "KEYS_MINT"),
            ("MEMORYROUTER_KEYS_ACTIVE_MAX", "0", "keys.active_max"),
        ] {
            let err = Config::load(&Flags::default(), &env(&[(key, value)])).unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
        assert!(Config::from_toml("[keys]\nmint = \"users\"\n").is_err());
    }

    #[test]
    fn debug_hides_the_secret() {
        let config = Config {
            secret_key_hex: Some("ab".repeat(32)),
            ..Config::default()
        };
        assert!(!format!("{config:?}").contains("abab"));
    }
}
