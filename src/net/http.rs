//! The HTTP client every adapter uses: one ureq agent per channel, with timeouts on every
//! phase and HTTP error statuses returned as data (platforms put the reason in the body).

use std::time::Duration;

use serde_json::Value;

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
        HttpClient { agent: config.into() }
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
