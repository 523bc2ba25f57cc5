//! Network plumbing shared by adapters: the HTTP client, multipart bodies, a small HTTP/1.1 server
//! and the WebSocket client.

pub(crate) mod conn;
pub mod http;
pub(crate) mod http_wire;
pub mod httpd;
pub mod multipart;
pub(crate) mod tls;
pub mod ws;
pub(crate) mod ws_frame;
