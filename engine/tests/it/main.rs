//! Integration tests of the engine's public API: one binary, one module per concern.

mod basic;
mod common;
mod context;
mod crash;
mod failfrom;
mod fence;
mod fsyncgate;
mod memory;
mod missing;
mod model;
mod permissions;
mod powerloss;
mod race;
mod registry;
mod seal;
mod unreadable;
