//! Network plumbing shared by adapters: the HTTP client, a small HTTP/1.1 server and the
//! WebSocket client.

pub mod http;
pub mod httpd;
pub mod ws;
