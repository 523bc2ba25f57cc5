//! Network plumbing shared by adapters: the HTTP client, multipart bodies, a small HTTP/1.1 server
//! and the WebSocket client.

pub mod http;
pub mod httpd;
pub mod multipart;
pub mod ws;
