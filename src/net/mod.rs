//! Network plumbing shared by adapters: the HTTP client and a small HTTP/1.1 server.

pub mod http;
pub mod httpd;
