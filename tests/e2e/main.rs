//! The one end-to-end test binary: the real server over loopback HTTP.

mod fake_provider;
mod proxy;
