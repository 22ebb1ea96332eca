//! The HTTP handlers of the memory API, one module per resource; [`crate::router`] maps
//! each method and path to one of their functions. They parse and validate with
//! [`crate::request`], authenticate with [`crate::auth`], and answer through
//! [`crate::http`]; nothing here touches storage except through the [`engine`] crate and
//! the key [`crate::catalog`]. The proxy endpoints (`/v1/chat/completions`,
//! `/v1/messages`, `/v1/models`) are in [`crate::proxy`].
//!
//! | module | endpoints |
//! |---|---|
//! | [`prepare`] | `POST /v1/memory/prepare` (retrieval within a token budget) |
//! | [`ingest`] | `POST /v1/memory/ingest` (durable store of a conversation) |
//! | [`memories`] | search, list, get, delete, clear, warmup, stats under `/v1/memory` |
//! | [`transfer`] | `GET /v1/memory/export`, `POST /v1/memory/import`, `POST /v1/memory/upload` |
//! | [`keys`] | `/v1/keys`: mint, list, revoke Memory Keys |
//! | [`provider_keys`] | `/v1/provider-keys/{provider}`: the account's stored provider keys |
//! | [`admin`] | `GET /v1/admin/overview` (the dashboard's summary) |
//! | [`audit`] | `GET /v1/audit` (the account's audit log, admin key) |
//! | [`ops`] | `/healthz`, `/readyz`, `/metrics` |
//! | [`openapi`] | `GET /openapi.json` (the OpenAPI 3.1 document, checked against the router) |
//! | [`mcp`] | `POST /mcp` (Model Context Protocol tools over the caller's vault) |

pub(crate) mod admin;
pub(crate) mod audit;
pub(crate) mod ingest;
pub(crate) mod keys;
pub(crate) mod mcp;
pub(crate) mod memories;
pub(crate) mod openapi;
pub(crate) mod ops;
pub(crate) mod prepare;
pub(crate) mod provider_keys;
pub(crate) mod transfer;
