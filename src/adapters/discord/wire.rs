//! Discord's JSON: gateway frames (opcodes, Identify, Resume, READY), MESSAGE_CREATE and
//! INTERACTION_CREATE turned into our events, the REST bodies we send, and the rate-limit
//! headers and error bodies REST answers with. Pure; the only place Discord's shapes exist.
//! Snowflake ids are strings on the wire and stay strings here.

use std::time::Duration;

use serde_json::{Value, json};

use crate::event::{ButtonPress, InboundMessage};

/// GUILDS | GUILD_MESSAGES | DIRECT_MESSAGES | MESSAGE_CONTENT (privileged).
pub const INTENTS: u64 = 1 | (1 << 9) | (1 << 12) | (1 << 15);

/// Discord's limit on a message's `content`, in characters.
pub const MESSAGE_LIMIT: usize = 2000;

/// Discord's epoch (2015-01-01) in unix milliseconds: a snowflake's top bits count from it.
const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

/// One frame the gateway sent, by opcode.
#[derive(Debug, Clone, PartialEq)]
pub enum GatewayEvent {
    /// op 0: an event, with its sequence number.
    Dispatch { seq: Option<u64>, name: String, data: Value },
    /// op 1: the gateway asks for a heartbeat now.
    HeartbeatRequest,
    /// op 7: reconnect and resume.
    Reconnect,
    /// op 9: the session is invalid; `resumable` is its `d`.
    InvalidSession { resumable: bool },
    /// op 10: the first frame, with the heartbeat interval.
    Hello { heartbeat_interval: Duration },
    /// op 11.
    HeartbeatAck,
    /// An opcode we do not use.
    Other { op: u64 },
}

/// Decode one text frame of the gateway.
pub fn decode_frame(text: &str) -> Result<GatewayEvent, String> {
    let frame: Value =
        serde_json::from_slice(text.as_bytes()).map_err(|e| format!("gateway frame is not JSON: {e}"))?;
    let op = frame.get("op").and_then(Value::as_u64).ok_or_else(|| "gateway frame without op".to_string())?;
    let d = frame.get("d").unwrap_or(&Value::Null);
    Ok(match op {
        0 => GatewayEvent::Dispatch {
            seq: frame.get("s").and_then(Value::as_u64),
            name: frame.get("t").and_then(Value::as_str).unwrap_or_default().to_string(),
            data: d.clone(),
        },
        1 => GatewayEvent::HeartbeatRequest,
        7 => GatewayEvent::Reconnect,
        9 => GatewayEvent::InvalidSession { resumable: d.as_bool() == Some(true) },
        10 => {
            let ms = d.get("heartbeat_interval").and_then(Value::as_u64).ok_or("Hello without heartbeat_interval")?;
            // A zero or absurd interval from a broken server must not become a hot loop.
            GatewayEvent::Hello { heartbeat_interval: Duration::from_millis(ms.clamp(100, 600_000)) }
        }
        11 => GatewayEvent::HeartbeatAck,
        op => GatewayEvent::Other { op },
    })
}

/// op 1 with the last sequence seen.
pub fn heartbeat(seq: Option<u64>) -> String {
    json!({"op": 1, "d": seq}).to_string()
}

/// op 2: a new session.
pub fn identify(token: &str) -> String {
    json!({"op": 2, "d": {
        "token": token,
        "intents": INTENTS,
        "properties": {"os": std::env::consts::OS, "browser": "tether", "device": "tether"},
    }})
    .to_string()
}

/// op 6: continue `session_id` after `seq`.
pub fn resume(token: &str, session_id: &str, seq: u64) -> String {
    json!({"op": 6, "d": {"token": token, "session_id": session_id, "seq": seq}}).to_string()
}

/// What READY tells us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub user_id: String,
    pub username: String,
    pub session_id: String,
    pub resume_gateway_url: String,
}

pub fn parse_ready(d: &Value) -> Option<Ready> {
    Some(Ready {
        user_id: d.pointer("/user/id")?.as_str()?.to_string(),
        username: d.pointer("/user/username").and_then(Value::as_str).unwrap_or_default().to_string(),
        session_id: d.get("session_id")?.as_str()?.to_string(),
        resume_gateway_url: d.get("resume_gateway_url")?.as_str()?.to_string(),
    })
}

/// The gateway URL with the query Discord wants (`v=10`, JSON, no compression).
pub fn gateway_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}/{sep}v=10&encoding=json")
}

/// The `url` of a `GET /gateway/bot` reply.
pub fn parse_gateway_bot(body: &Value) -> Option<String> {
    body.get("url")
        .and_then(Value::as_str)
        .filter(|u| u.starts_with("ws://") || u.starts_with("wss://"))
        .map(String::from)
}

/// A file attached to a message, still on Discord's CDN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteAttachment {
    pub url: String,
    pub file_name: String,
    pub content_type: String,
    pub size: u64,
}

