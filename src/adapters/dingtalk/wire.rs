//! DingTalk's wire formats, as pure functions: the Stream gateway's open request and frames
//! (ping echo, disconnect, callbacks, events, the ack every frame gets), robot messages into
//! [`InboundMessage`], the session-webhook and robot-OpenAPI send bodies and their answers,
//! the access token, the two-step download, titles of markdown messages, and the bounded
//! de-duplication of message ids. No I/O here.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde_json::{Value, json};

use crate::adapters::outbox::Failure;
use crate::event::{AttachmentKind, InboundMessage};

/// The topic robot messages arrive on.
pub const ROBOT_TOPIC: &str = "/v1.0/im/bot/messages/get";
/// A session webhook closer to its expiry than this is not used (the reply might arrive
/// after it): the robot OpenAPI takes over.
pub const WEBHOOK_MARGIN_MS: u64 = 5 * 60 * 1000;
/// An access token is renewed this long before DingTalk says it expires.
pub const TOKEN_MARGIN_MS: u64 = 5 * 60 * 1000;
/// How long a message id is remembered against a second delivery.
pub const DEDUP_WINDOW_MS: u64 = 5 * 60 * 1000;
/// At most this many message ids are remembered (the oldest go first).
pub const DEDUP_CAPACITY: usize = 4096;
/// The errcode of a session webhook that expired ("session 不存在").
pub const WEBHOOK_EXPIRED: i64 = 300_001;
/// The longest title shown in DingTalk's notification and chat list.
const TITLE_CHARS: usize = 20;

// ---- Opening a connection ----

/// `POST {apiBase}/v1.0/gateway/connections/open`: subscribe to robot messages (and events,
/// which are acked and otherwise ignored).
pub fn open_request(client_id: &str, client_secret: &str) -> Value {
    json!({
        "clientId": client_id,
        "clientSecret": client_secret,
        "subscriptions": [
            {"type": "CALLBACK", "topic": ROBOT_TOPIC},
            {"type": "EVENT", "topic": "*"},
        ],
        "ua": concat!("tether/", env!("CARGO_PKG_VERSION")),
    })
}

/// Where to connect, with the single-use ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub endpoint: String,
    pub ticket: String,
}

/// Why an API call did not give what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The credentials were refused: fixing the config is the only way out.
    Unauthorized(String),
    /// Anything a retry may fix.
    Transient(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Unauthorized(d) | ApiError::Transient(d) => f.write_str(d),
        }
    }
}

/// The answer to `connections/open`.
pub fn parse_open(status: u16, text: &str) -> Result<Ticket, ApiError> {
    let value: Value = serde_json::from_slice(text.as_bytes()).unwrap_or(Value::Null);
    if status == 401 || status == 403 || value.get("code").and_then(Value::as_str) == Some("authFailed") {
        return Err(ApiError::Unauthorized(format!("HTTP {status}: {}", brief(text))));
    }
    if status != 200 {
        return Err(ApiError::Transient(format!("HTTP {status}: {}", brief(text))));
    }
    let endpoint = value.get("endpoint").and_then(Value::as_str).unwrap_or_default();
    let ticket = value.get("ticket").and_then(Value::as_str).unwrap_or_default();
    if endpoint.is_empty() || ticket.is_empty() {
        return Err(ApiError::Transient(format!("no endpoint and ticket in the answer: {}", brief(text))));
    }
    Ok(Ticket { endpoint: endpoint.to_string(), ticket: ticket.to_string() })
}

/// The WebSocket URL: the endpoint exactly as given, with the ticket as a query parameter.
pub fn socket_url(ticket: &Ticket) -> String {
    let join = if ticket.endpoint.contains('?') { '&' } else { '?' };
    format!("{}{join}ticket={}", ticket.endpoint, percent_encode(&ticket.ticket))
}

// ---- Stream frames ----

/// One frame from the gateway, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// SYSTEM `ping`: answer with its data.
    Ping { message_id: String, data: String },
    /// SYSTEM `disconnect`: the server closes soon; open a new connection now.
    Disconnect { reason: String },
    /// Any other SYSTEM topic (`CONNECTED`, `REGISTERED`, `KEEPALIVE`, …): ack, nothing else.
    System { message_id: String, topic: String },
    /// A CALLBACK (robot messages on [`ROBOT_TOPIC`]); `data` is the JSON text inside.
    Callback { message_id: String, topic: String, data: String },
    /// An EVENT: acked with `SUCCESS`, not used.
    Event { message_id: String, topic: String },
}

/// Decode a text frame; `Err` says what is wrong with it.
pub fn parse_frame(text: &str) -> Result<Frame, String> {
    let value: Value = serde_json::from_slice(text.as_bytes()).map_err(|e| format!("not JSON: {e}"))?;
    let kind = value.get("type").and_then(Value::as_str).unwrap_or_default();
    let headers = value.get("headers").cloned().unwrap_or(Value::Null);
    let header = |name: &str| headers.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
    let message_id = header("messageId");
    let topic = header("topic");
    let data = match value.get("data") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(), // Tolerate data sent as an object.
    };
    match kind {
        "SYSTEM" => Ok(match topic.as_str() {
            "ping" => Frame::Ping { message_id, data },
            "disconnect" => {
                let reason = serde_json::from_slice::<Value>(data.as_bytes())
                    .ok()
                    .and_then(|d| d.get("reason").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_default();
                Frame::Disconnect { reason }
            }
            _ => Frame::System { message_id, topic },
        }),
        "CALLBACK" => Ok(Frame::Callback { message_id, topic, data }),
        "EVENT" => Ok(Frame::Event { message_id, topic }),
        other => Err(format!("unknown frame type {other:?}")),
    }
}

