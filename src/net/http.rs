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
        let response = self
            .agent
            .post(url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .send_json(body)
            .map_err(|e| TransportError(describe(&e)))?;
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

/// A whole HTTP reply: status, headers (names lower-case) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The method of an [`HttpClient::exchange`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

impl HttpClient {
    /// One request with our own headers and a raw body (POST only); waits at most `timeout`
    /// for the whole exchange and reads at most `limit` bytes of the reply (more is an error).
    pub fn exchange(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        body: &[u8],
        timeout: Duration,
        limit: u64,
    ) -> Result<Reply, TransportError> {
        let response = match method {
            Method::Get => {
                let mut request = self.agent.get(url);
                for (name, value) in headers {
                    request = request.header(*name, value.as_str());
                }
                request.config().timeout_global(Some(timeout)).build().call()
            }
            Method::Post => {
                let mut request = self.agent.post(url);
                for (name, value) in headers {
                    request = request.header(*name, value.as_str());
                }
                request.config().timeout_global(Some(timeout)).build().send(body)
            }
        }
        .map_err(|e| TransportError(describe(&e)))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect();
        let body =
            response.into_body().with_config().limit(limit).read_to_vec().map_err(|e| TransportError(describe(&e)))?;
        Ok(Reply { status, headers, body })
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
