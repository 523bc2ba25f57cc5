//! Discord REST: the calls the channel makes (gateway URL, send, edit, typing, interaction
//! callbacks, history for gap recovery, a thread's parent) and the per-route rate-limit
//! buckets learned from the answers' headers. A call that its bucket says would be refused is
//! not sent: it fails at once as `RateLimited(wait)`, so the caller's pacing waits instead.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::wire::{self, RateLimitHeaders, RestFailure};
use crate::net::http::{HttpClient, Method};

/// How long one REST call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// An upload of up to the channel's media limit may take a while on a slow link.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// Most of an answer to an upload we read (it is the message's JSON).
const REPLY_LIMIT: u64 = 1024 * 1024;
const USER_AGENT: &str = concat!("DiscordBot (https://github.com/tether, ", env!("CARGO_PKG_VERSION"), ")");
/// Bound on remembered routes and buckets (a bot talks in a bounded number of channels; past
/// this the expired ones are forgotten, then all).
const MAX_BUCKETS: usize = 1024;
/// Added to a bucket's `X-RateLimit-Reset-After`: Discord rounds it to the millisecond and
/// the answer took time to arrive, so waiting exactly that long can land a send just before
/// the reset, which is a 429 and counts towards Cloudflare's invalid-request ban. 50 ms is
/// the margin discord.js's REST client adds (its `offset`).
const RESET_MARGIN: Duration = Duration::from_millis(50);

/// The rate-limit key of a request: method and path with ids replaced, except the "major
/// parameter" (the channel, guild or webhook id), which Discord limits separately.
pub fn route_key(method: Method, path: &str) -> String {
    let path = path.split('?').next().unwrap_or_default();
    let mut out = format!("{method:?}");
    let mut major_kept = false;
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    for (i, segment) in segments.iter().enumerate() {
        let back = |n: usize| i.checked_sub(n).and_then(|j| segments.get(j)).copied().unwrap_or("");
        out.push('/');
        let is_id = segment.bytes().all(|b| b.is_ascii_digit());
        if is_id && !major_kept && matches!(back(1), "channels" | "guilds" | "webhooks") {
            out.push_str(segment);
            major_kept = true;
        } else if is_id || back(1) == "interactions" || back(2) == "interactions" {
            // An interaction's id and token are per click: one route for all of them.
            out.push_str(":id");
        } else {
            out.push_str(segment);
        }
    }
    out
}

/// The major parameter of a route key (`Post/channels/123/messages` → `123`).
fn major(route: &str) -> &str {
    route.split('/').find(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).unwrap_or("")
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    remaining: u32,
    reset_at: Instant,
}

/// What the answers taught us about limits. Pure: the clock is passed in.
#[derive(Debug, Default)]
pub struct RateLimits {
    /// Route key → Discord's bucket hash.
    route_bucket: HashMap<String, String>,
    /// Bucket hash + major parameter (or the route key before the hash is known) → state.
    buckets: HashMap<String, Bucket>,
    global_until: Option<Instant>,
}

impl RateLimits {
    fn state_key(&self, route: &str) -> String {
        match self.route_bucket.get(route) {
            Some(hash) => format!("{hash}:{}", major(route)),
            None => route.to_string(),
        }
    }

    /// How long to wait before `route` may be called; zero when it may go now.
    pub fn wait_before(&self, route: &str, now: Instant) -> Duration {
        self.global_wait(now).max(self.route_wait(route, now))
    }

    /// How long every route must wait (a global 429).
    pub fn global_wait(&self, now: Instant) -> Duration {
        self.global_until.map_or(Duration::ZERO, |until| until.saturating_duration_since(now))
    }

    fn route_wait(&self, route: &str, now: Instant) -> Duration {
        match self.buckets.get(&self.state_key(route)) {
            Some(b) if b.remaining == 0 => b.reset_at.saturating_duration_since(now),
            _ => Duration::ZERO,
        }
    }

