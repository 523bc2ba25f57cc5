//! The Discord channel: a gateway thread (WebSocket: Hello, heartbeats, Identify or Resume,
//! dispatches) that reports messages and button clicks, and REST calls for everything sent.

pub mod gateway;
pub mod inbound;
pub mod link;
pub mod rest;
pub mod wire;
