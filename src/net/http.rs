//! The HTTP client every adapter uses: one ureq agent per channel, with timeouts on every
//! phase and HTTP error statuses returned as data (platforms put the reason in the body).
//! Connections are kept and reused by the agent's pool; host names are resolved once a minute,
//! not per request (see [`CachingResolver`]).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

/// A blocking JSON-over-HTTP client.
#[derive(Debug, Clone)]
pub struct HttpClient {
    agent: ureq::Agent,
}

/// Why no HTTP reply came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportError(pub String);

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Default for HttpClient {
    fn default() -> HttpClient {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(Duration::from_secs(30)))
            .input_buffer_size(16 * 1024)
            .output_buffer_size(16 * 1024)
            .user_agent(concat!("tether/", env!("CARGO_PKG_VERSION")))
            .build();
        let agent = ureq::Agent::with_parts(config, DefaultConnector::default(), CachingResolver::default());
        HttpClient { agent }
    }
}

/// How long a host name's addresses are used before they are looked up again.
const RESOLVE_TTL: Duration = Duration::from_secs(60);
/// Host names remembered at once (a channel talks to one or two).
const RESOLVE_CACHE: usize = 16;

/// ureq's resolver with a short memory. ureq resolves the host before every request, even
/// one that goes out on a pooled connection, and with a timeout set (always, here) it starts
/// a thread for each lookup: a thread and a `getaddrinfo` (a DNS query on a router without a
/// cache) per message sent. Built on ureq's `unversioned` API, pinned by Cargo.lock.
#[derive(Debug, Default)]
struct CachingResolver {
    inner: DefaultResolver,
    cache: Mutex<HashMap<String, (Instant, ResolvedSocketAddrs)>>,
}

impl Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let key = format!("{}://{}", uri.scheme_str().unwrap_or(""), uri.authority().map_or("", |a| a.as_str()));
        let now = Instant::now();
        if let Some((at, addrs)) = self.cache.lock().unwrap_or_else(PoisonError::into_inner).get(&key)
            && now.saturating_duration_since(*at) < RESOLVE_TTL
        {
            return Ok(addrs.clone());
        }
        let addrs = self.inner.resolve(uri, config, timeout)?;
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= RESOLVE_CACHE {
            cache.clear();
        }
        cache.insert(key, (now, addrs.clone()));
        Ok(addrs)
    }
}

impl HttpClient {
    /// POST a JSON body; wait at most `timeout` for the whole exchange. Returns the status
    /// and the body text (capped at 16 MiB).
    pub fn post_json(&self, url: &str, body: &Value, timeout: Duration) -> Result<(u16, String), TransportError> {
        self.post_json_with(url, &[], body, timeout)
    }

    /// [`HttpClient::post_json`] with extra request headers (an API's token header, `Accept`).
    pub fn post_json_with(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &Value,
        timeout: Duration,
    ) -> Result<(u16, String), TransportError> {
        let mut request = self.agent.post(url).config().timeout_global(Some(timeout)).build();
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send_json(body).map_err(|e| TransportError(describe(&e)))?;
        let status = response.status().as_u16();
        let text = response
            .into_body()
            .with_config()
            .limit(16 * 1024 * 1024)
            .read_to_string()
            .map_err(|e| TransportError(describe(&e)))?;
        Ok((status, text))
    }
}

/// An HTTP method [`HttpClient::request`] can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Patch,
    Delete,
}

/// A whole HTTP reply: status, headers (names lowercased) and body text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
    }
}