/// The upstream ack of a frame: code 200, the frame's `messageId`, and `data` (a JSON text).
pub fn ack(message_id: &str, data: &str) -> String {
    json!({
        "code": 200,
        "headers": {"contentType": "application/json", "messageId": message_id},
        "message": "OK",
        "data": data,
    })
    .to_string()
}

/// The ack of a robot message callback.
pub fn callback_ack(message_id: &str) -> String {
    ack(message_id, r#"{"response":null}"#)
}

/// The ack of an event: `SUCCESS`, so it is not pushed again.
pub fn event_ack(message_id: &str) -> String {
    ack(message_id, r#"{"status":"SUCCESS","message":"ok"}"#)
}

// ---- Robot messages ----

/// How to answer a conversation: its newest session webhook, and what the robot OpenAPI
/// needs when the webhook expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub webhook: Option<String>,
    /// When the webhook expires (unix ms); unknown: treated as expired.
    pub webhook_expires_ms: u64,
    pub is_group: bool,
    /// The conversation id (`openConversationId` for group sends).
    pub conversation_id: String,
    /// The sender's org user id (`userIds` for one-to-one sends); absent for outsiders.
    pub staff_id: Option<String>,
    /// The robot's code (= the AppKey for an internal app).
    pub robot_code: Option<String>,
    /// The newest message heard in the conversation (the 👀 reaction goes on it).
    pub last_message_id: Option<String>,
}

impl Route {
    /// The webhook, if it is good for a while longer at `now_ms`.
    pub fn live_webhook(&self, now_ms: u64) -> Option<&str> {
        let good = self.webhook_expires_ms.saturating_sub(WEBHOOK_MARGIN_MS) > now_ms;
        self.webhook.as_deref().filter(|_| good)
    }
}

/// A file that came with a message, to fetch with its download code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRef {
    pub kind: AttachmentKind,
    pub download_code: String,
    pub file_name: Option<String>,
}

/// A robot message, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RobotMessage {
    pub message: InboundMessage,
    pub route: Route,
    pub media: Vec<MediaRef>,
}

