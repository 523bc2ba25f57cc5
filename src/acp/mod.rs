//! The agent side: speaking ACP (JSON-RPC 2.0 over stdio) to an agent process.
//!
//! [`connection`] is the protocol state machine and does no I/O; [`process`] owns the child
//! process and the threads that move its lines.

pub mod connection;
pub mod identity;
pub mod process;
pub mod supervisor;
