//! E2E test helpers.