/// A MESSAGE_CREATE worth handling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// `sent_at_ms` is when it was posted, from the snowflake.
    pub message: InboundMessage,
    /// Whether it was posted in a thread (then `thread_id` is set and the thread is `chat_id`
    /// until the adapter knows the parent channel); `None` for a server message whose payload
    /// did not say (no `channel_type`): the adapter asks `GET /channels/{id}`.
    pub in_thread: Option<bool>,
    /// The server and channel type as the payload gave them: messages fetched over REST lack
    /// both, and get them back from a live message of the same channel.
    pub guild_id: Option<String>,
    pub channel_type: Option<u64>,
    pub attachments: Vec<RemoteAttachment>,
}

/// What the decoder needs to know about us.
pub trait OwnMessages {
    /// Whether `message_id` is one the bot sent (a reply to it addresses the bot even when
    /// Discord leaves the bot out of `mentions`).
    fn sent_by_bot(&self, message_id: &str) -> bool;
}

impl OwnMessages for () {
    fn sent_by_bot(&self, _: &str) -> bool {
        false
    }
}

/// A MESSAGE_CREATE (or a message fetched over REST) as an [`Incoming`]; `None` for messages
/// to ignore: ours, other bots', webhooks', system messages, empty ones.
pub fn parse_message(d: &Value, channel: &str, bot_id: &str, own: &dyn OwnMessages) -> Option<Incoming> {
    // 0 = default, 19 = reply; joins, pins, thread notices and the like are not for the agent.
    let kind = d.get("type").and_then(Value::as_u64).unwrap_or(0);
    if kind != 0 && kind != 19 {
        return None;
    }
    let author = d.get("author")?;
    let sender_id = author.get("id")?.as_str()?.to_string();
    if sender_id == bot_id || author.get("bot").and_then(Value::as_bool) == Some(true) || d.get("webhook_id").is_some()
    {
        return None;
    }
    let message_id = d.get("id")?.as_str()?.to_string();
    let chat_id = d.get("channel_id")?.as_str()?.to_string();
    let channel_type = d.get("channel_type").and_then(Value::as_u64);
    // DMs have no guild; group DMs (3) count as groups.
    let is_group = d.get("guild_id").is_some_and(|g| !g.is_null()) || channel_type == Some(3);
    let in_thread = match channel_type {
        Some(kind) => Some(matches!(kind, 10..=12)),
        None if is_group => None,
        None => Some(false),
    };
    let content = d.get("content").and_then(Value::as_str).unwrap_or_default();
    let mentioned = d
        .get("mentions")
        .and_then(Value::as_array)
        .is_some_and(|ms| ms.iter().any(|m| m.get("id").and_then(Value::as_str) == Some(bot_id)));
    let referenced = d.get("referenced_message").filter(|r| r.is_object());
    let reply_target = d.pointer("/message_reference/message_id").and_then(Value::as_str);
    let is_reply_to_bot = referenced.and_then(|r| r.pointer("/author/id")).and_then(Value::as_str) == Some(bot_id)
        || reply_target.is_some_and(|id| own.sent_by_bot(id));
    let attachments: Vec<RemoteAttachment> = d
        .get("attachments")
        .and_then(Value::as_array)
        .map(|list| list.iter().filter_map(parse_attachment).collect())
        .unwrap_or_default();
    let text = readable_text(content, bot_id, d.get("mentions"));
    if text.is_empty() && attachments.is_empty() {
        return None;
    }
    let message = InboundMessage {
        channel: channel.to_string(),
        sender_id,
        sender_name: display_name(author, d.get("member")),
        chat_id: chat_id.clone(),
        thread_id: (in_thread == Some(true)).then(|| chat_id.clone()),
        message_id: Some(message_id.clone()),
        is_group,
        is_mentioned: !is_group || mentioned || is_reply_to_bot,
        is_reply_to_bot,
        text,
        quoted_text: referenced.and_then(|r| r.get("content")).and_then(Value::as_str).map(str::to_string),
        attachments: Vec::new(),
        sent_at_ms: snowflake_ms(&message_id),
        webhook: None,
    };
    let guild_id = d.get("guild_id").and_then(Value::as_str).map(str::to_string);
    Some(Incoming { message, in_thread, guild_id, channel_type, attachments })
}

fn parse_attachment(a: &Value) -> Option<RemoteAttachment> {
    Some(RemoteAttachment {
        url: a.get("url")?.as_str()?.to_string(),
        file_name: a.get("filename").and_then(Value::as_str).unwrap_or("file").to_string(),
        content_type: a.get("content_type").and_then(Value::as_str).unwrap_or("application/octet-stream").to_string(),
        size: a.get("size").and_then(Value::as_u64).unwrap_or(0),
    })
}

