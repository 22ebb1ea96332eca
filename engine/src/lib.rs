//! engine
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod analyzer;
pub mod embedder;
pub mod fusion;
pub mod lexical;
mod stem;

pub use embedder::{BuiltinEmbedder, Embedder};
