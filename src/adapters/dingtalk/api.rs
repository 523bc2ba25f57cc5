//! The HTTP side of one DingTalk app: opening a Stream connection, the access token (cached
//! until shortly before it expires, renewed once when a call says it is stale), the robot
//! OpenAPI calls, the media upload and the two-step file download. Shared by the stream, inbox and courier
//! threads of a channel.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;

use super::wire::{self, ApiError, Ticket, Token};
use crate::adapters::outbox::Failure;
use crate::health::wall_ms;
use crate::net::http::{HttpClient, Method, RawReply};
use crate::net::multipart;

const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A download of one file: its size is bounded too ([`MAX_DOWNLOAD_BYTES`]).
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// An upload of up to the channel's media limit may take a while on a slow link.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// The largest file taken from a message.
pub const MAX_DOWNLOAD_BYTES: u64 = 25 * 1024 * 1024;

/// One DingTalk app, as its API sees it.
pub struct App {
    pub http: HttpClient,
    /// `https://api.dingtalk.com` unless configured: Stream gateway and robot OpenAPI.
    pub api_base: String,
    /// `https://oapi.dingtalk.com` unless configured: the access token.
    pub oapi_base: String,
    pub client_id: String,
    client_secret: String,
    token: Mutex<Option<Token>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "App({}, {})", self.client_id, self.api_base)
    }
}

impl App {
    pub fn new(api_base: String, oapi_base: String, client_id: String, client_secret: String) -> App {
        App { http: HttpClient::default(), api_base, oapi_base, client_id, client_secret, token: Mutex::new(None) }
    }

    /// `connections/open`: a fresh endpoint and single-use ticket.
    pub fn open_connection(&self) -> Result<Ticket, ApiError> {
        let url = format!("{}/v1.0/gateway/connections/open", self.api_base);
        let body = wire::open_request(&self.client_id, &self.client_secret);
        // Without Accept the gateway may answer in XML.
        match self.http.post_json_with(&url, &[("Accept", "application/json")], &body, CALL_TIMEOUT) {
            Ok((status, text)) => wire::parse_open(status, &text),
            Err(e) => Err(ApiError::Transient(e.to_string())),
        }
    }

    /// The cached access token, or a new one.
    fn token(&self) -> Result<String, Failure> {
        let mut cached = self.token.lock().unwrap_or_else(PoisonError::into_inner);
        let now = wall_ms();
        if let Some(token) = cached.as_ref().filter(|t| t.renew_at_ms > now) {
            return Ok(token.value.clone());
        }
        let url = wire::token_url(&self.oapi_base, &self.client_id, &self.client_secret);
        let fetched = self
            .http
            .exchange(Method::Get, &url, &[], &[], CALL_TIMEOUT, 64 * 1024)
            .map_err(|e| Failure::Transient(format!("gettoken: {e}")))?;
        let text = String::from_utf8_lossy(&fetched.body);
        match wire::parse_token(fetched.status, &text, now) {
            Ok(token) => {
                let value = token.value.clone();
                *cached = Some(token);
                Ok(value)
            }
            Err(ApiError::Unauthorized(d)) => {
                Err(Failure::Unauthorized(format!("DingTalk refused clientId/clientSecret for an access token ({d})")))
            }
            Err(ApiError::Transient(d)) => Err(Failure::Transient(format!("gettoken: {d}"))),
        }
    }

    fn forget_token(&self) {
        *self.token.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// One new-style OpenAPI call (`POST {apiBase}{path}`) with the token header; a token the
    /// server calls invalid is renewed and the call made once more.
    pub fn call(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        self.call_within(path, body, CALL_TIMEOUT)
    }

    /// [`App::call`] waiting at most `timeout` per attempt.
    pub fn call_within(&self, path: &str, body: &Value, timeout: Duration) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.api_base);
        let mut renewed = false;
        loop {
            let token = self.token()?;
            let headers = [("x-acs-dingtalk-access-token", token.as_str())];
            let answer = match self.http.post_json_with(&url, &headers, body, timeout) {
                Ok((status, text)) => wire::parse_openapi_reply(status, &text),
                Err(e) => Err(Failure::Transient(e.to_string())),
            };
            match answer {
                Err(Failure::Unauthorized(_)) if !renewed => {
                    self.forget_token();
                    renewed = true;
                }
                other => return other,
            }
        }
    }

    /// `media/upload` (legacy API, token in the query): one file as a multipart `media` part;
    /// returns its `media_id`. A token DingTalk calls invalid is renewed once.
    pub fn upload_media(&self, image: bool, file_name: &str, mime: &str, bytes: &[u8]) -> Result<String, Failure> {
        let boundary = multipart::pick_boundary(getrandom::u64().unwrap_or(0x7e7e_7e7e), &[bytes]);
        let body = multipart::multipart(&boundary, &[], ("media", file_name, mime, bytes));
        let headers = [("Content-Type", format!("multipart/form-data; boundary={boundary}"))];
        let mut renewed = false;
        loop {
            let url = wire::media_upload_url(&self.oapi_base, &self.token()?, image);
            let answer = match self.http.exchange(Method::Post, &url, &headers, &body, UPLOAD_TIMEOUT, 64 * 1024) {
                Ok(reply) => wire::parse_media_upload(reply.status, &reply.text()),
                Err(e) => Err(Failure::Transient(format!("media/upload: {e}"))),
            };
            match answer {
                Err(Failure::Unauthorized(_)) if !renewed => {
                    self.forget_token();
                    renewed = true;
                }
                other => return other,
            }
        }
    }

    /// A message's file: exchange its download code for a temporary URL, then fetch it.
    pub fn download(&self, download_code: &str, robot_code: Option<&str>) -> Result<RawReply, String> {
        let robot = robot_code.unwrap_or(&self.client_id);
        let answer = self
            .call("/v1.0/robot/messageFiles/download", &wire::download_request(download_code, robot))
            .map_err(|f| format!("messageFiles/download: {f}"))?;
        let url = wire::download_url(&answer).ok_or_else(|| "no downloadUrl in the answer".to_string())?;
        let fetched = self
            .http
            .exchange(Method::Get, &url, &[], &[], DOWNLOAD_TIMEOUT, MAX_DOWNLOAD_BYTES)
            .map_err(|e| e.to_string())?;
        if fetched.status != 200 {
            return Err(format!("the download URL answered HTTP {}", fetched.status));
        }
        Ok(fetched)
    }
}