fn text_of(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Decode the `data` of a robot message callback for channel `channel`.
pub fn parse_robot_message(data: &str, channel: &str) -> Result<RobotMessage, String> {
    let v: Value = serde_json::from_slice(data.as_bytes()).map_err(|e| format!("data is not JSON: {e}"))?;
    let conversation_id = text_of(&v, "conversationId").ok_or("no conversationId")?;
    let msg_id = text_of(&v, "msgId").ok_or("no msgId")?;
    // A string by the docs; tolerate a number.
    let is_group = text_of(&v, "conversationType").as_deref() == Some("2");
    let staff_id = text_of(&v, "senderStaffId");
    let sender_id = staff_id.clone().or_else(|| text_of(&v, "senderId")).ok_or("no senderStaffId or senderId")?;
    let sender_name = text_of(&v, "senderNick").unwrap_or_default();
    let msgtype = text_of(&v, "msgtype").unwrap_or_else(|| "text".into());
    let content = v.get("content").cloned().unwrap_or(Value::Null);
    let mut media = Vec::new();
    let mut push_media = |kind, content: &Value| {
        if let Some(code) = text_of(content, "downloadCode") {
            media.push(MediaRef { kind, download_code: code, file_name: text_of(content, "fileName") });
        }
    };
    let text = match msgtype.as_str() {
        "text" => v.pointer("/text/content").and_then(Value::as_str).unwrap_or_default().to_string(),
        "richText" => {
            let parts = content.get("richText").and_then(Value::as_array).cloned().unwrap_or_default();
            let mut text = String::new();
            for part in &parts {
                match part.get("type").and_then(Value::as_str) {
                    None | Some("text") => text.push_str(part.get("text").and_then(Value::as_str).unwrap_or_default()),
                    Some("picture") => push_media(AttachmentKind::Image, part),
                    _ => {} // `at` parts and others: not text.
                }
            }
            text
        }
        "picture" => {
            push_media(AttachmentKind::Image, &content);
            "(image)".to_string()
        }
        "file" => {
            push_media(AttachmentKind::File, &content);
            format!("(file: {})", text_of(&content, "fileName").unwrap_or_else(|| "unnamed".into()))
        }
        "audio" => {
            push_media(AttachmentKind::Audio, &content);
            text_of(&content, "recognition").unwrap_or_else(|| "(audio)".into())
        }
        "video" => {
            push_media(AttachmentKind::Video, &content);
            "(video)".to_string()
        }
        other => format!("(a DingTalk \"{other}\" message, which tether cannot read)"),
    };
    let is_mentioned = !is_group || v.get("isInAtList").and_then(Value::as_bool).unwrap_or(false);
    let text = if is_group { strip_leading_mention(&text) } else { text.trim().to_string() };
    let bot = text_of(&v, "chatbotUserId");
    let (quoted_text, quoted_sender) = quoted(&v);
    let is_reply_to_bot = bot.is_some() && quoted_sender.is_some() && quoted_sender == bot;
    let message = InboundMessage {
        channel: channel.to_string(),
        sender_id,
        sender_name,
        chat_id: conversation_id.clone(),
        thread_id: None,
        message_id: Some(msg_id),
        is_group,
        is_mentioned,
        is_reply_to_bot,
        text,
        quoted_text,
        attachments: Vec::new(),
        sent_at_ms: v.get("createAt").and_then(Value::as_u64),
        webhook: None,
    };
    let route = Route {
        webhook: text_of(&v, "sessionWebhook"),
        webhook_expires_ms: v.get("sessionWebhookExpiredTime").and_then(Value::as_u64).unwrap_or(0),
        is_group,
        conversation_id,
        staff_id,
        robot_code: text_of(&v, "robotCode"),
        last_message_id: message.message_id.clone(),
    };
    Ok(RobotMessage { message, route, media })
}

/// The platform usually removes the robot's `@name` from a group message, but not always:
/// drop a leading `@word` (as Qwen Code does), and the spaces around.
fn strip_leading_mention(text: &str) -> String {
    let trimmed = text.trim_start();
    let rest = match trimmed.strip_prefix('@') {
        Some(after) => after.split_once(char::is_whitespace).map_or("", |(_, rest)| rest),
        None => trimmed,
    };
    rest.trim().to_string()
}

/// The quoted message's text and sender: `text.repliedMsg` (newer) or `quoteMessage` (legacy).
fn quoted(v: &Value) -> (Option<String>, Option<String>) {
    if let Some(replied) = v.pointer("/text/repliedMsg").filter(|r| r.is_object()) {
        let content = replied.get("content").cloned().unwrap_or(Value::Null);
        let text = match &content {
            Value::String(s) => Some(s.clone()),
            c => text_of(c, "text").or_else(|| {
                c.get("richText")
                    .and_then(Value::as_array)
                    .map(|parts| parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<String>())
            }),
        };
        let text = text.or_else(|| text_of(&content, "fileName").map(|n| format!("(file: {n})")));
        return (text.filter(|t| !t.trim().is_empty()), text_of(replied, "senderId"));
    }
    if let Some(quote) = v.get("quoteMessage").filter(|q| q.is_object()) {
        let text = quote.pointer("/text/content").and_then(Value::as_str).map(str::to_string);
        return (text.filter(|t| !t.trim().is_empty()), text_of(quote, "senderId"));
    }
    (None, None)
}

// ---- Replies ----

/// A reply's title: its first line without leading `#*->` and spaces, at most 20 characters,
/// `Reply` when that leaves nothing.
pub fn title_of(markdown: &str) -> String {
    let line = markdown
        .lines()
        .map(|l| l.trim_start_matches(|c: char| c == '#' || c == '*' || c == '-' || c == '>' || c.is_whitespace()))
        .find(|l| !l.trim().is_empty() && !l.starts_with("```") && !l.starts_with("~~~"))
        .unwrap_or_default();
    let title: String = line.chars().filter(|c| !c.is_control()).take(TITLE_CHARS).collect();
    let title = title.trim().to_string();
    if title.is_empty() { "Reply".to_string() } else { title }
}

/// Separates a piece's title from its text (never in a title: control characters are
/// removed from titles).
const TITLE_END: char = '\u{1f}';

/// A piece's text carrying its title, for the courier to split again.
pub fn titled(title: &str, text: &str) -> String {
    format!("{title}{TITLE_END}{text}")
}

/// The title and the markdown of a piece made by [`titled`]; a piece without a title gets
/// one from its text.
pub fn untitled(piece: &str) -> (String, &str) {
    match piece.split_once(TITLE_END) {
        Some((title, text)) => (title.to_string(), text),
        None => (title_of(piece), piece),
    }
}

/// A markdown message for a session webhook.
pub fn webhook_markdown(title: &str, text: &str) -> Value {
    json!({"msgtype": "markdown", "markdown": {"title": title, "text": text}})
}

/// What a session webhook said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookError {
    /// errcode 300001: the webhook expired; use the robot OpenAPI.
    Expired,
    Failed(Failure),
}

/// The answer of a session webhook: `{"errcode": 0}` is delivered.
pub fn parse_webhook_reply(status: u16, text: &str) -> Result<(), WebhookError> {
    let value: Value = serde_json::from_slice(text.as_bytes()).unwrap_or(Value::Null);
    let errcode = value.get("errcode").and_then(Value::as_i64);
    let errmsg = value.get("errmsg").and_then(Value::as_str).unwrap_or_default();
    match errcode {
        Some(0) if status < 300 => Ok(()),
        Some(WEBHOOK_EXPIRED) => Err(WebhookError::Expired),
        // "send too fast": DingTalk limits a robot to about 20 messages a minute per chat.
        Some(130_101) => Err(WebhookError::Failed(Failure::RateLimited(Duration::from_secs(30)))),
        Some(code) if status < 500 => Err(WebhookError::Failed(Failure::Rejected(format!("errcode {code}: {errmsg}")))),
        _ => Err(WebhookError::Failed(http_failure(status, text))),
    }
}

/// `GET {oapiBase}/gettoken?appkey=…&appsecret=…`.
pub fn token_url(oapi_base: &str, client_id: &str, client_secret: &str) -> String {
    format!("{oapi_base}/gettoken?appkey={}&appsecret={}", percent_encode(client_id), percent_encode(client_secret))
}

/// An access token and when it stops being used (unix ms, with the margin taken off).
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub value: String,
    pub renew_at_ms: u64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token(***, renew at {})", self.renew_at_ms)
    }
}

