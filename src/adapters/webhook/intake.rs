//! What a webhook request must pass, and what it becomes: the source's authentication (an
//! HMAC-SHA256 signature of the body, GitHub-style, or a shared secret header), the timestamp
//! window, the replay memory, the per-source rate limit, and the prompt made from the event.
//! Pure: time comes in as arguments.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::event::{ChatRef, InboundMessage};

/// A timestamp header further than this from our clock is refused.
pub const WINDOW_SECS: u64 = 5 * 60;
/// Accepted deliveries remembered per channel, to refuse a replay of one of them.
pub const REMEMBERED: usize = 4096;
/// Events one source may deliver per [`RATE_WINDOW`].
pub const RATE_LIMIT: usize = 30;
pub const RATE_WINDOW: Duration = Duration::from_secs(60);
/// The payload is cut to this many characters in the prompt.
pub const MAX_PAYLOAD_CHARS: usize = 12_000;
/// The event type is cut to this many characters.
const MAX_EVENT_CHARS: usize = 64;

pub const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";
pub const TIMESTAMP_HEADER: &str = "X-Webhook-Timestamp";
pub const DEFAULT_SECRET_HEADER: &str = "X-Webhook-Secret";
pub const DEFAULT_TEMPLATE: &str =
    "A webhook event arrived from \"{source}\" (event: {event}). Its payload:\n\n{payload}";

/// How a source proves a request is its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// `X-Hub-Signature-256: sha256=<hex of HMAC-SHA256(secret, body)>`; with a timestamp
    /// header, the HMAC is of `<timestamp>.<body>`.
    HmacSha256,
    /// The secret itself in this header.
    Header(String),
}

/// One configured source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub name: String,
    pub secret: String,
    pub auth: Auth,
    /// Where its events are answered (a chat of another channel).
    pub target: ChatRef,
    pub template: String,
    /// Names the conversation its events go to (sources with the same one share it).
    pub session: String,
}

/// Why a request was refused; [`Refusal::status`] is the HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    UnknownSource,
    Unauthorized(&'static str),
    Replayed,
    RateLimited(Duration),
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::UnknownSource => 404,
            Refusal::Unauthorized(_) => 401,
            Refusal::Replayed => 409,
            Refusal::RateLimited(_) => 429,
        }
    }

    pub fn reason(&self) -> String {
        match self {
            Refusal::UnknownSource => "no such webhook source".into(),
            Refusal::Unauthorized(why) => (*why).into(),
            Refusal::Replayed => "this delivery was already accepted (replay)".into(),
            Refusal::RateLimited(wait) => format!("too many events from this source; retry in {} s", wait.as_secs()),
        }
    }
}

/// The request, as far as the intake reads it.
#[derive(Clone, Copy)]
pub struct Delivery<'a> {
    pub source: &'a str,
    /// Header lookup (case-insensitive, as `httpd::Request::header`).
    pub header: &'a dyn Fn(&str) -> Option<String>,
    pub body: &'a [u8],
}

/// Every source of one channel, with the replay memory and the rate windows.
#[derive(Debug)]
pub struct Intake {
    sources: Vec<Source>,
    seen: HashSet<[u8; 32]>,
    seen_order: VecDeque<[u8; 32]>,
    /// Accept times per source (same order as `sources`).
    recent: Vec<VecDeque<Instant>>,
}

impl Intake {
    pub fn new(sources: Vec<Source>) -> Intake {
        let recent = sources.iter().map(|_| VecDeque::new()).collect();
        Intake { sources, seen: HashSet::new(), seen_order: VecDeque::new(), recent }
    }

