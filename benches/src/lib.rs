//! Benches helpers.
