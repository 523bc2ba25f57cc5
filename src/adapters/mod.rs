//! Platform adapters: each owns its sockets and threads, turns platform traffic into
//! [`crate::event::Inbound`] and performs [`crate::event::Outbound`] actions.

pub mod admin;
pub mod discord;
pub mod pacing;
pub mod telegram;
pub mod webchat;