/// The content with the bot's own `<@id>` / `<@!id>` removed and other users' mentions shown
/// as `@name`; whitespace left behind by a removal is tidied. Only whole tokens are replaced
/// or cut off the end of what is kept, so no input can make this panic.
fn readable_text(content: &str, bot_id: &str, mentions: Option<&Value>) -> String {
    let (mut text, removed) = without_bot_mentions(content, bot_id);
    for m in mentions.and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
        let (Some(id), Some(name)) = (m.get("id").and_then(Value::as_str), m.get("username").and_then(Value::as_str))
        else {
            continue;
        };
        if id != bot_id {
            for token in [format!("<@{id}>"), format!("<@!{id}>")] {
                text = text.replace(&token, &format!("@{name}"));
            }
        }
    }
    if removed {
        text = text
            .lines()
            .map(|line| line.split(' ').filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n");
    }
    text.trim().to_string()
}

/// `text` without the bot's `<@id>` and `<@!id>`, including those a removal puts together
/// (`<@<@id>id>`, which a `replace` per form would leave whole), in one pass: each mention is
/// cut off the end of what is kept as its `>` arrives. Whether any was removed comes second.
fn without_bot_mentions(text: &str, bot_id: &str) -> (String, bool) {
    if !text.contains("<@") {
        return (text.to_string(), false);
    }
    let tokens = [format!("<@{bot_id}>"), format!("<@!{bot_id}>")];
    let mut kept = String::with_capacity(text.len());
    let mut removed = false;
    for c in text.chars() {
        kept.push(c);
        if c != '>' {
            continue;
        }
        // A token ends the kept text: its first byte, an ASCII `<`, is a char boundary.
        if let Some(token) = tokens.iter().find(|t| kept.ends_with(t.as_str())) {
            kept.truncate(kept.len() - token.len());
            removed = true;
        }
    }
    (kept, removed)
}

/// Server nickname, else the global display name, else the username.
fn display_name(author: &Value, member: Option<&Value>) -> String {
    let pick = |v: Option<&Value>| v.and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
    pick(member.and_then(|m| m.get("nick")))
        .or_else(|| pick(author.get("global_name")))
        .or_else(|| pick(author.get("username")))
        .or_else(|| pick(author.get("id")))
        .unwrap_or_default()
}

/// When a snowflake was made, in unix ms.
pub fn snowflake_ms(id: &str) -> Option<u64> {
    id.parse::<u64>().ok().map(|n| (n >> 22) + DISCORD_EPOCH_MS)
}

/// Whether snowflake `a` is newer than `b` (numeric order; longer is newer).
pub fn snowflake_newer(a: &str, b: &str) -> bool {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(a), Ok(b)) => a > b,
        _ => false,
    }
}

/// An INTERACTION_CREATE that is a button click (type 3, component type 2). The press's
/// `callback_id` is `"{interaction id}:{token}"`: both are needed to answer it, and the
/// token is only good for this interaction for 15 minutes.
pub fn parse_button(d: &Value, channel: &str) -> Option<ButtonPress> {
    if d.get("type").and_then(Value::as_u64) != Some(3) {
        return None;
    }
    let user = d.pointer("/member/user").or_else(|| d.get("user"))?;
    // Snowflakes have no `:`; one in the id would split the callback id in the wrong place.
    let id = d.get("id")?.as_str().filter(|id| !id.is_empty() && !id.contains(':'))?;
    let token = d.get("token")?.as_str().filter(|token| !token.is_empty())?;
    let chat_id = d.get("channel_id")?.as_str()?.to_string();
    let in_thread = matches!(d.pointer("/channel/type").and_then(Value::as_u64), Some(10..=12));
    Some(ButtonPress {
        channel: channel.to_string(),
        sender_id: user.get("id")?.as_str()?.to_string(),
        sender_name: display_name(user, d.get("member")),
        thread_id: in_thread.then(|| chat_id.clone()),
        chat_id,
        is_group: d.get("guild_id").is_some_and(|g| !g.is_null()),
        data: d.pointer("/data/custom_id").and_then(Value::as_str).unwrap_or_default().to_string(),
        callback_id: format!("{id}:{token}"),
    })
}

/// The interaction id and token of a [`ButtonPress::callback_id`] made by [`parse_button`].
pub fn split_callback_id(callback_id: &str) -> Option<(&str, &str)> {
    callback_id.split_once(':').filter(|(id, token)| !id.is_empty() && !token.is_empty())
}

/// `POST /channels/{id}/messages`: one chunk, replying to `reply_to` when given, with button
/// rows under it. Mentions in the agent's text never ping anyone.
pub fn create_message(content: &str, reply_to: Option<&str>, buttons: &[(String, String)]) -> Value {
    let mut body = json!({
        "content": content,
        "allowed_mentions": {"parse": [], "replied_user": false},
    });
    if let Some(id) = reply_to {
        body["message_reference"] = json!({"message_id": id, "fail_if_not_exists": false});
    }
    if !buttons.is_empty() {
        body["components"] = components(buttons);
    }
    body
}