/// The answer of `gettoken` (`access_token`/`expires_in`) or of the new `oauth2/accessToken`
/// (`accessToken`/`expireIn`).
pub fn parse_token(status: u16, text: &str, now_ms: u64) -> Result<Token, ApiError> {
    let value: Value = serde_json::from_slice(text.as_bytes()).unwrap_or(Value::Null);
    let token = value.get("access_token").or_else(|| value.get("accessToken")).and_then(Value::as_str);
    let expires_s = value.get("expires_in").or_else(|| value.get("expireIn")).and_then(Value::as_u64).unwrap_or(7200);
    let errcode = value.get("errcode").and_then(Value::as_i64).unwrap_or(0);
    match token {
        Some(token) if status == 200 && errcode == 0 && !token.is_empty() => Ok(Token {
            value: token.to_string(),
            renew_at_ms: now_ms + (expires_s * 1000).saturating_sub(TOKEN_MARGIN_MS).max(expires_s * 500),
        }),
        // 40001/40089 and friends: the key or secret is wrong.
        _ if status == 401 || status == 403 || (40_000..41_000).contains(&errcode) => {
            Err(ApiError::Unauthorized(format!("HTTP {status}: {}", brief(text))))
        }
        _ => Err(ApiError::Transient(format!("HTTP {status}: {}", brief(text)))),
    }
}

/// `msgParam` of a markdown robot message (a JSON text inside the JSON).
pub fn markdown_param(title: &str, text: &str) -> String {
    json!({"title": title, "text": text}).to_string()
}

/// `POST {apiBase}/v1.0/robot/groupMessages/send`: a message of any kind (`msgKey` with its
/// `msgParam` JSON text, e.g. `sampleMarkdown` with [`markdown_param`]).
pub fn group_message(robot_code: &str, conversation_id: &str, msg_key: &str, msg_param: &str) -> Value {
    json!({
        "robotCode": robot_code,
        "openConversationId": conversation_id,
        "msgKey": msg_key,
        "msgParam": msg_param,
    })
}

/// `POST {apiBase}/v1.0/robot/oToMessages/batchSend` to one person, of any kind.
pub fn direct_message(robot_code: &str, staff_id: &str, msg_key: &str, msg_param: &str) -> Value {
    json!({
        "robotCode": robot_code,
        "userIds": [staff_id],
        "msgKey": msg_key,
        "msgParam": msg_param,
    })
}

/// `POST {oapiBase}/media/upload?access_token=…&type=image|file`, the file in a multipart
/// `media` part; the answer's `media_id` is what an image or file message names.
pub fn media_upload_url(oapi_base: &str, token: &str, image: bool) -> String {
    let kind = if image { "image" } else { "file" };
    format!("{oapi_base}/media/upload?access_token={}&type={kind}", percent_encode(token))
}

/// The `media_id` of an upload's answer. `errcode` 40014 / 42001 (a token that is invalid or
/// expired) asks for a new token; any other refusal names DingTalk's reason.
pub fn parse_media_upload(status: u16, text: &str) -> Result<String, Failure> {
    let value: Value = serde_json::from_slice(text.as_bytes()).unwrap_or(Value::Null);
    let errcode = value.get("errcode").and_then(Value::as_i64).unwrap_or(-1);
    let media_id = value.get("media_id").and_then(Value::as_str).filter(|id| !id.is_empty());
    match (status, errcode, media_id) {
        (200, 0, Some(id)) => Ok(id.to_string()),
        (_, 40014 | 42001, _) | (401, _, _) => Err(Failure::Unauthorized(format!("media/upload: {}", brief(text)))),
        (s, _, _) if s >= 500 || s == 0 => Err(Failure::Transient(format!("media/upload HTTP {s}: {}", brief(text)))),
        (s, _, _) => Err(Failure::Rejected(format!("DingTalk refused the upload (HTTP {s}): {}", brief(text)))),
    }
}

/// The robot message that shows an uploaded file: `sampleImageMsg` for a picture,
/// `sampleFile` (with its name and extension) for anything else.
pub fn file_message(image: bool, media_id: &str, file_name: &str) -> (&'static str, String) {
    if image {
        return ("sampleImageMsg", json!({"photoURL": media_id}).to_string());
    }
    let extension = file_name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    let file_type = if extension.is_empty() { "file".to_string() } else { extension };
    ("sampleFile", json!({"mediaId": media_id, "fileName": file_name, "fileType": file_type}).to_string())
}

/// The answer of a new-style OpenAPI call (`x-acs-dingtalk-access-token`).
pub fn parse_openapi_reply(status: u16, text: &str) -> Result<Value, Failure> {
    let value: Value = serde_json::from_slice(text.as_bytes()).unwrap_or(Value::Null);
    let code = value.get("code").and_then(Value::as_str).unwrap_or_default();
    if (200..300).contains(&status) {
        return Ok(value);
    }
    if status == 401 || code == "InvalidAuthentication" {
        return Err(Failure::Unauthorized(format!("HTTP {status}: {}", brief(text))));
    }
    if status == 429 || code.contains("QpsLimit") || code.contains("Throttling") {
        return Err(Failure::RateLimited(Duration::from_secs(2)));
    }
    Err(http_failure(status, text))
}

/// The reaction that stands in for "typing…": `POST {apiBase}/v1.0/robot/emotion/reply` to
/// show it on the person's message, `…/emotion/recall` to take it back.
pub fn working_reaction(robot_code: &str, conversation_id: &str, message_id: &str) -> Value {
    json!({
        "robotCode": robot_code,
        "openMsgId": message_id,
        "openConversationId": conversation_id,
        "emotionType": 2,
        "emotionName": "👀",
        "textEmotion": {"emotionId": "2659900", "emotionName": "👀", "text": "👀", "backgroundId": "im_bg_1"},
    })
}

