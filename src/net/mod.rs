//! Network plumbing shared by adapters.

pub mod httpd;
