//! tether: drive an ACP coding agent from chat apps.
//!
//! Platform threads turn chat traffic into [`event::Inbound`]; one core thread runs the pure
//! [`core::Core`] over those events, the agent's events and the clock; the ACP threads speak
//! JSON-RPC to the agent process. See `ARCHITECTURE.md` for the map.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
// Byte-offset slicing of a str panics off a char boundary, and our text is a stranger's: each
// slice is a checked `get`, or carries a local allow with the reason it is on a boundary.
#![deny(clippy::string_slice)]
#![cfg_attr(test, allow(clippy::string_slice))]

pub(crate) mod access_files;
pub(crate) mod acp;
pub mod adapters;
pub(crate) mod admin_source;
pub(crate) mod admin_token;
pub mod audit;
pub(crate) mod audit_cli;
pub(crate) mod audit_writer;
pub(crate) mod backoff;
pub mod cli;
pub(crate) mod collect;
pub mod config;
pub(crate) mod control;
pub mod core;
pub mod daemon;
pub(crate) mod demo_agent;
pub mod error;
pub mod event;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod group_history_file;
pub(crate) mod health;
pub mod journal;
pub(crate) mod local_zone;
pub(crate) mod logging;
pub(crate) mod loops_cli;
pub(crate) mod malloc_tuning;
pub(crate) mod mcp;
pub mod media;
pub mod net;
pub(crate) mod pairing_cli;
pub(crate) mod redact;
pub mod render;
pub(crate) mod service;
pub(crate) mod store;
pub(crate) mod streamer;
pub mod time_zone;
pub mod vec_map;
pub(crate) mod worktree;