/// The `payload_json` of a message carrying one file (`files[0]`): the caption, cut to
/// Discord's limit, and the attachment's name.
pub fn file_message(caption: Option<&str>, file_name: &str) -> Value {
    let content: String = caption.unwrap_or_default().chars().take(MESSAGE_LIMIT).collect();
    json!({
        "content": content,
        "allowed_mentions": {"parse": [], "replied_user": false},
        "attachments": [{"id": 0, "filename": file_name}],
    })
}

/// Action rows of up to 5 buttons, at most 5 rows; labels ≤ 80 and ids ≤ 100 characters as
/// Discord requires. A "deny" button is red, the first button green, others grey.
pub fn components(buttons: &[(String, String)]) -> Value {
    let buttons: Vec<Value> = buttons
        .iter()
        .take(25)
        .enumerate()
        .map(|(i, (label, data))| {
            let style = if data.ends_with(":deny") || data.ends_with(":reject") {
                4
            } else if i == 0 {
                3
            } else {
                2
            };
            json!({"type": 2, "style": style, "label": truncate(label, 80), "custom_id": truncate(data, 100)})
        })
        .collect();
    let rows: Vec<Value> = buttons.chunks(5).map(|row| json!({"type": 1, "components": row})).collect();
    json!(rows)
}

/// `PATCH /channels/{id}/messages/{id}`: new content, buttons removed.
pub fn edit_message(content: &str) -> Value {
    json!({"content": content, "components": [], "allowed_mentions": {"parse": []}})
}

/// `POST /interactions/{id}/{token}/callback`: with a `text`, a reply only the presser sees
/// (type 4, ephemeral); without, a bare acknowledgement (type 6). Either stops Discord's
/// "interaction failed"; the asking message itself is updated by an edit.
pub fn interaction_callback(text: &str) -> Value {
    if text.is_empty() {
        json!({"type": 6})
    } else {
        json!({"type": 4, "data": {"content": truncate(text, MESSAGE_LIMIT), "flags": 64, "allowed_mentions": {"parse": []}}})
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

/// The rate-limit headers of one REST answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RateLimitHeaders {
    pub bucket: Option<String>,
    pub limit: Option<u32>,
    pub remaining: Option<u32>,
    pub reset_after: Option<Duration>,
    /// The 429 is for every route of the bot (`X-RateLimit-Global: true`).
    pub global: bool,
    /// `Retry-After` (seconds), on 429s.
    pub retry_after: Option<Duration>,
}

/// Read the headers through `get(name)` (names as Discord spells them; lookups should be
/// case-insensitive).
pub fn parse_rate_limit_headers(get: impl Fn(&str) -> Option<String>) -> RateLimitHeaders {
    let number = |name: &str| get(name).and_then(|v| v.trim().parse::<u32>().ok());
    let seconds = |name: &str| get(name).and_then(|v| seconds_value(&v));
    RateLimitHeaders {
        bucket: get("X-RateLimit-Bucket").map(|b| b.trim().to_string()).filter(|b| !b.is_empty() && b.len() <= 128),
        limit: number("X-RateLimit-Limit"),
        remaining: number("X-RateLimit-Remaining"),
        reset_after: seconds("X-RateLimit-Reset-After"),
        global: get("X-RateLimit-Global").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
        retry_after: seconds("Retry-After"),
    }
}

/// A count of seconds with decimals, bounded to an hour (a bad header must not park a channel
/// for days).
fn seconds_value(text: &str) -> Option<Duration> {
    let secs: f64 = text.trim().parse().ok()?;
    secs.is_finite().then(|| Duration::from_secs_f64(secs.clamp(0.0, 3600.0)))
}

/// Why a REST call did not succeed, classified by what the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestFailure {
    /// 429: wait this long, then retry the same request.
    RateLimited(Duration),
    /// 429 for every route of the bot (`global`): everything waits this long.
    GlobalRateLimited(Duration),
    /// 401: the token is wrong; stop (Discord bans IPs that keep sending bad tokens).
    Unauthorized(String),
    /// 5xx, timeouts, refused connections, malformed replies: retry with backoff.
    Transient(String),
    /// 403 (missing access/permissions, or a user who blocks DMs): stop sending there.
    Blocked(String),
    /// Other 4xx: the request is wrong (unknown channel, too long). Do not retry.
    Rejected(String),
}

impl std::fmt::Display for RestFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestFailure::RateLimited(d) => write!(f, "rate limited (429): retry after {} ms", d.as_millis()),
            RestFailure::GlobalRateLimited(d) => {
                write!(f, "rate limited (429) for the whole bot: retry after {} ms", d.as_millis())
            }
            RestFailure::Unauthorized(d) => write!(f, "unauthorized: {d}"),
            RestFailure::Transient(d) | RestFailure::Blocked(d) | RestFailure::Rejected(d) => f.write_str(d),
        }
    }
}