    /// Judge one delivery at `now` (`now_secs`: unix seconds); the message for the core when
    /// it is accepted.
    pub fn judge(&mut self, d: &Delivery<'_>, now_secs: u64, now: Instant) -> Result<InboundMessage, Refusal> {
        let index = self.sources.iter().position(|s| s.name == d.source).ok_or(Refusal::UnknownSource)?;
        let source = &self.sources[index];
        let timestamp = match (d.header)(TIMESTAMP_HEADER) {
            None => None,
            Some(text) => {
                let ts = text.trim().parse::<u64>().map_err(|_| Refusal::Unauthorized("malformed timestamp header"))?;
                if ts.abs_diff(now_secs) > WINDOW_SECS {
                    return Err(Refusal::Unauthorized("timestamp outside the accepted window (±5 min)"));
                }
                Some(ts)
            }
        };
        let signed = match timestamp {
            Some(ts) => [format!("{ts}.").as_bytes(), d.body].concat(),
            None => d.body.to_vec(),
        };
        match &source.auth {
            Auth::HmacSha256 => {
                let header = (d.header)(SIGNATURE_HEADER).ok_or(Refusal::Unauthorized("no signature header"))?;
                let hex = header.trim().strip_prefix("sha256=").ok_or(Refusal::Unauthorized("malformed signature"))?;
                let signature = from_hex(hex).ok_or(Refusal::Unauthorized("malformed signature"))?;
                if !hmac_matches(source.secret.as_bytes(), &signed, &signature) {
                    return Err(Refusal::Unauthorized("bad signature"));
                }
            }
            Auth::Header(name) => {
                let given = (d.header)(name).ok_or(Refusal::Unauthorized("no secret header"))?;
                if !same_secret(given.trim().as_bytes(), source.secret.as_bytes()) {
                    return Err(Refusal::Unauthorized("bad secret"));
                }
            }
        }
        // The same signed content again is a replay (its headers other than the signature and
        // timestamp are not authenticated, so they do not count).
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        sha.update(source.name.as_bytes());
        sha.update(&[0]);
        sha.update(&signed);
        let mut key = [0u8; 32];
        key.copy_from_slice(sha.finish().as_ref());
        if self.seen.contains(&key) {
            return Err(Refusal::Replayed);
        }
        let recent = &mut self.recent[index];
        while recent.front().is_some_and(|at| now.saturating_duration_since(*at) >= RATE_WINDOW) {
            recent.pop_front();
        }
        if recent.len() >= RATE_LIMIT {
            let oldest = recent.front().copied().unwrap_or(now);
            let wait = RATE_WINDOW.saturating_sub(now.saturating_duration_since(oldest));
            return Err(Refusal::RateLimited(wait.max(Duration::from_secs(1))));
        }
        recent.push_back(now);
        let message = event_message(source, &event_type(d), d.body);
        self.remember(key);
        Ok(message)
    }

    fn remember(&mut self, key: [u8; 32]) {
        if self.seen_order.len() >= REMEMBERED
            && let Some(oldest) = self.seen_order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        self.seen.insert(key);
        self.seen_order.push_back(key);
    }
}

/// HMAC-SHA256 of `data` under `key`, compared with `signature` in constant time.
fn hmac_matches(key: &[u8], data: &[u8], signature: &[u8]) -> bool {
    ring::hmac::verify(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), data, signature).is_ok()
}

/// The signature header a sender computes (tests and the fuzz target use it).
pub fn sign(secret: &str, timestamp: Option<u64>, body: &[u8]) -> String {
    let signed = match timestamp {
        Some(ts) => [format!("{ts}.").as_bytes(), body].concat(),
        None => body.to_vec(),
    };
    let mac = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes()), &signed);
    format!("sha256={}", mac.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Equal secrets, compared through their digests in constant time, so the time taken says
/// nothing about where they differ, nor about the secret's length.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let sha256 = |bytes: &[u8]| ring::digest::digest(&ring::digest::SHA256, bytes);
    crate::net::httpd::constant_time_eq(sha256(given).as_ref(), sha256(expected).as_ref())
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| text.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok())).collect()
}

/// `X-GitHub-Event`, else `X-Webhook-Event`, else the body's top-level `"type"`, else
/// `"event"`; printable characters only, cut short.
fn event_type(d: &Delivery<'_>) -> String {
    let from_body = || {
        serde_json::from_slice::<serde_json::Value>(d.body)
            .ok()
            .and_then(|v| v.get("type").and_then(serde_json::Value::as_str).map(str::to_string))
    };
    let raw = (d.header)("X-GitHub-Event")
        .or_else(|| (d.header)("X-Webhook-Event"))
        .or_else(from_body)
        .unwrap_or_else(|| "event".into());
    let clean: String = raw.chars().filter(|c| !c.is_control()).take(MAX_EVENT_CHARS).collect();
    if clean.trim().is_empty() { "event".into() } else { clean }
}

/// The payload as text, cut at a character boundary to [`MAX_PAYLOAD_CHARS`].
pub fn payload_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match text.char_indices().nth(MAX_PAYLOAD_CHARS) {
        None => text.into_owned(),
        Some((at, _)) => format!(
            "{}\n… (truncated: the first {MAX_PAYLOAD_CHARS} characters of {} bytes)",
            text.get(..at).unwrap_or_default(),
            body.len()
        ),
    }
}

