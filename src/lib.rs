//! tether: drive an ACP coding agent from chat apps.
//!
//! Platform threads turn chat traffic into [`event::Inbound`]; one core thread runs the pure
//! [`core::Core`] over those events, the agent's events and the clock; the ACP threads speak
//! JSON-RPC to the agent process. See `ARCHITECTURE.md` for the map.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod access_files;
pub mod acp;
pub mod adapters;
pub mod admin_source;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod core;
pub mod daemon;
pub mod demo_agent;
pub mod error;
pub mod event;
pub mod group_history_file;
pub mod health;
pub mod journal;
pub mod logging;
pub mod net;
pub mod pairing_cli;
pub mod render;
pub mod service;
pub mod store;
pub mod streamer;
