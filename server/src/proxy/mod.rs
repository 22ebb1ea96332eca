//! Proxy mode: `POST /v1/chat/completions`, `POST /v1/messages`, `GET /v1/models`.
//!
//! An application points its OpenAI (or Anthropic) client at MemoryRouter and uses its
//! Memory Key as the API key. Each request: authenticate → resolve the memory plan
//! ([`options`]) → retrieve memories → add them as a system message ([`inject`]) → call the
//! provider chosen by the `provider/model` prefix ([`providers`], [`client`]) → relay the
//! answer unchanged, streaming frame by frame ([`relay`], [`sse`]) or translated from
//! Anthropic's Messages API ([`anthropic`]) → queue the finished exchange for ingest.
//!
//! **Invariant:** provider base URLs come only from the config ([`providers`]); no request
//! field or header can choose the host MemoryRouter connects to.
//!
//! **Invariant:** a provider key (stored or BYOK) is only ever placed in the upstream
//! request's auth header; it is never stored by this module or written to a log.

pub mod anthropic;
pub mod anthropic_in;
pub mod chat;
pub mod client;
pub mod error;
pub mod forward;
pub mod inject;
pub mod messages;
pub mod openai;
pub mod options;
pub mod outbox;
pub mod providers;
pub mod relay;
pub mod sse;
pub mod state;

pub use client::UpstreamClient;
pub use error::ProxyError;
pub use openai::upstream_error_body;
pub use providers::{Provider, ProviderConfig, ProviderKind, ProviderTable};
pub use state::ProxyState;
