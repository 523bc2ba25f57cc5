//! The iLink HTTP calls of one account: JSON POSTs with the required headers, the login GETs,
//! CDN downloads and uploads. Timeouts on every call; the token never reaches a log line.

use std::time::Duration;

use serde_json::Value;

use crate::net::http::{HttpClient, Method, RawReply};

use super::wire::{self, Failure};

/// Largest JSON reply we read.
const JSON_LIMIT: u64 = 4 * 1024 * 1024;

/// One account's endpoints.
#[derive(Clone)]
pub struct Api {
    http: HttpClient,
    /// The API base (from the account file when the login named one).
    pub base: String,
    pub cdn_base: String,
    token: Option<String>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("base", &self.base).field("cdn_base", &self.cdn_base).finish_non_exhaustive()
    }
}

/// Whether a transport error was our own timeout (normal at the end of a long poll).
pub fn is_timeout(failure: &Failure) -> bool {
    matches!(failure, Failure::Transient(d) if d.starts_with("timed out"))
}

impl Api {
    pub fn new(base: &str, cdn_base: &str, token: Option<String>) -> Api {
        Api {
            http: HttpClient::default(),
            base: base.trim_end_matches('/').to_string(),
            cdn_base: cdn_base.trim_end_matches('/').to_string(),
            token,
        }
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        wire::headers(self.token.as_deref(), getrandom::u32().unwrap_or(0))
    }

    /// POST `body` to `path` (relative to the base); the decoded reply or a failure.
    pub fn post(&self, path: &str, body: &Value, timeout: Duration) -> Result<Value, Failure> {
        let bytes =
            serde_json::to_vec(body).map_err(|e| Failure::Rejected(format!("cannot encode the request: {e}")))?;
        let url = wire::join(&self.base, path);
        let reply = self
            .http
            .exchange(Method::Post, &url, &self.headers(), &bytes, timeout, JSON_LIMIT)
            .map_err(|e| Failure::Transient(e.to_string()))?;
        wire::parse_reply(reply.status, &reply.text())
    }

    /// GET `path` at `base` (login calls, which may move to another host).
    pub fn get_at(&self, base: &str, path: &str, timeout: Duration) -> Result<Value, Failure> {
        let url = wire::join(base, path);
        let reply = self
            .http
            .exchange(Method::Get, &url, &self.headers(), &[], timeout, JSON_LIMIT)
            .map_err(|e| Failure::Transient(e.to_string()))?;
        wire::parse_reply(reply.status, &reply.text())
    }

    /// GET a CDN URL: the body (ciphertext), at most `limit` bytes. No auth headers.
    pub fn download(&self, url: &str, limit: usize, timeout: Duration) -> Result<Vec<u8>, Failure> {
        let reply = self
            .http
            .exchange(Method::Get, url, &[], &[], timeout, limit as u64)
            .map_err(|e| Failure::Transient(format!("CDN download: {e}")))?;
        match reply.status {
            200 => Ok(reply.body),
            s if s >= 500 || s == 429 => Err(Failure::Transient(format!("CDN download: HTTP {s}"))),
            s => Err(Failure::Rejected(format!("CDN download: HTTP {s}: {}", cdn_error(&reply)))),
        }
    }

    /// POST ciphertext to a CDN upload URL; the download parameter (`x-encrypted-param`).
    pub fn upload(&self, url: &str, cipher: &[u8], timeout: Duration) -> Result<String, Failure> {
        let headers = [("Content-Type", "application/octet-stream".to_string())];
        let reply = self
            .http
            .exchange(Method::Post, url, &headers, cipher, timeout, JSON_LIMIT)
            .map_err(|e| Failure::Transient(format!("CDN upload: {e}")))?;
        match reply.status {
            200 => reply
                .header("x-encrypted-param")
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .ok_or_else(|| Failure::Transient("CDN upload: HTTP 200 without x-encrypted-param".into())),
            s if s >= 500 => Err(Failure::Transient(format!("CDN upload: HTTP {s}"))),
            s => Err(Failure::Rejected(format!("CDN upload: HTTP {s}: {}", cdn_error(&reply)))),
        }
    }
}

/// The CDN's reason: header `x-error-message`, else the start of the body.
fn cdn_error(reply: &RawReply) -> String {
    match reply.header("x-error-message") {
        Some(m) => m.to_string(),
        None => reply.text().chars().take(200).collect(),
    }
}