impl HttpClient {
    /// Any method with extra headers and an optional JSON body (POST/PATCH without one send
    /// an empty body); waits at most `timeout` for the whole exchange. Body capped at 16 MiB.
    pub fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<HttpReply, TransportError> {
        let fail = |e: ureq::Error| TransportError(describe(&e));
        let response = match method {
            Method::Get | Method::Delete => {
                let mut req = if method == Method::Get { self.agent.get(url) } else { self.agent.delete(url) };
                for (name, value) in headers {
                    req = req.header(*name, *value);
                }
                req.config().timeout_global(Some(timeout)).build().call().map_err(fail)?
            }
            Method::Post | Method::Patch => {
                let mut req = if method == Method::Post { self.agent.post(url) } else { self.agent.patch(url) };
                for (name, value) in headers {
                    req = req.header(*name, *value);
                }
                let req = req.config().timeout_global(Some(timeout)).build();
                match body {
                    Some(json) => req.send_json(json),
                    None => req.send_empty(),
                }
                .map_err(fail)?
            }
        };
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_ascii_lowercase(), v.to_str().ok()?.to_string())))
            .collect();
        let body = response.into_body().with_config().limit(16 * 1024 * 1024).read_to_string().map_err(fail)?;
        Ok(HttpReply { status, headers, body })
    }
}

/// A whole HTTP reply with a binary body: status, headers (names lowercased) and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawReply {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl HttpClient {
    /// One request with our own headers and a raw body (sent by POST and PATCH only); waits
    /// at most `timeout` for the whole exchange and reads at most `limit` bytes of the reply
    /// (more is an error: a download must not fill the memory or the disk). For binary uploads
    /// and downloads (CDNs, attachments).
    pub fn exchange(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        body: &[u8],
        timeout: Duration,
        limit: u64,
    ) -> Result<RawReply, TransportError> {
        let fail = |e: ureq::Error| TransportError(describe(&e));
        let response = match method {
            Method::Get | Method::Delete => {
                let mut req = if method == Method::Get { self.agent.get(url) } else { self.agent.delete(url) };
                for (name, value) in headers {
                    req = req.header(*name, value.as_str());
                }
                req.config().timeout_global(Some(timeout)).build().call().map_err(fail)?
            }
            Method::Post | Method::Patch => {
                let mut req = if method == Method::Post { self.agent.post(url) } else { self.agent.patch(url) };
                for (name, value) in headers {
                    req = req.header(*name, value.as_str());
                }
                req.config().timeout_global(Some(timeout)).build().send(body).map_err(fail)?
            }
        };
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_ascii_lowercase(), v.to_str().ok()?.to_string())))
            .collect();
        let body = response.into_body().with_config().limit(limit).read_to_vec().map_err(fail)?;
        Ok(RawReply { status, headers, body })
    }
}

/// A ureq error as one line, without the URL (it contains the bot token).
fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(t) => format!("timed out ({t:?})"),
        ureq::Error::Io(io) => format!("network error: {io}"),
        ureq::Error::ConnectionFailed => "connection failed".to_string(),
        ureq::Error::HostNotFound => "host not found".to_string(),
        other => format!("HTTP error: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolver_answers_from_its_memory_within_the_ttl() {
        let resolver = CachingResolver::default();
        let config = ureq::config::Config::default();
        // A miss looks the name up (an IP literal: no DNS) and remembers it.
        let local: Uri = "http://127.0.0.1:8081/bot/getMe".parse().unwrap();
        let first = resolver.resolve(&local, &config, NextTimeout::default()).unwrap();
        assert_eq!(first.first().map(|a| a.to_string()), Some("127.0.0.1:8081".to_string()));
        assert!(resolver.cache.lock().unwrap().contains_key("http://127.0.0.1:8081"));
        // A hit does not look up: a name that cannot resolve answers what was remembered.
        let mut seeded = resolver.empty();
        seeded.push("10.1.2.3:443".parse().unwrap());
        resolver.cache.lock().unwrap().insert("https://api.example.invalid".to_string(), (Instant::now(), seeded));
        let uri: Uri = "https://api.example.invalid/bot123/getUpdates".parse().unwrap();
        let hit = resolver.resolve(&uri, &config, NextTimeout::default()).unwrap();
        assert_eq!(hit.first().map(|a| a.to_string()), Some("10.1.2.3:443".to_string()));
    }
}