    /// Learn from one answer to `route`.
    pub fn record(
        &mut self,
        route: &str,
        status: u16,
        headers: &RateLimitHeaders,
        retry_after: Option<Duration>,
        now: Instant,
    ) {
        if self.buckets.len() >= MAX_BUCKETS || self.route_bucket.len() >= MAX_BUCKETS {
            self.buckets.retain(|_, b| b.reset_at > now);
            if self.buckets.len() >= MAX_BUCKETS || self.route_bucket.len() >= MAX_BUCKETS {
                self.buckets.clear();
                self.route_bucket.clear();
            }
        }
        if let Some(hash) = &headers.bucket {
            self.route_bucket.insert(route.to_string(), hash.clone());
        }
        let key = self.state_key(route);
        if status == 429 {
            let wait = retry_after.or(headers.retry_after).or(headers.reset_after).unwrap_or(Duration::from_secs(1));
            if headers.global {
                self.global_until = Some(now + wait);
            } else {
                self.buckets.insert(key, Bucket { remaining: 0, reset_at: now + wait });
            }
            return;
        }
        if let (Some(remaining), Some(reset_after)) = (headers.remaining, headers.reset_after) {
            self.buckets.insert(key, Bucket { remaining, reset_at: now + reset_after + RESET_MARGIN });
        }
    }
}

/// One bot's REST endpoint.
#[derive(Debug)]
pub struct Rest {
    http: HttpClient,
    /// `apiBase`, without a trailing slash.
    base: String,
    /// `Bot <token>`: never logged.
    authorization: String,
    limits: Mutex<RateLimits>,
}

impl Rest {
    pub fn new(base: &str, token: &str) -> Rest {
        Rest {
            http: HttpClient::default(),
            base: base.trim_end_matches('/').to_string(),
            authorization: format!("Bot {token}"),
            limits: Mutex::new(RateLimits::default()),
        }
    }

    /// One call: refused at once if its bucket is empty, else sent; the answer's headers
    /// update the buckets. `path` starts with `/`.
    pub fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, RestFailure> {
        let route = self.admit(method, path)?;
        let headers = [("Authorization", self.authorization.as_str()), ("User-Agent", USER_AGENT)];
        let url = format!("{}{path}", self.base);
        let reply = self
            .http
            .request(method, &url, &headers, body, CALL_TIMEOUT)
            .map_err(|e| RestFailure::Transient(e.to_string()))?;
        self.settle(&route, reply.status, &reply.body, |name| reply.header(name))
    }

    /// A `multipart/form-data` POST (a file upload), through the same buckets as [`Rest::call`].
    pub fn post_multipart(&self, path: &str, content_type: &str, body: &[u8]) -> Result<Value, RestFailure> {
        let route = self.admit(Method::Post, path)?;
        let headers = [
            ("Authorization", self.authorization.clone()),
            ("User-Agent", USER_AGENT.to_string()),
            ("Content-Type", content_type.to_string()),
        ];
        let url = format!("{}{path}", self.base);
        let reply = self
            .http
            .exchange(Method::Post, &url, &headers, body, UPLOAD_TIMEOUT, REPLY_LIMIT)
            .map_err(|e| RestFailure::Transient(e.to_string()))?;
        let text = reply.text();
        self.settle(&route, reply.status, &text, |name| reply.header(name).map(str::to_string))
    }

    /// The route key of a call its bucket lets go now, or how long to wait.
    fn admit(&self, method: Method, path: &str) -> Result<String, RestFailure> {
        let route = route_key(method, path);
        let (global, wait) = {
            let limits = self.limits();
            let now = Instant::now();
            (limits.global_wait(now), limits.wait_before(&route, now))
        };
        if !global.is_zero() && global >= wait {
            return Err(RestFailure::GlobalRateLimited(global));
        }
        if !wait.is_zero() {
            return Err(RestFailure::RateLimited(wait));
        }
        Ok(route)
    }

    /// Read an answer and learn the buckets from its headers.
    fn settle(
        &self,
        route: &str,
        status: u16,
        body: &str,
        header: impl Fn(&str) -> Option<String>,
    ) -> Result<Value, RestFailure> {
        let limits = wire::parse_rate_limit_headers(header);
        let result = wire::parse_reply(status, body, &limits);
        let retry_after = match &result {
            Err(RestFailure::RateLimited(d) | RestFailure::GlobalRateLimited(d)) => Some(*d),
            _ => None,
        };
        self.limits().record(route, status, &limits, retry_after, Instant::now());
        result
    }