/// Classify an HTTP answer: the body as JSON on 2xx (`null` for 204), else the failure with
/// Discord's `code` and `message`. `headers` supplies `Retry-After` when the body lacks it.
pub fn parse_reply(status: u16, body: &str, headers: &RateLimitHeaders) -> Result<Value, RestFailure> {
    if (200..300).contains(&status) {
        if body.trim().is_empty() {
            return Ok(Value::Null);
        }
        return serde_json::from_slice(body.as_bytes()).map_err(|_| {
            RestFailure::Transient(format!("HTTP {status} with a body that is not JSON: {}", preview(body)))
        });
    }
    let reply: Value = serde_json::from_slice(body.as_bytes()).unwrap_or(Value::Null);
    let message = reply.get("message").and_then(Value::as_str).unwrap_or("no message");
    let detail = match reply.get("code").and_then(Value::as_u64) {
        Some(code) if code != 0 => format!("HTTP {status}: {message} (code {code})"),
        _ => format!("HTTP {status}: {message}"),
    };
    Err(match status {
        429 => {
            let from_body =
                reply.get("retry_after").and_then(Value::as_f64).and_then(|s| seconds_value(&s.to_string()));
            let wait = from_body.or(headers.retry_after).unwrap_or(Duration::from_secs(1));
            if headers.global || reply.get("global").and_then(Value::as_bool) == Some(true) {
                RestFailure::GlobalRateLimited(wait)
            } else {
                RestFailure::RateLimited(wait)
            }
        }
        401 => RestFailure::Unauthorized(detail),
        403 => RestFailure::Blocked(detail),
        s if s >= 500 => RestFailure::Transient(detail),
        _ if reply.is_null() => {
            RestFailure::Transient(format!("HTTP {status} with a body that is not JSON: {}", preview(body)))
        }
        _ => RestFailure::Rejected(detail),
    })
}

