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

/// What a GET brought back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub status: u16,
    /// The `Content-Type` header, when there was one.
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl HttpClient {
    /// GET `url`; wait at most `timeout` for the whole exchange; a body over `limit` bytes is
    /// an error (a download must not fill the disk or the memory).
    pub fn get(&self, url: &str, timeout: Duration, limit: u64) -> Result<Fetched, TransportError> {
        let response = self
            .agent
            .get(url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .call()
            .map_err(|e| TransportError(describe(&e)))?;
        let status = response.status().as_u16();
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string);
        let body =
            response.into_body().with_config().limit(limit).read_to_vec().map_err(|e| TransportError(describe(&e)))?;
        Ok(Fetched { status, content_type, body })
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