    fn limits(&self) -> std::sync::MutexGuard<'_, RateLimits> {
        // A panic elsewhere while holding the lock leaves plain data behind: keep using it.
        self.limits.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `GET /gateway/bot` → the gateway URL.
    pub fn gateway_url(&self) -> Result<String, RestFailure> {
        let body = self.call(Method::Get, "/gateway/bot", None)?;
        wire::parse_gateway_bot(&body)
            .ok_or_else(|| RestFailure::Transient(format!("/gateway/bot answered without a ws(s):// url: {body}")))
    }

    /// Post one message with one file (`payload_json` and `files[0]`); returns its id.
    pub fn create_message_with_file(
        &self,
        channel_id: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<String, RestFailure> {
        let reply = self.post_multipart(&format!("/channels/{}/messages", id(channel_id)?), content_type, body)?;
        Ok(reply.get("id").and_then(Value::as_str).unwrap_or_default().to_string())
    }

    /// Post one message; returns its id.
    pub fn create_message(&self, channel_id: &str, body: &Value) -> Result<String, RestFailure> {
        let reply = self.call(Method::Post, &format!("/channels/{}/messages", id(channel_id)?), Some(body))?;
        Ok(reply.get("id").and_then(Value::as_str).unwrap_or_default().to_string())
    }

    pub fn edit_message(&self, channel_id: &str, message_id: &str, body: &Value) -> Result<(), RestFailure> {
        self.call(Method::Patch, &format!("/channels/{}/messages/{}", id(channel_id)?, id(message_id)?), Some(body))
            .map(|_| ())
    }

    pub fn typing(&self, channel_id: &str) -> Result<(), RestFailure> {
        self.call(Method::Post, &format!("/channels/{}/typing", id(channel_id)?), None).map(|_| ())
    }

    pub fn interaction_callback(&self, interaction_id: &str, token: &str, body: &Value) -> Result<(), RestFailure> {
        if !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') {
            return Err(RestFailure::Rejected("interaction token has unexpected characters".to_string()));
        }
        self.call(Method::Post, &format!("/interactions/{}/{token}/callback", id(interaction_id)?), Some(body))
            .map(|_| ())
    }

    /// Up to 100 messages of a channel newer than `after`, oldest first.
    pub fn messages_after(&self, channel_id: &str, after: &str) -> Result<Vec<Value>, RestFailure> {
        let path = format!("/channels/{}/messages?after={}&limit=100", id(channel_id)?, id(after)?);
        let mut list = match self.call(Method::Get, &path, None)? {
            Value::Array(list) => list,
            other => return Err(RestFailure::Transient(format!("message history is not a list: {other}"))),
        };
        // Discord returns newest first.
        list.sort_by(|a, b| {
            let key = |m: &Value| m.get("id").and_then(Value::as_str).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            key(a).cmp(&key(b))
        });
        Ok(list)
    }