fn preview(body: &str) -> String {
    body.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOT: &str = "987654321";

    fn dm(content: &str) -> Value {
        json!({"id": "1012345678900020080", "channel_id": "555", "channel_type": 1, "type": 0,
               "content": content, "author": {"id": "111", "username": "alice", "global_name": "Alice"},
               "mentions": [], "attachments": []})
    }

    fn guild(content: &str, mentions: Value) -> Value {
        json!({"id": "1012345678900020081", "channel_id": "103735883630395392", "guild_id": "81384788765712384",
               "channel_type": 0, "type": 0, "content": content,
               "author": {"id": "111", "username": "alice", "global_name": "Alice", "bot": false},
               "member": {"nick": "ally", "roles": []}, "mentions": mentions, "attachments": []})
    }

    fn parse(d: &Value) -> Option<Incoming> {
        parse_message(d, "dc", BOT, &())
    }

    #[test]
    fn frames_decode_by_opcode() {
        let cases = [
            (
                r#"{"op":10,"d":{"heartbeat_interval":41250},"s":null,"t":null}"#,
                GatewayEvent::Hello { heartbeat_interval: Duration::from_millis(41250) },
            ),
            (
                r#"{"op":10,"d":{"heartbeat_interval":0}}"#,
                GatewayEvent::Hello { heartbeat_interval: Duration::from_millis(100) },
            ),
            (r#"{"op":11}"#, GatewayEvent::HeartbeatAck),
            (r#"{"op":1,"d":null}"#, GatewayEvent::HeartbeatRequest),
            (r#"{"op":7,"d":null}"#, GatewayEvent::Reconnect),
            (r#"{"op":9,"d":true}"#, GatewayEvent::InvalidSession { resumable: true }),
            (r#"{"op":9,"d":false}"#, GatewayEvent::InvalidSession { resumable: false }),
            (r#"{"op":9}"#, GatewayEvent::InvalidSession { resumable: false }),
            (
                r#"{"op":0,"s":42,"t":"RESUMED","d":{}}"#,
                GatewayEvent::Dispatch { seq: Some(42), name: "RESUMED".into(), data: json!({}) },
            ),
            (r#"{"op":3,"d":{}}"#, GatewayEvent::Other { op: 3 }),
        ];
        for (text, expected) in cases {
            assert_eq!(decode_frame(text), Ok(expected), "{text}");
        }
        for bad in ["", "nope", "[]", r#"{"op":"x"}"#, r#"{"op":10,"d":{}}"#] {
            assert!(decode_frame(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn client_frames_are_what_discord_expects() {
        assert_eq!(serde_json::from_str::<Value>(&heartbeat(None)).unwrap(), json!({"op": 1, "d": null}));
        assert_eq!(serde_json::from_str::<Value>(&heartbeat(Some(7))).unwrap(), json!({"op": 1, "d": 7}));
        let id: Value = serde_json::from_str(&identify("T0K")).unwrap();
        assert_eq!(id["op"], 2);
        assert_eq!(id["d"]["token"], "T0K");
        assert_eq!(id["d"]["intents"], 37377);
        assert_eq!(
            serde_json::from_str::<Value>(&resume("T0K", "sess", 9)).unwrap(),
            json!({"op": 6, "d": {"token": "T0K", "session_id": "sess", "seq": 9}})
        );
        assert!(identify("x").len() < 4096);
    }

    #[test]
    fn ready_and_gateway_urls() {
        let d = json!({"v": 10, "user": {"id": BOT, "username": "ourbot", "bot": true}, "guilds": [],
                       "session_id": "abc", "resume_gateway_url": "wss://resume.example/", "application": {"id": "1"}});
        assert_eq!(
            parse_ready(&d),
            Some(Ready {
                user_id: BOT.into(),
                username: "ourbot".into(),
                session_id: "abc".into(),
                resume_gateway_url: "wss://resume.example/".into()
            })
        );
        assert_eq!(parse_ready(&json!({"user": {"id": BOT}})), None);
        assert_eq!(gateway_url("wss://gateway.discord.gg"), "wss://gateway.discord.gg/?v=10&encoding=json");
        assert_eq!(gateway_url("ws://127.0.0.1:9/"), "ws://127.0.0.1:9/?v=10&encoding=json");
        assert_eq!(
            parse_gateway_bot(&json!({"url": "wss://gateway.discord.gg", "shards": 1})).as_deref(),
            Some("wss://gateway.discord.gg")
        );
        assert_eq!(parse_gateway_bot(&json!({"url": "https://x"})), None);
    }

    #[test]
    fn a_dm_is_addressed_and_named() {
        let m = parse(&dm("hello there")).unwrap();
        assert_eq!(m.in_thread, Some(false));
        assert_eq!(m.message.chat_id, "555");
        assert!(!m.message.is_group && m.message.is_mentioned && !m.message.is_reply_to_bot);
        assert_eq!(m.message.text, "hello there");
        assert_eq!(m.message.sender_name, "Alice");
        assert_eq!(m.message.message_id.as_deref(), Some("1012345678900020080"));
        assert_eq!(m.message.thread_id, None);
        // 1012345678900020080 >> 22 = 241362018322, + Discord's epoch.
        assert_eq!(m.message.sent_at_ms, Some(241_362_018_322 + DISCORD_EPOCH_MS));
    }

    #[test]
    fn guild_mentions_are_found_and_stripped() {
        let bot = json!([{"id": BOT, "username": "ourbot", "bot": true}]);
        let cases: Vec<(&str, Value, bool, &str)> = vec![
            ("<@987654321> please fix the build", bot.clone(), true, "please fix the build"),
            ("please <@!987654321>  fix it", bot.clone(), true, "please fix it"),
            ("no ping here", json!([]), false, "no ping here"),
            // Another user's mention stays, readable; the bot is not addressed.
            ("<@222> look", json!([{"id": "222", "username": "bob"}]), false, "@bob look"),
            // A look-alike id is not ours.
            ("<@9876543210> hi", json!([{"id": "9876543210", "username": "other"}]), false, "@other hi"),
            // Case-folding and multi-byte text around the mention cannot break the strip.
            ("Ⱥ<@987654321> éẞ", bot.clone(), true, "Ⱥ éẞ"),
            ("line one\n<@987654321> line two", bot.clone(), true, "line one\nline two"),
            // A mention that removing another puts together is removed too.
            ("<@<@987654321>987654321> hi <@!<@!987654321>987654321>", bot.clone(), true, "hi"),
            ("<@<@987654321>!987654321>x", bot.clone(), true, "x"),
        ];
        for (content, mentions, addressed, text) in cases {
            let m = parse(&guild(content, mentions)).unwrap();
            assert!(m.message.is_group, "{content}");
            assert_eq!(m.message.is_mentioned, addressed, "{content}");
            assert_eq!(m.message.text, text, "{content}");
            assert_eq!(m.message.sender_name, "ally");
        }
        // A server message that does not say its channel's type: the adapter must look.
        let mut unsaid = guild("hi", json!([]));
        unsaid.as_object_mut().unwrap().remove("channel_type");
        assert_eq!(parse(&unsaid).unwrap().in_thread, None);
        // Only a mention and nothing else: nothing to handle.
        assert_eq!(parse(&guild("<@987654321>", bot)), None);
    }

    #[test]
    fn a_reply_to_the_bot_is_a_mention_even_without_the_ping() {
        let mut d = guild("and also this", json!([]));
        d["type"] = json!(19);
        d["message_reference"] = json!({"message_id": "77", "channel_id": "103735883630395392"});
        d["referenced_message"] = json!({"id": "77", "content": "earlier answer", "author": {"id": BOT, "bot": true}});
        let m = parse(&d).unwrap();
        assert!(m.message.is_reply_to_bot && m.message.is_mentioned);
        assert_eq!(m.message.quoted_text.as_deref(), Some("earlier answer"));
        // Referenced message not fetched, but we remember sending 77.
        struct Sent;
        impl OwnMessages for Sent {
            fn sent_by_bot(&self, id: &str) -> bool {
                id == "77"
            }
        }
        d["referenced_message"] = Value::Null;
        assert!(!parse(&d).unwrap().message.is_mentioned);
        assert!(parse_message(&d, "dc", BOT, &Sent).unwrap().message.is_mentioned);
        // A reply to someone else is not.
        d["referenced_message"] = json!({"id": "78", "content": "x", "author": {"id": "333"}});
        assert!(!parse(&d).unwrap().message.is_mentioned);
    }

    #[test]
    fn ourselves_other_bots_webhooks_and_system_messages_are_ignored() {
        let mut own = dm("mine");
        own["author"] = json!({"id": BOT, "username": "ourbot", "bot": true});
        let mut other_bot = dm("beep");
        other_bot["author"]["bot"] = json!(true);
        let mut webhook = dm("hook");
        webhook["webhook_id"] = json!("1");
        let mut pin = dm("pinned a message");
        pin["type"] = json!(6);
        let mut no_author = dm("x");
        no_author.as_object_mut().unwrap().remove("author");
        for d in [own, other_bot, webhook, pin, no_author, json!(null), json!({"id": 5})] {
            assert_eq!(parse(&d), None, "{d}");
        }
    }

    #[test]
    fn threads_and_attachments() {
        let mut d = guild("<@987654321> in a thread", json!([{"id": BOT}]));
        d["channel_type"] = json!(11);
        d["channel_id"] = json!("444");
        d["content"] = json!("");
        d["attachments"] = json!([
            {"id": "1", "filename": "shot.png", "content_type": "image/png", "size": 1234, "url": "https://cdn.example/shot.png?ex=1", "proxy_url": "x"},
            {"id": "2", "size": 1}
        ]);
        let m = parse(&d).unwrap();
        assert_eq!(m.in_thread, Some(true));
        assert_eq!(m.message.thread_id.as_deref(), Some("444"));
        assert_eq!(m.message.chat_id, "444");
        assert_eq!(m.message.text, "");
        assert_eq!(
            m.attachments,
            vec![RemoteAttachment {
                url: "https://cdn.example/shot.png?ex=1".into(),
                file_name: "shot.png".into(),
                content_type: "image/png".into(),
                size: 1234
            }]
        );
    }

    #[test]
    fn button_clicks_become_presses() {
        let d = json!({"id": "9001", "application_id": "1", "type": 3, "token": "tok-en",
                       "data": {"custom_id": "perm:3:once", "component_type": 2}, "channel_id": "103",
                       "guild_id": "81", "member": {"user": {"id": "111", "username": "alice"}, "nick": null},
                       "message": {"id": "5"}});
        let p = parse_button(&d, "dc").unwrap();
        assert_eq!((p.sender_id.as_str(), p.chat_id.as_str(), p.data.as_str()), ("111", "103", "perm:3:once"));
        assert!(p.is_group);
        assert_eq!(p.sender_name, "alice");
        assert_eq!(split_callback_id(&p.callback_id), Some(("9001", "tok-en")));
        let mut in_dm = d.clone();
        in_dm.as_object_mut().unwrap().remove("member");
        in_dm.as_object_mut().unwrap().remove("guild_id");
        in_dm["user"] = json!({"id": "222", "username": "bob"});
        let p = parse_button(&in_dm, "dc").unwrap();
        assert_eq!(p.sender_id, "222");
        assert!(!p.is_group);
        // An id that would split the callback id in the wrong place, or no token: no press.
        for (key, bad) in [("id", "90:01"), ("id", ""), ("token", "")] {
            let mut odd = d.clone();
            odd[key] = json!(bad);
            assert_eq!(parse_button(&odd, "dc"), None, "{key}: {bad:?}");
        }
        let mut slash = d;
        slash["type"] = json!(2);
        assert_eq!(parse_button(&slash, "dc"), None);
        assert_eq!(split_callback_id("nocolon"), None);
        assert_eq!(split_callback_id(":x"), None);
    }

    #[test]
    fn rest_bodies() {
        let buttons = vec![
            ("✅ Allow".to_string(), "perm:1:once".to_string()),
            ("❌ Deny".to_string(), "perm:1:deny".to_string()),
        ];
        let body = create_message("hi", Some("42"), &buttons);
        assert_eq!(body["content"], "hi");
        assert_eq!(body["allowed_mentions"], json!({"parse": [], "replied_user": false}));
        assert_eq!(body["message_reference"]["message_id"], "42");
        assert_eq!(
            body["components"],
            json!([{"type": 1, "components": [
                {"type": 2, "style": 3, "label": "✅ Allow", "custom_id": "perm:1:once"},
                {"type": 2, "style": 4, "label": "❌ Deny", "custom_id": "perm:1:deny"}]}])
        );
        let plain = create_message("x", None, &[]);
        assert!(plain.get("components").is_none() && plain.get("message_reference").is_none());
        let many: Vec<(String, String)> = (0..12).map(|i| (format!("b{i}"), format!("d{i}"))).collect();
        let rows = components(&many);
        assert_eq!(rows.as_array().unwrap().len(), 3);
        assert_eq!(rows[2]["components"].as_array().unwrap().len(), 2);
        assert_eq!(edit_message("done")["components"], json!([]));
        assert_eq!(
            interaction_callback("Not allowed."),
            json!({"type": 4, "data": {"content": "Not allowed.", "flags": 64, "allowed_mentions": {"parse": []}}})
        );
        assert_eq!(interaction_callback(""), json!({"type": 6}));
    }

    #[test]
    fn rate_limit_headers_and_errors() {
        let headers = |pairs: &'static [(&'static str, &'static str)]| {
            parse_rate_limit_headers(move |name: &str| {
                pairs.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.to_string())
            })
        };
        let h = headers(&[
            ("x-ratelimit-bucket", "abcd1234"),
            ("x-ratelimit-limit", "5"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset-after", "1.25"),
        ]);
        assert_eq!(h.bucket.as_deref(), Some("abcd1234"));
        assert_eq!((h.limit, h.remaining, h.reset_after), (Some(5), Some(0), Some(Duration::from_millis(1250))));
        assert!(!h.global);
        let g = headers(&[("X-RateLimit-Global", "true"), ("Retry-After", "3"), ("X-RateLimit-Reset-After", "nan")]);
        assert!(g.global);
        assert_eq!((g.retry_after, g.reset_after), (Some(Duration::from_secs(3)), None));
        assert_eq!(headers(&[("X-RateLimit-Reset-After", "99999999")]).reset_after, Some(Duration::from_secs(3600)));

        let none = RateLimitHeaders::default();
        let cases: Vec<(u16, &str, Result<Value, RestFailure>)> = vec![
            (200, r#"{"id":"5"}"#, Ok(json!({"id": "5"}))),
            (204, "", Ok(Value::Null)),
            (
                429,
                r#"{"message":"You are being rate limited.","retry_after":0.25,"global":false}"#,
                Err(RestFailure::RateLimited(Duration::from_millis(250))),
            ),
            (
                401,
                r#"{"message":"401: Unauthorized","code":0}"#,
                Err(RestFailure::Unauthorized("HTTP 401: 401: Unauthorized".into())),
            ),
            (
                403,
                r#"{"message":"Missing Permissions","code":50013}"#,
                Err(RestFailure::Blocked("HTTP 403: Missing Permissions (code 50013)".into())),
            ),
            (
                400,
                r#"{"message":"Invalid Form Body","code":50035}"#,
                Err(RestFailure::Rejected("HTTP 400: Invalid Form Body (code 50035)".into())),
            ),
            (502, "<html>bad gateway</html>", Err(RestFailure::Transient("HTTP 502: no message".into()))),
            (400, "<html>", Err(RestFailure::Transient("HTTP 400 with a body that is not JSON: <html>".into()))),
            (200, "not json", Err(RestFailure::Transient("HTTP 200 with a body that is not JSON: not json".into()))),
        ];
        for (status, body, expected) in cases {
            assert_eq!(parse_reply(status, body, &none), expected, "{status} {body}");
        }
        // A 429 without retry_after in the body uses the header.
        let h = RateLimitHeaders { retry_after: Some(Duration::from_secs(2)), ..Default::default() };
        assert_eq!(parse_reply(429, "{}", &h), Err(RestFailure::RateLimited(Duration::from_secs(2))));
    }

    #[test]
    fn snowflakes_order_and_date() {
        assert!(snowflake_newer("1012345678900020081", "1012345678900020080"));
        assert!(snowflake_newer("10000000000000000000", "999999999999999999"));
        assert!(!snowflake_newer("x", "1"));
        assert_eq!(snowflake_ms("0"), Some(DISCORD_EPOCH_MS));
        assert_eq!(snowflake_ms("x"), None);
    }

    #[test]
    fn a_file_message_names_its_attachment_and_cuts_the_caption() {
        let body = file_message(Some(&"x".repeat(2500)), "plot.png");
        assert_eq!(body["content"].as_str().map(|c| c.chars().count()), Some(2000));
        assert_eq!(body["attachments"], json!([{"id": 0, "filename": "plot.png"}]));
        assert_eq!(body["allowed_mentions"]["parse"], json!([]));
        assert_eq!(file_message(None, "a")["content"], "");
    }
}