/// `template` with `{source}`, `{event}` and `{payload}` filled in, in one pass (a payload
/// that contains `{source}` stays as it is).
pub fn fill(template: &str, source: &str, event: &str, payload: &str) -> String {
    let mut out = String::with_capacity(template.len() + payload.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(rest.get(..start).unwrap_or_default());
        let after = rest.get(start..).unwrap_or_default();
        let (value, used) = if after.starts_with("{source}") {
            (source, "{source}".len())
        } else if after.starts_with("{event}") {
            (event, "{event}".len())
        } else if after.starts_with("{payload}") {
            (payload, "{payload}".len())
        } else {
            ("{", 1)
        };
        out.push_str(value);
        rest = after.get(used..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

/// The message the core gets for an accepted event: it belongs to the target channel and
/// chat (replies go there), its sender is the source, and it is marked as a webhook event.
fn event_message(source: &Source, event: &str, body: &[u8]) -> InboundMessage {
    InboundMessage {
        channel: source.target.channel.clone(),
        sender_id: format!("webhook:{}", source.session),
        sender_name: format!("webhook {}", source.name),
        chat_id: source.target.chat_id.clone(),
        thread_id: source.target.thread_id.clone(),
        // No id: the event is not journaled by the target channel (see README, Webhooks).
        message_id: None,
        is_group: false,
        is_mentioned: true,
        text: fill(&source.template, &source.name, event, &payload_text(body)),
        webhook: Some(source.name.clone()),
        ..InboundMessage::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_767_000_000;

    /// (source, headers, body, expected)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str, Result<(), Refusal>);

    fn source(name: &str, auth: Auth) -> Source {
        Source {
            name: name.into(),
            secret: "s3cret".into(),
            auth,
            target: ChatRef { channel: "phone".into(), chat_id: "111".into(), thread_id: None },
            template: DEFAULT_TEMPLATE.into(),
            session: name.into(),
        }
    }

    fn intake() -> Intake {
        Intake::new(vec![source("ci", Auth::HmacSha256), source("alerts", Auth::Header("X-Token".into()))])
    }

    fn judge(
        intake: &mut Intake,
        name: &str,
        headers: &[(&str, String)],
        body: &str,
        now: Instant,
    ) -> Result<InboundMessage, Refusal> {
        let owned: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        let header = move |n: &str| owned.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.clone());
        intake.judge(&Delivery { source: name, header: &header, body: body.as_bytes() }, NOW, now)
    }

    #[test]
    fn signatures_secrets_timestamps_and_replays() {
        let t0 = Instant::now();
        let body = r#"{"action":"completed","type":"workflow_run"}"#;
        let good = sign("s3cret", None, body.as_bytes());
        let stamped = |ts: u64| sign("s3cret", Some(ts), body.as_bytes());
        let sig = |v: String| (SIGNATURE_HEADER, v);
        let ts = |v: u64| (TIMESTAMP_HEADER, v.to_string());
        let unauthorized = |why| Err::<(), _>(Refusal::Unauthorized(why));
        #[rustfmt::skip]
        let cases: Vec<Case<'_>> = vec![
            ("nope", vec![sig(good.clone())], body, Err(Refusal::UnknownSource)),
            ("ci", vec![], body, unauthorized("no signature header")),
            ("ci", vec![sig("sha1=abcd".into())], body, unauthorized("malformed signature")),
            ("ci", vec![sig("sha256=zz".into())], body, unauthorized("malformed signature")),
            ("ci", vec![sig(sign("wrong", None, body.as_bytes()))], body, unauthorized("bad signature")),
            ("ci", vec![sig(good.clone())], "{\"tampered\":1}", unauthorized("bad signature")),
            ("ci", vec![sig(good.clone())], body, Ok(())),
            // The same delivery again.
            ("ci", vec![sig(good.clone())], body, Err(Refusal::Replayed)),
            // A timestamp is signed with the body: a fresh timestamp on an old signature fails.
            ("ci", vec![sig(good.clone()), ts(NOW)], body, unauthorized("bad signature")),
            ("ci", vec![sig(stamped(NOW - 10)), ts(NOW - 10)], body, Ok(())),
            ("ci", vec![sig(stamped(NOW - 10)), ts(NOW - 10)], body, Err(Refusal::Replayed)),
            ("ci", vec![sig(stamped(NOW - 301)), ts(NOW - 301)], body, unauthorized("timestamp outside the accepted window (±5 min)")),
            ("ci", vec![sig(stamped(NOW + 301)), ts(NOW + 301)], body, unauthorized("timestamp outside the accepted window (±5 min)")),
            ("ci", vec![sig(stamped(NOW)), (TIMESTAMP_HEADER, "soon".into())], body, unauthorized("malformed timestamp header")),
            // A shared secret header.
            ("alerts", vec![], body, unauthorized("no secret header")),
            ("alerts", vec![("x-token", "s3cre".into())], body, unauthorized("bad secret")),
            ("alerts", vec![("x-token", "s3cret".into())], body, Ok(())),
            ("alerts", vec![("x-token", "s3cret".into())], body, Err(Refusal::Replayed)),
            ("alerts", vec![("x-token", "s3cret".into()), ts(NOW)], body, Ok(())),
            // Sources are remembered apart.
            ("ci", vec![sig(sign("s3cret", None, b"{}"))], "{}", Ok(())),
            ("alerts", vec![("x-token", "s3cret".into())], "{}", Ok(())),
        ];
        let mut intake = intake();
        for (i, (name, headers, body, expected)) in cases.into_iter().enumerate() {
            let got = judge(&mut intake, name, &headers, body, t0).map(|_| ());
            assert_eq!(got, expected, "case {i}: {name} {headers:?}");
        }
        assert_eq!(Refusal::Replayed.status(), 409);
        assert_eq!(Refusal::Unauthorized("x").status(), 401);
    }

    #[test]
    fn each_source_is_rate_limited_and_the_memory_is_bounded() {
        let t0 = Instant::now();
        let mut intake = intake();
        for n in 0..RATE_LIMIT {
            let body = format!("{{\"n\":{n}}}");
            let headers = [(SIGNATURE_HEADER, sign("s3cret", None, body.as_bytes()))];
            assert!(judge(&mut intake, "ci", &headers, &body, t0).is_ok(), "{n}");
        }
        let body = "{\"n\":\"one more\"}";
        let headers = [(SIGNATURE_HEADER, sign("s3cret", None, body.as_bytes()))];
        let refused = judge(&mut intake, "ci", &headers, body, t0 + Duration::from_secs(20));
        assert_eq!(refused.map(|_| ()), Err(Refusal::RateLimited(Duration::from_secs(40))));
        // Another source has its own budget; a minute later this one has its budget back,
        // and the refused delivery was not remembered as seen.
        assert!(judge(&mut intake, "alerts", &[("X-Token", "s3cret".into())], body, t0).is_ok());
        assert!(judge(&mut intake, "ci", &headers, body, t0 + RATE_WINDOW).is_ok());
        for n in 0..REMEMBERED + 10 {
            intake.remember([
                (n % 256) as u8,
                (n / 256) as u8,
                1,
                2,
                3,
                4,
                5,
                6,
                7,
                8,
                9,
                10,
                11,
                12,
                13,
                14,
                15,
                16,
                17,
                18,
                19,
                20,
                21,
                22,
                23,
                24,
                25,
                26,
                27,
                28,
                29,
                30,
            ]);
        }
        assert_eq!((intake.seen.len(), intake.seen_order.len()), (REMEMBERED, REMEMBERED));
    }

    #[test]
    fn the_event_becomes_a_prompt_for_the_target_chat() {
        let mut intake = intake();
        let body = r#"{"type":"deploy","note":"{source} stays"}"#;
        let headers = [(SIGNATURE_HEADER, sign("s3cret", None, body.as_bytes()))];
        let m = judge(&mut intake, "ci", &headers, body, Instant::now()).unwrap();
        assert_eq!((m.channel.as_str(), m.chat_id.as_str()), ("phone", "111"));
        assert_eq!((m.sender_id.as_str(), m.webhook.as_deref(), m.message_id), ("webhook:ci", Some("ci"), None));
        assert_eq!(m.text, format!("A webhook event arrived from \"ci\" (event: deploy). Its payload:\n\n{body}"));
        let headers = [(SIGNATURE_HEADER, sign("s3cret", None, b"[]")), ("X-GitHub-Event", "push\n".into())];
        let m = judge(&mut intake, "ci", &headers, "[]", Instant::now()).unwrap();
        assert!(m.text.contains("(event: push)"), "{}", m.text);
    }

    #[test]
    fn payloads_are_cut_at_a_character_boundary() {
        let body = "é".repeat(MAX_PAYLOAD_CHARS + 5);
        let text = payload_text(body.as_bytes());
        assert!(text.starts_with(&"é".repeat(MAX_PAYLOAD_CHARS)));
        assert!(text.ends_with(&format!("of {} bytes)", body.len())), "{}", &text[text.len() - 80..]);
        assert_eq!(payload_text(b"short"), "short");
        assert_eq!(payload_text(b"\xff{}"), "\u{FFFD}{}");
    }

    #[test]
    fn templates_fill_in_one_pass() {
        let cases = [
            ("{source}/{event}: {payload}", "ci/push: {event} x"),
            ("no placeholders {x} {", "no placeholders {x} {"),
            ("{payload}{payload}", "{event} x{event} x"),
            ("é{source}é", "écié"),
        ];
        for (template, expected) in cases {
            assert_eq!(fill(template, "ci", "push", "{event} x"), expected, "{template}");
        }
    }
}
