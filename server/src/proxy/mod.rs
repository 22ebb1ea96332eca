//! Proxy mode: `POST /v1/chat/completions`, `POST /v1/messages`, `GET /v1/models`.
//!
//! An application points its OpenAI (or Anthropic) client at MemoryRouter and uses its
//! Memory Key as the API key. Each request: authenticate → resolve the memory plan
//! ([`options`]) → retrieve memories → add them to the system prompt ([`inject`]) → call the
//! provider chosen by the `provider/model` prefix ([`providers`], [`client`]) → relay the
//! answer, streaming frame by frame ([`relay`], [`sse`]), unchanged or translated (named by
//! the request's direction: [`openai_to_anthropic`], OpenAI clients → Anthropic providers;
//! [`anthropic_to_openai`], Anthropic clients → OpenAI-format providers) → once the answer
//! is complete, append the exchange to the durable [`outbox`] before releasing the answer's
//! last frame, then store it in the vault off the response path ([`state`]).
//!
//! Handlers: [`chat`] (`/v1/chat/completions`, `/v1/models`) and [`messages`]
//! (`/v1/messages`), built from the shared steps in [`forward`]. Failures MemoryRouter
//! answers itself are [`ProxyError`](error::ProxyError)s (400/502/504…); provider error answers are passed
//! through with their status.
//!
//! **Invariant:** provider base URLs come only from the config ([`providers`]); no request
//! field or header can choose the host MemoryRouter connects to.
//!
//! **Invariant:** a provider key (stored or BYOK) is only ever placed in the upstream
//! request's auth header (marked sensitive); it is never stored by this module or logged.
//!
//! **Invariant:** an answered exchange is either stored, or still in the outbox (replayed at
//! the next start), or was never complete (error, client gone), or belongs to a key revoked
//! before it was stored (dropped with a log line): never silently dropped. A client that has
//! read the answer's last frame has an exchange that is already in the outbox (unless the
//! outbox append itself failed, which is logged).

pub(crate) mod answer;
pub(crate) mod anthropic_to_openai;
pub(crate) mod chat;
pub(crate) mod client;
pub(crate) mod error;
pub(crate) mod forward;
pub(crate) mod inject;
pub(crate) mod messages;
pub(crate) mod openai;
pub(crate) mod openai_to_anthropic;
pub(crate) mod options;
pub(crate) mod outbox;
pub(crate) mod providers;
pub(crate) mod relay;
pub(crate) mod sse;
pub(crate) mod state;

pub(crate) use providers::ProviderConfig;
pub(crate) use state::ProxyState;
