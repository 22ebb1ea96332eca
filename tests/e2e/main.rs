//! The one end-to-end test binary: the real server over loopback HTTP.

mod auth;
mod bad_input;
mod fake_provider;
mod isolation;
mod memory_api;
mod ops;
mod proxy;
mod readable;
mod restart;
mod seed;