/// `POST {apiBase}/v1.0/robot/messageFiles/download`.
pub fn download_request(download_code: &str, robot_code: &str) -> Value {
    json!({"downloadCode": download_code, "robotCode": robot_code})
}

/// The temporary URL in the answer of `messageFiles/download`.
pub fn download_url(answer: &Value) -> Option<String> {
    answer
        .get("downloadUrl")
        .or_else(|| answer.pointer("/data/downloadUrl"))
        .and_then(Value::as_str)
        .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
        .map(str::to_string)
}

fn http_failure(status: u16, text: &str) -> Failure {
    let detail = format!("HTTP {status}: {}", brief(text));
    if status >= 500 || status == 0 { Failure::Transient(detail) } else { Failure::Rejected(detail) }
}

/// At most 200 characters of an answer, for a log line.
fn brief(text: &str) -> String {
    let mut out: String = text.chars().take(200).collect();
    if text.chars().nth(200).is_some() {
        out.push('…');
    }
    out
}

/// Percent-encode everything but the unreserved characters of RFC 3986.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---- De-duplication ----

/// Message ids seen in the last [`DEDUP_WINDOW_MS`], at most `capacity` of them: a message
/// DingTalk delivers again (after a reconnect, or to be sure) is taken once.
#[derive(Debug)]
pub struct Dedup {
    seen: HashMap<String, u64>,
    order: VecDeque<(String, u64)>,
    capacity: usize,
}

impl Dedup {
    pub fn new(capacity: usize) -> Dedup {
        Dedup { seen: HashMap::new(), order: VecDeque::new(), capacity: capacity.max(1) }
    }

    /// True the first time `id` is seen within the window.
    pub fn first_time(&mut self, id: &str, now_ms: u64) -> bool {
        while let Some((old, at)) = self.order.front() {
            if now_ms.saturating_sub(*at) < DEDUP_WINDOW_MS && self.order.len() < self.capacity {
                break;
            }
            if self.seen.get(old) == Some(at) {
                self.seen.remove(old);
            }
            self.order.pop_front();
        }
        if self.seen.contains_key(id) {
            return false;
        }
        self.seen.insert(id.to_string(), now_ms);
        self.order.push_back((id.to_string(), now_ms));
        true
    }

    /// Forget `id` (it could not be journaled: a new delivery must be taken).
    pub fn forget(&mut self, id: &str) {
        self.seen.remove(id);
    }