    /// The bytes of an attachment (a signed CDN URL: no authorization), at most `limit`.
    pub fn download(&self, url: &str, limit: u64) -> Result<Vec<u8>, String> {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err("attachment URL is not http(s)".to_string());
        }
        match self.http.exchange(Method::Get, url, &[], &[], Duration::from_secs(120), limit) {
            Ok(reply) if reply.status == 200 => Ok(reply.body),
            Ok(reply) => Err(format!("HTTP {}", reply.status)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// `GET /channels/{id}`: the channel's `type` and, for a thread, its `parent_id`.
    pub fn channel_info(&self, channel_id: &str) -> Result<(u64, Option<String>), RestFailure> {
        let channel = self.call(Method::Get, &format!("/channels/{}", id(channel_id)?), None)?;
        let kind = channel.get("type").and_then(Value::as_u64).unwrap_or(0);
        Ok((kind, channel.get("parent_id").and_then(Value::as_str).map(str::to_string)))
    }
}

/// A snowflake fit for a URL path (ids come from the wire; never let one add path segments).
fn id(s: &str) -> Result<&str, RestFailure> {
    if !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) {
        Ok(s)
    } else {
        Err(RestFailure::Rejected(format!("{s:?} is not a Discord id")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_keys_keep_only_the_major_parameter() {
        let cases = [
            (Method::Post, "/channels/123/messages", "Post/channels/123/messages"),
            (Method::Patch, "/channels/123/messages/456", "Patch/channels/123/messages/:id"),
            (Method::Get, "/channels/123/messages?after=9&limit=100", "Get/channels/123/messages"),
            (Method::Post, "/channels/123/typing", "Post/channels/123/typing"),
            (Method::Post, "/interactions/777/aW50ZXJhY3Rpb24/callback", "Post/interactions/:id/:id/callback"),
            (Method::Get, "/gateway/bot", "Get/gateway/bot"),
        ];
        for (method, path, key) in cases {
            assert_eq!(route_key(method, path), key, "{path}");
        }
        assert_eq!(major("Patch/channels/123/messages/:id"), "123");
    }

    fn headers(bucket: &str, remaining: u32, reset_ms: u64) -> RateLimitHeaders {
        RateLimitHeaders {
            bucket: Some(bucket.into()),
            remaining: Some(remaining),
            reset_after: Some(Duration::from_millis(reset_ms)),
            ..Default::default()
        }
    }

    #[test]
    fn an_empty_bucket_waits_until_its_reset() {
        let t0 = Instant::now();
        let mut limits = RateLimits::default();
        let send_a = route_key(Method::Post, "/channels/1/messages");
        let send_b = route_key(Method::Post, "/channels/2/messages");
        assert_eq!(limits.wait_before(&send_a, t0), Duration::ZERO);
        limits.record(&send_a, 200, &headers("h1", 1, 5000), None, t0);
        assert_eq!(limits.wait_before(&send_a, t0), Duration::ZERO);
        limits.record(&send_a, 200, &headers("h1", 0, 3000), None, t0);
        // The reset, plus the margin for Discord's rounding and the answer's travel.
        assert_eq!(limits.wait_before(&send_a, t0 + Duration::from_millis(1000)), Duration::from_millis(2050));
        assert_eq!(limits.wait_before(&send_a, t0 + Duration::from_millis(3000)), Duration::from_millis(50));
        assert_eq!(limits.wait_before(&send_a, t0 + Duration::from_millis(3050)), Duration::ZERO);
        // Same bucket hash, other channel: its own budget.
        assert_eq!(limits.wait_before(&send_b, t0), Duration::ZERO);
        // An edit in channel 1 is another route.
        assert_eq!(limits.wait_before(&route_key(Method::Patch, "/channels/1/messages/5"), t0), Duration::ZERO);
    }

    #[test]
    fn a_429_blocks_its_bucket_or_everything_when_global() {
        let t0 = Instant::now();
        let mut limits = RateLimits::default();
        let send = route_key(Method::Post, "/channels/1/messages");
        let typing = route_key(Method::Post, "/channels/1/typing");
        limits.record(&send, 429, &RateLimitHeaders::default(), Some(Duration::from_millis(640)), t0);
        assert_eq!(limits.wait_before(&send, t0), Duration::from_millis(640));
        assert_eq!(limits.wait_before(&typing, t0), Duration::ZERO);
        let global = RateLimitHeaders { global: true, retry_after: Some(Duration::from_secs(2)), ..Default::default() };
        limits.record(&typing, 429, &global, None, t0);
        assert_eq!(limits.global_wait(t0), Duration::from_secs(2));
        assert_eq!(limits.wait_before(&typing, t0), Duration::from_secs(2));
        assert_eq!(limits.wait_before(&route_key(Method::Get, "/gateway/bot"), t0), Duration::from_secs(2));
        assert_eq!(limits.wait_before(&typing, t0 + Duration::from_secs(3)), Duration::ZERO);
    }

    #[test]
    fn the_tables_stay_bounded() {
        let t0 = Instant::now();
        let mut limits = RateLimits::default();
        for n in 0..5000 {
            let route = route_key(Method::Post, &format!("/channels/{n}/messages"));
            limits.record(&route, 200, &headers(&format!("h{n}"), 0, 60_000), None, t0);
        }
        assert!(limits.buckets.len() <= MAX_BUCKETS && limits.route_bucket.len() <= MAX_BUCKETS);
    }

    #[test]
    fn ids_in_paths_are_checked() {
        assert!(id("1234").is_ok());
        for bad in ["", "12/../x", "abc", "123456789012345678901"] {
            assert!(id(bad).is_err(), "{bad}");
        }
    }
}