    /// How many ids are remembered now.
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dm(extra: Value) -> String {
        let mut v = json!({
            "conversationId": "cidDM==", "conversationType": "1", "chatbotUserId": "$:bot",
            "msgId": "msg1", "msgtype": "text", "text": {"content": " hello "},
            "senderId": "$:alice", "senderStaffId": "0326", "senderNick": "Alice",
            "robotCode": "dingrobot", "sessionWebhook": "https://oapi.dingtalk.com/robot/sendBySession?session=1",
            "sessionWebhookExpiredTime": 1_774_104_349_531u64, "createAt": 1_774_098_949_275u64,
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        v.to_string()
    }

    #[test]
    fn open_request_subscribes_to_robot_messages() {
        let body = open_request("key", "secret");
        assert_eq!(body["clientId"], "key");
        assert_eq!(body["clientSecret"], "secret");
        let subs = body["subscriptions"].as_array().unwrap();
        assert!(subs.iter().any(|s| s["type"] == "CALLBACK" && s["topic"] == ROBOT_TOPIC), "{body}");
    }

    #[test]
    fn open_answers() {
        let cases: &[(u16, &str, Result<Ticket, &str>)] = &[
            (
                200,
                r#"{"endpoint":"wss://gw/connect","ticket":"t-1"}"#,
                Ok(Ticket { endpoint: "wss://gw/connect".into(), ticket: "t-1".into() }),
            ),
            (401, r#"{"code":"authFailed","message":"鉴权失败"}"#, Err("unauthorized")),
            (400, r#"{"code":"authFailed"}"#, Err("unauthorized")),
            (502, "bad gateway", Err("transient")),
            (200, "<xml/>", Err("transient")),
            (200, r#"{"endpoint":"wss://gw"}"#, Err("transient")),
        ];
        for (status, text, want) in cases {
            let got = parse_open(*status, text);
            match (want, &got) {
                (Ok(t), Ok(g)) => assert_eq!(t, g),
                (Err("unauthorized"), Err(ApiError::Unauthorized(_))) => {}
                (Err("transient"), Err(ApiError::Transient(_))) => {}
                _ => panic!("{status} {text}: {got:?}"),
            }
        }
        let t = Ticket { endpoint: "ws://127.0.0.1:9/connect".into(), ticket: "a b+/=".into() };
        assert_eq!(socket_url(&t), "ws://127.0.0.1:9/connect?ticket=a%20b%2B%2F%3D");
        let t = Ticket { endpoint: "wss://gw/connect?x=1".into(), ticket: "k".into() };
        assert_eq!(socket_url(&t), "wss://gw/connect?x=1&ticket=k");
    }

    #[test]
    fn frames() {
        let ping = r#"{"specVersion":"1.0","type":"SYSTEM","headers":{"messageId":"m1","topic":"ping","time":"1"},"data":"{\"opaque\":\"123-dsfs\"}"}"#;
        let cases: Vec<(&str, Result<Frame, ()>)> = vec![
            (ping, Ok(Frame::Ping { message_id: "m1".into(), data: r#"{"opaque":"123-dsfs"}"#.into() })),
            (
                r#"{"type":"SYSTEM","headers":{"messageId":"m2","topic":"disconnect"},"data":"{\"reason\":\"connection is expired\"}"}"#,
                Ok(Frame::Disconnect { reason: "connection is expired".into() }),
            ),
            (
                r#"{"type":"SYSTEM","headers":{"messageId":"m3","topic":"KEEPALIVE","extra":1},"data":""}"#,
                Ok(Frame::System { message_id: "m3".into(), topic: "KEEPALIVE".into() }),
            ),
            (
                r#"{"type":"CALLBACK","headers":{"messageId":"m4","topic":"/v1.0/im/bot/messages/get"},"data":"{\"a\":1}"}"#,
                Ok(Frame::Callback { message_id: "m4".into(), topic: ROBOT_TOPIC.into(), data: r#"{"a":1}"#.into() }),
            ),
            (
                r#"{"type":"EVENT","headers":{"messageId":"m5","topic":"*","eventType":"x"},"data":"{}"}"#,
                Ok(Frame::Event { message_id: "m5".into(), topic: "*".into() }),
            ),
            (r#"{"type":"WHAT"}"#, Err(())),
            ("not json", Err(())),
        ];
        for (text, want) in cases {
            assert_eq!(parse_frame(text).map_err(|_| ()), want, "{text}");
        }
    }

    #[test]
    fn acks_echo_the_message_id_and_a_json_text() {
        let a: Value = serde_json::from_str(&ack("m1", r#"{"opaque":"x"}"#)).unwrap();
        assert_eq!(a["code"], 200);
        assert_eq!(a["headers"]["messageId"], "m1");
        assert_eq!(a["data"], r#"{"opaque":"x"}"#);
        let a: Value = serde_json::from_str(&event_ack("m2")).unwrap();
        let data: Value = serde_json::from_str(a["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["status"], "SUCCESS");
        let a: Value = serde_json::from_str(&callback_ack("m3")).unwrap();
        assert!(serde_json::from_str::<Value>(a["data"].as_str().unwrap()).is_ok());
    }

    #[test]
    fn a_direct_text_message() {
        let m = parse_robot_message(&dm(json!({})), "ding").unwrap();
        assert_eq!(m.message.text, "hello");
        assert_eq!(m.message.sender_id, "0326");
        assert_eq!(m.message.sender_name, "Alice");
        assert_eq!(m.message.chat_id, "cidDM==");
        assert_eq!(m.message.message_id.as_deref(), Some("msg1"));
        assert!(!m.message.is_group && m.message.is_mentioned);
        assert_eq!(m.message.sent_at_ms, Some(1_774_098_949_275));
        assert_eq!(m.route.staff_id.as_deref(), Some("0326"));
        assert_eq!(m.route.robot_code.as_deref(), Some("dingrobot"));
        assert_eq!(m.route.last_message_id.as_deref(), Some("msg1"));
        assert_eq!(m.route.live_webhook(1_774_098_949_275), m.route.webhook.as_deref());
        // Within five minutes of its expiry the webhook is no longer used.
        assert_eq!(m.route.live_webhook(1_774_104_349_531 - 60_000), None);
        assert!(m.media.is_empty());
        // An outsider has no staff id: the encrypted sender id stands in.
        let m = parse_robot_message(&dm(json!({"senderStaffId": null})), "ding").unwrap();
        assert_eq!(m.message.sender_id, "$:alice");
        assert_eq!(m.route.staff_id, None);
    }

    #[test]
    fn group_messages_and_mentions() {
        let cases = [
            (json!({"isInAtList": true, "text": {"content": " 测试数据"}}), true, "测试数据"),
            (json!({"isInAtList": true, "text": {"content": "@Tether /approve 3"}}), true, "/approve 3"),
            (json!({"isInAtList": false, "text": {"content": "just chatting"}}), false, "just chatting"),
            (json!({"text": {"content": "@Tether"}}), false, ""),
        ];
        for (extra, mentioned, text) in cases {
            let mut extra = extra;
            extra["conversationType"] = json!("2");
            extra["conversationTitle"] = json!("Team");
            let m = parse_robot_message(&dm(extra.clone()), "ding").unwrap();
            assert!(m.message.is_group && m.route.is_group, "{extra}");
            assert_eq!(m.message.is_mentioned, mentioned, "{extra}");
            assert_eq!(m.message.text, text, "{extra}");
        }
    }

    #[test]
    fn media_messages() {
        let rich = json!({"msgtype": "richText", "content": {"richText": [
            {"type": "picture", "downloadCode": "p1", "pictureDownloadCode": "x"},
            {"text": "look "}, {"type": "at", "atName": "Tether"}, {"type": "text", "text": "at this"},
            {"type": "picture", "downloadCode": "p2"},
        ]}});
        let m = parse_robot_message(&dm(rich), "ding").unwrap();
        assert_eq!(m.message.text, "look at this");
        let codes: Vec<_> = m.media.iter().map(|r| (r.kind, r.download_code.as_str())).collect();
        assert_eq!(codes, [(AttachmentKind::Image, "p1"), (AttachmentKind::Image, "p2")]);

        let cases = [
            (json!({"msgtype": "picture", "content": {"downloadCode": "c"}}), "(image)", AttachmentKind::Image),
            (
                json!({"msgtype": "file", "content": {"downloadCode": "c", "fileName": "report.pdf"}}),
                "(file: report.pdf)",
                AttachmentKind::File,
            ),
            (
                json!({"msgtype": "audio", "content": {"downloadCode": "c", "recognition": "turn it on"}}),
                "turn it on",
                AttachmentKind::Audio,
            ),
            (json!({"msgtype": "audio", "content": {"downloadCode": "c"}}), "(audio)", AttachmentKind::Audio),
            (json!({"msgtype": "video", "content": {"downloadCode": "c"}}), "(video)", AttachmentKind::Video),
        ];
        for (extra, text, kind) in cases {
            let m = parse_robot_message(&dm(extra.clone()), "ding").unwrap();
            assert_eq!(m.message.text, text, "{extra}");
            assert_eq!(m.media.len(), 1, "{extra}");
            assert_eq!(m.media[0].kind, kind);
            assert_eq!(m.media[0].download_code, "c");
        }
        let m = parse_robot_message(
            &dm(json!({"msgtype": "file", "content": {"downloadCode": "c", "fileName": "a.txt"}})),
            "d",
        )
        .unwrap();
        assert_eq!(m.media[0].file_name.as_deref(), Some("a.txt"));
        let m = parse_robot_message(&dm(json!({"msgtype": "sticker"})), "d").unwrap();
        assert!(m.message.text.contains("sticker"), "{}", m.message.text);
    }

    #[test]
    fn quoted_messages() {
        let replied = json!({"text": {"content": "yes", "isReplyMsg": true,
            "repliedMsg": {"msgId": "q", "senderId": "$:bot", "content": {"text": "Shall I?"}}}});
        let m = parse_robot_message(&dm(replied), "d").unwrap();
        assert_eq!(m.message.text, "yes");
        assert_eq!(m.message.quoted_text.as_deref(), Some("Shall I?"));
        assert!(m.message.is_reply_to_bot);
        let legacy = json!({"quoteMessage": {"msgId": "q", "senderId": "$:bob", "text": {"content": "earlier"}}});
        let m = parse_robot_message(&dm(legacy), "d").unwrap();
        assert_eq!(m.message.quoted_text.as_deref(), Some("earlier"));
        assert!(!m.message.is_reply_to_bot);
        // A quoted card has no content.
        let card = json!({"text": {"content": "ok", "repliedMsg": {"senderId": "$:bot", "content": {}}}});
        let m = parse_robot_message(&dm(card), "d").unwrap();
        assert_eq!(m.message.quoted_text, None);
        assert!(m.message.is_reply_to_bot);
    }

    #[test]
    fn hostile_robot_messages_are_refused_not_panicked_on() {
        for data in ["", "[]", "{}", r#"{"conversationId":"c"}"#, r#"{"conversationId":"c","msgId":"m"}"#] {
            assert!(parse_robot_message(data, "d").is_err(), "{data}");
        }
        let weird = json!({"conversationId": "c", "msgId": 5, "senderId": "s", "msgtype": "richText",
            "content": {"richText": "nope"}, "text": 3, "quoteMessage": [], "createAt": "soon"});
        let m = parse_robot_message(&weird.to_string(), "d").unwrap();
        assert_eq!(m.message.message_id.as_deref(), Some("5"));
        assert_eq!(m.message.sent_at_ms, None);
    }

    #[test]
    fn titles() {
        let cases = [
            ("## Build fixed\nmore", "Build fixed"),
            ("**bold** start", "bold** start"),
            ("- item", "item"),
            ("> quoted", "quoted"),
            ("```rust\nfn main() {}\n```", "fn main() {}"),
            ("", "Reply"),
            ("   \n\n", "Reply"),
            ("一二三四五六七八九十一二三四五六七八九十一二三", "一二三四五六七八九十一二三四五六七八九十"),
            ("tab\there\u{1f}x", "tabherex"),
        ];
        for (text, want) in cases {
            assert_eq!(title_of(text), want, "{text:?}");
        }
        let piece = titled("Hi (cont.)", "body\u{1f}with a separator");
        assert_eq!(untitled(&piece), ("Hi (cont.)".to_string(), "body\u{1f}with a separator"));
        assert_eq!(untitled("# Plain"), ("Plain".to_string(), "# Plain"));
    }

    #[test]
    fn webhook_answers() {
        assert_eq!(parse_webhook_reply(200, r#"{"errcode":0,"errmsg":"ok"}"#), Ok(()));
        assert_eq!(
            parse_webhook_reply(200, r#"{"errcode":300001,"errmsg":"session 不存在"}"#),
            Err(WebhookError::Expired)
        );
        assert!(matches!(
            parse_webhook_reply(200, r#"{"errcode":130101,"errmsg":"send too fast"}"#),
            Err(WebhookError::Failed(Failure::RateLimited(_)))
        ));
        assert!(matches!(
            parse_webhook_reply(200, r#"{"errcode":400,"errmsg":"bad"}"#),
            Err(WebhookError::Failed(Failure::Rejected(_)))
        ));
        assert!(matches!(parse_webhook_reply(502, "oops"), Err(WebhookError::Failed(Failure::Transient(_)))));
        let body = webhook_markdown("T", "**x**");
        assert_eq!(body["msgtype"], "markdown");
        assert_eq!(body["markdown"]["title"], "T");
        assert_eq!(body["markdown"]["text"], "**x**");
    }

    #[test]
    fn tokens() {
        let t = parse_token(200, r#"{"errcode":0,"access_token":"abc","expires_in":7200}"#, 1000).unwrap();
        assert_eq!(t.value, "abc");
        assert_eq!(t.renew_at_ms, 1000 + 7_200_000 - TOKEN_MARGIN_MS);
        let t = parse_token(200, r#"{"accessToken":"s3cr3t","expireIn":60}"#, 0).unwrap();
        assert_eq!((t.value.as_str(), t.renew_at_ms), ("s3cr3t", 30_000));
        assert!(matches!(
            parse_token(200, r#"{"errcode":40089,"errmsg":"invalid appkey"}"#, 0),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(matches!(parse_token(500, "", 0), Err(ApiError::Transient(_))));
        assert!(!format!("{t:?}").contains("s3cr3t"));
        assert_eq!(token_url("https://oapi", "k&1", "s=2"), "https://oapi/gettoken?appkey=k%261&appsecret=s%3D2");
    }

    #[test]
    fn robot_api_sends_and_answers() {
        let g = group_message("rc", "cid", "sampleMarkdown", &markdown_param("T", "text"));
        assert_eq!((g["robotCode"].as_str(), g["openConversationId"].as_str()), (Some("rc"), Some("cid")));
        let param: Value = serde_json::from_str(g["msgParam"].as_str().unwrap()).unwrap();
        assert_eq!(param, json!({"title": "T", "text": "text"}));
        assert_eq!(g["msgKey"], "sampleMarkdown");
        let d = direct_message("rc", "0326", "sampleMarkdown", &markdown_param("T", "text"));
        assert_eq!(d["userIds"], json!(["0326"]));
        assert!(parse_openapi_reply(200, r#"{"processQueryKey":"k"}"#).is_ok());
        let cases = [
            (401, r#"{"code":"InvalidAuthentication"}"#, "unauthorized"),
            (400, r#"{"code":"InvalidAuthentication","message":"不合法的access_token"}"#, "unauthorized"),
            (429, "{}", "rate"),
            (403, r#"{"code":"Forbidden.AccessDenied.QpsLimitForApi"}"#, "rate"),
            (400, r#"{"code":"invalidParameter"}"#, "rejected"),
            (503, "", "transient"),
        ];
        for (status, text, want) in cases {
            let got = parse_openapi_reply(status, text);
            let kind = match got {
                Err(Failure::Unauthorized(_)) => "unauthorized",
                Err(Failure::RateLimited(_)) => "rate",
                Err(Failure::Rejected(_)) => "rejected",
                Err(Failure::Transient(_)) => "transient",
                _ => "other",
            };
            assert_eq!(kind, want, "{status} {text}");
        }
        assert_eq!(download_url(&json!({"downloadUrl": "https://x/y"})).as_deref(), Some("https://x/y"));
        assert_eq!(
            download_url(&json!({"data": {"downloadUrl": "http://127.0.0.1/f"}})).as_deref(),
            Some("http://127.0.0.1/f")
        );
        assert_eq!(download_url(&json!({"downloadUrl": "file:///etc/passwd"})), None);
        assert_eq!(download_request("c", "r"), json!({"downloadCode": "c", "robotCode": "r"}));
        let r = working_reaction("rc", "cid", "msg1");
        assert_eq!((r["openMsgId"].as_str(), r["openConversationId"].as_str()), (Some("msg1"), Some("cid")));
        assert_eq!(r["textEmotion"]["text"], "👀");
    }

    #[test]
    fn dedup_remembers_for_five_minutes_and_is_bounded() {
        let mut d = Dedup::new(3);
        assert!(d.first_time("a", 0));
        assert!(!d.first_time("a", 1000));
        assert!(!d.first_time("a", DEDUP_WINDOW_MS - 1));
        assert!(d.first_time("a", DEDUP_WINDOW_MS + 1), "forgotten after the window");
        for id in ["b", "c", "d", "e"] {
            assert!(d.first_time(id, DEDUP_WINDOW_MS + 2));
        }
        assert!(d.remembered() <= 3, "{}", d.remembered());
        assert!(d.first_time("b", DEDUP_WINDOW_MS + 3), "the oldest went first");
        d.forget("e");
        assert!(d.first_time("e", DEDUP_WINDOW_MS + 4));
    }

    #[test]
    fn uploads_name_their_kind_and_file_messages_their_media() {
        assert_eq!(media_upload_url("http://o", "t k", true), "http://o/media/upload?access_token=t%20k&type=image");
        assert_eq!(parse_media_upload(200, r#"{"errcode":0,"media_id":"@lA1"}"#), Ok("@lA1".to_string()));
        assert!(matches!(parse_media_upload(200, r#"{"errcode":42001}"#), Err(Failure::Unauthorized(_))));
        assert!(matches!(
            parse_media_upload(200, r#"{"errcode":40004,"errmsg":"bad type"}"#),
            Err(Failure::Rejected(_))
        ));
        assert!(matches!(parse_media_upload(502, ""), Err(Failure::Transient(_))));
        let (key, param) = file_message(true, "@m", "plot.png");
        assert_eq!((key, param.as_str()), ("sampleImageMsg", r#"{"photoURL":"@m"}"#));
        let (key, param) = file_message(false, "@m", "Report.PDF");
        assert_eq!(key, "sampleFile");
        let param: Value = serde_json::from_str(&param).unwrap();
        assert_eq!(param, json!({"mediaId": "@m", "fileName": "Report.PDF", "fileType": "pdf"}));
        assert_eq!(direct_message("rc", "0326", "sampleFile", "{}")["userIds"], json!(["0326"]));
    }
}
