//! The exec adapter's wire (docs/plugins.md): one JSON object per line on the adapter's stdin
//! and stdout, every object with `"v": 1` and a `"type"`. Pure: decoding a line the adapter
//! wrote, encoding what tether writes, reading bounded lines, and a log throttle.

use std::io::{self, BufRead};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::event::{Attachment, AttachmentKind, ButtonPress, ChatRef, InboundMessage};

/// The protocol version this build speaks.
pub const VERSION: u64 = 1;
/// The longest line tether reads from an adapter (bytes, newline excluded); longer ones are
/// skipped whole.
pub const MAX_LINE: usize = 1024 * 1024;
/// The message length used until the adapter says otherwise, and the most it may ask for.
pub const DEFAULT_MAX_LENGTH: usize = 4000;
pub const MAX_MAX_LENGTH: usize = 65_536;
/// The fewest characters a message part may be cut to.
const MIN_MAX_LENGTH: usize = 64;
/// Ids, names and paths longer than this are refused (they are keys and log material).
const MAX_ID_CHARS: usize = 256;
const MAX_NAME_CHARS: usize = 256;
const MAX_PATH_CHARS: usize = 4096;
/// Attachments one message may name.
const MAX_ATTACHMENTS: usize = 16;
/// A `log` line's text is cut to this many characters.
const MAX_LOG_CHARS: usize = 2000;

/// What an adapter said it can do (`ready`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdapterCaps {
    pub edit: bool,
    pub typing: bool,
    pub buttons: bool,
    /// Characters per message.
    pub max_length: usize,
}

impl Default for AdapterCaps {
    fn default() -> AdapterCaps {
        AdapterCaps { edit: false, typing: false, buttons: false, max_length: DEFAULT_MAX_LENGTH }
    }
}

/// How a `send`/`edit` went, as the adapter answered it (`sent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SentResult {
    /// Delivered; the platform's id of the message, if it has one.
    Ok(Option<String>),
    /// Not delivered. `retry`: worth trying again (network trouble); `retry_after`: the
    /// platform asked to wait.
    Failed { error: String, retry: bool, retry_after: Option<Duration> },
}

/// One line from the adapter, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromAdapter {
    Ready(AdapterCaps),
    /// A message; `message_id` is `None` when the adapter gave none (tether numbers it).
    Message(InboundMessage),
    Callback(ButtonPress),
    Log {
        level: log::Level,
        text: String,
    },
    Health {
        ok: bool,
        error: Option<String>,
    },
    Sent {
        reference: String,
        result: SentResult,
    },
    /// A `type` this build does not know (a newer adapter): ignored.
    Unknown(String),
}

/// Decode one line the adapter wrote for channel `channel`; `Err` says what is wrong with it.
pub fn decode(line: &[u8], channel: &str) -> Result<FromAdapter, String> {
    let text = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_string())?;
    let value: Value = serde_json::from_slice(text.as_bytes()).map_err(|e| format!("not JSON ({e})"))?;
    let Value::Object(obj) = value else { return Err("not a JSON object".into()) };
    match obj.get("v") {
        None => {} // Read as version 1 (docs/plugins.md).
        Some(v) if v.as_u64() == Some(VERSION) => {}
        Some(v) => return Err(format!("protocol version {v}; this tether speaks {VERSION}")),
    }
    let kind = obj.get("type").and_then(Value::as_str).ok_or("no \"type\"")?;
    match kind {
        "ready" => Ok(FromAdapter::Ready(capabilities(obj.get("capabilities")))),
        "message" => message(&obj, channel).map(FromAdapter::Message),
        "callback" => callback(&obj, channel).map(FromAdapter::Callback),
        "log" => {
            let level = match obj.get("level").and_then(Value::as_str).unwrap_or("info") {
                "error" => log::Level::Error,
                "warn" | "warning" => log::Level::Warn,
                "debug" => log::Level::Debug,
                "trace" => log::Level::Trace,
                _ => log::Level::Info,
            };
            let text = obj.get("text").and_then(Value::as_str).unwrap_or_default();
            Ok(FromAdapter::Log { level, text: cut(text, MAX_LOG_CHARS) })
        }
        "health" => {
            let ok = obj.get("ok").and_then(Value::as_bool).ok_or("health without a boolean \"ok\"")?;
            let error = obj.get("error").and_then(Value::as_str).map(|e| cut(e, MAX_LOG_CHARS));
            Ok(FromAdapter::Health { ok, error })
        }
        "sent" => {
            let reference = id(&obj, "ref")?.ok_or("sent without \"ref\"")?;
            let result = match obj.get("error").and_then(Value::as_str) {
                None => SentResult::Ok(id(&obj, "messageId")?),
                Some(error) => SentResult::Failed {
                    error: cut(error, MAX_LOG_CHARS),
                    retry: obj.get("retry").and_then(Value::as_bool).unwrap_or(false),
                    retry_after: obj.get("retryAfterMs").and_then(Value::as_u64).map(Duration::from_millis),
                },
            };
            Ok(FromAdapter::Sent { reference, result })
        }
        other => Ok(FromAdapter::Unknown(cut(other, 64))),
    }
}

fn capabilities(value: Option<&Value>) -> AdapterCaps {
    let flag = |key: &str| value.and_then(|c| c.get(key)).and_then(Value::as_bool).unwrap_or(false);
    let max_length = value
        .and_then(|c| c.get("maxLength"))
        .and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
        .map_or(DEFAULT_MAX_LENGTH, |n| n.clamp(MIN_MAX_LENGTH, MAX_MAX_LENGTH));
    AdapterCaps { edit: flag("edit"), typing: flag("typing"), buttons: flag("buttons"), max_length }
}

/// An id: a string or an integer (platforms number things), at most [`MAX_ID_CHARS`];
/// `None` when absent, `null` or empty.
fn id(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    let text = match obj.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        Some(_) => return Err(format!("\"{key}\" is not a string or an integer")),
    };
    if text.chars().count() > MAX_ID_CHARS {
        return Err(format!("\"{key}\" is longer than {MAX_ID_CHARS} characters"));
    }
    Ok(Some(text).filter(|t| !t.is_empty()))
}

fn required_id(obj: &Map<String, Value>, key: &str) -> Result<String, String> {
    id(obj, key)?.ok_or_else(|| format!("no \"{key}\""))
}

fn flag(obj: &Map<String, Value>, key: &str) -> bool {
    obj.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn name(obj: &Map<String, Value>, key: &str) -> Option<String> {
    obj.get(key).and_then(Value::as_str).map(|s| cut(s, MAX_NAME_CHARS))
}

fn message(obj: &Map<String, Value>, channel: &str) -> Result<InboundMessage, String> {
    let sender_id = required_id(obj, "senderId")?;
    let is_group = flag(obj, "isGroup");
    let text = match obj.get("text") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("\"text\" is not a string".into()),
    };
    let attachments = match obj.get("attachments") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.len() <= MAX_ATTACHMENTS => {
            items.iter().map(attachment).collect::<Result<Vec<_>, _>>()?
        }
        Some(Value::Array(_)) => return Err(format!("more than {MAX_ATTACHMENTS} attachments")),
        Some(_) => return Err("\"attachments\" is not an array".into()),
    };
    Ok(InboundMessage {
        channel: channel.to_string(),
        sender_name: name(obj, "senderName").unwrap_or_else(|| sender_id.clone()),
        sender_id,
        chat_id: required_id(obj, "chatId")?,
        thread_id: id(obj, "threadId")?,
        message_id: id(obj, "messageId")?,
        is_group,
        // A direct message is addressed to the bot; in a group the adapter says.
        is_mentioned: obj.get("mentioned").and_then(Value::as_bool).unwrap_or(!is_group),
        is_reply_to_bot: flag(obj, "replyToBot"),
        text,
        quoted_text: obj.get("quotedText").and_then(Value::as_str).map(str::to_string),
        attachments,
        sent_at_ms: obj.get("sentAt").and_then(Value::as_u64),
        webhook: None,
    })
}

fn attachment(value: &Value) -> Result<Attachment, String> {
    let path = value.get("path").and_then(Value::as_str).ok_or("an attachment without \"path\"")?;
    if path.chars().count() > MAX_PATH_CHARS || !path.starts_with('/') {
        return Err("an attachment's \"path\" must be an absolute path".into());
    }
    let path = PathBuf::from(path);
    let file_name = value
        .get("name")
        .and_then(Value::as_str)
        .map(|s| cut(s, MAX_NAME_CHARS))
        .or_else(|| path.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let mime_type = value.get("mime").and_then(Value::as_str).unwrap_or("application/octet-stream");
    let kind = match mime_type.split('/').next() {
        Some("image") => AttachmentKind::Image,
        Some("audio") => AttachmentKind::Audio,
        Some("video") => AttachmentKind::Video,
        _ => AttachmentKind::File,
    };
    Ok(Attachment { kind, path, file_name, mime_type: cut(mime_type, MAX_NAME_CHARS) })
}

fn callback(obj: &Map<String, Value>, channel: &str) -> Result<ButtonPress, String> {
    let sender_id = required_id(obj, "senderId")?;
    let data = obj.get("data").and_then(Value::as_str).ok_or("callback without \"data\"")?;
    Ok(ButtonPress {
        channel: channel.to_string(),
        sender_name: name(obj, "senderName").unwrap_or_else(|| sender_id.clone()),
        sender_id,
        chat_id: required_id(obj, "chatId")?,
        thread_id: id(obj, "threadId")?,
        is_group: flag(obj, "isGroup"),
        data: cut(data, MAX_NAME_CHARS),
        callback_id: required_id(obj, "callbackId")?,
    })
}

/// At most `max` characters of `text` (cut at a character boundary).
pub fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => text.get(..at).unwrap_or_default().to_string(),
        None => text.to_string(),
    }
}

// ---- What tether writes. ----

/// How a message's text is written: Markdown as the agent wrote it, or plain text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Markdown,
    Plain,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Markdown => "markdown",
            Format::Plain => "plain",
        }
    }
}

fn line(mut value: Value) -> String {
    if let Some(obj) = value.as_object_mut() {
        obj.insert("v".into(), json!(VERSION));
    }
    let mut text = value.to_string();
    text.push('\n');
    text
}

fn chat_fields(chat: &ChatRef) -> Value {
    json!({"chatId": chat.chat_id, "threadId": chat.thread_id})
}

fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

/// The first line tether writes.
pub fn hello(channel: &str) -> String {
    line(json!({"type": "hello", "channel": channel, "versions": [VERSION], "tether": env!("CARGO_PKG_VERSION")}))
}

pub fn send(reference: &str, chat: &ChatRef, text: &str, format: Format) -> String {
    line(with(chat_fields(chat), json!({"type": "send", "ref": reference, "text": text, "format": format.name()})))
}

/// A message with buttons under it: (label, data) pairs.
pub fn buttons(reference: &str, chat: &ChatRef, text: &str, format: Format, buttons: &[(String, String)]) -> String {
    let buttons: Vec<Value> = buttons.iter().map(|(label, data)| json!({"label": label, "data": data})).collect();
    let fields =
        json!({"type": "buttons", "ref": reference, "text": text, "format": format.name(), "buttons": buttons});
    line(with(chat_fields(chat), fields))
}

pub fn edit(reference: &str, chat: &ChatRef, message_id: &str, text: &str, format: Format) -> String {
    let fields =
        json!({"type": "edit", "ref": reference, "messageId": message_id, "text": text, "format": format.name()});
    line(with(chat_fields(chat), fields))
}

pub fn typing(chat: &ChatRef) -> String {
    line(with(chat_fields(chat), json!({"type": "typing"})))
}

pub fn ack(callback_id: &str, text: &str) -> String {
    line(json!({"type": "ack", "callbackId": callback_id, "text": text}))
}

// ---- Reading lines. ----

/// One line read from the adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Text(Vec<u8>),
    /// Longer than the limit: skipped; its length in bytes.
    TooLong(usize),
}

/// Reads `\n`-terminated lines keeping at most `max` bytes of one in memory.
pub struct LineReader<R> {
    inner: R,
    max: usize,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(inner: R, max: usize) -> LineReader<R> {
        LineReader { inner, max }
    }

    /// The next line (without `\n` or a `\r` before it); `None` at the end of the stream.
    pub fn next_line(&mut self) -> io::Result<Option<Line>> {
        let mut buf = Vec::new();
        let mut len = 0usize;
        let mut too_long = false;
        loop {
            let available = match self.inner.fill_buf() {
                Ok(a) => a,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                return Ok(match (len, too_long) {
                    (0, _) => None,
                    (n, true) => Some(Line::TooLong(n)),
                    (_, false) => Some(Line::Text(trim_cr(buf))),
                });
            }
            let (chunk_len, used, done) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (i, i + 1, true),
                None => (available.len(), available.len(), false),
            };
            len = len.saturating_add(chunk_len);
            if !too_long {
                if buf.len() + chunk_len > self.max {
                    too_long = true;
                    buf = Vec::new();
                } else {
                    buf.extend_from_slice(&available[..chunk_len]);
                }
            }
            self.inner.consume(used);
            if done {
                return Ok(Some(if too_long { Line::TooLong(len) } else { Line::Text(trim_cr(buf)) }));
            }
        }
    }
}

fn trim_cr(mut line: Vec<u8>) -> Vec<u8> {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    line
}

/// Lets one log line through per period, counting the ones held back.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl Throttle {
    pub fn new(every: Duration) -> Throttle {
        Throttle { every, last: None, held: 0 }
    }

    /// `Some(held back since the last one)` when a line may be logged now.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|at| now.saturating_duration_since(at) < self.every) {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(line: &str) -> Result<FromAdapter, String> {
        decode(line.as_bytes(), "ext")
    }

    #[test]
    fn a_message_line_becomes_an_inbound_message() {
        let line = r#"{"v":1,"type":"message","messageId":7,"chatId":"room","threadId":null,"isGroup":true,
            "mentioned":true,"senderId":"u1","senderName":"Ann","text":"hi","future":{"x":1},
            "attachments":[{"path":"/tmp/a.png","mime":"image/png"}],"sentAt":1700000000000}"#;
        let Ok(FromAdapter::Message(m)) = decoded(&line.replace('\n', " ")) else { panic!() };
        assert_eq!((m.channel.as_str(), m.chat_id.as_str(), m.message_id.as_deref()), ("ext", "room", Some("7")));
        assert!(m.is_group && m.is_mentioned && !m.is_reply_to_bot);
        assert_eq!((m.sender_id.as_str(), m.sender_name.as_str(), m.text.as_str()), ("u1", "Ann", "hi"));
        assert_eq!(m.attachments[0].kind, AttachmentKind::Image);
        assert_eq!(m.attachments[0].file_name, "a.png");
        assert_eq!(m.sent_at_ms, Some(1_700_000_000_000));
        assert_eq!(m.webhook, None);
        // A direct message is addressed to the bot unless the adapter says otherwise.
        let Ok(FromAdapter::Message(dm)) = decoded(r#"{"type":"message","chatId":"c","senderId":"u","text":"x"}"#)
        else {
            panic!()
        };
        assert!(dm.is_mentioned && !dm.is_group && dm.message_id.is_none() && dm.sender_name == "u");
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let long_id = format!(r#"{{"type":"message","chatId":"{}","senderId":"u"}}"#, "x".repeat(300));
        let cases: Vec<(String, &str)> = vec![
            ("not json".into(), "not JSON"),
            ("[1,2]".into(), "not a JSON object"),
            (r#"{"v":2,"type":"message"}"#.into(), "protocol version 2"),
            (r#"{"v":1}"#.into(), "no \"type\""),
            (r#"{"type":"message","senderId":"u"}"#.into(), "no \"chatId\""),
            (r#"{"type":"message","chatId":"c","senderId":{"a":1}}"#.into(), "not a string or an integer"),
            (r#"{"type":"message","chatId":"c","senderId":"u","text":5}"#.into(), "\"text\" is not a string"),
            (r#"{"type":"message","chatId":"c","senderId":"u","attachments":[{"path":"rel"}]}"#.into(), "absolute"),
            (long_id, "longer than 256"),
            (r#"{"type":"health"}"#.into(), "boolean \"ok\""),
            (r#"{"type":"sent"}"#.into(), "without \"ref\""),
            (r#"{"type":"callback","chatId":"c","senderId":"u","callbackId":"k"}"#.into(), "without \"data\""),
        ];
        for (line, expected) in cases {
            let got = decoded(&line).expect_err(&line);
            assert!(got.contains(expected), "{line}: {got}");
        }
        assert!(decode(b"\xff\xfe", "ext").unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn the_other_lines_decode() {
        let ready = r#"{"v":1,"type":"ready","capabilities":{"edit":true,"buttons":true,"maxLength":5}}"#;
        let caps = AdapterCaps { edit: true, typing: false, buttons: true, max_length: MIN_MAX_LENGTH };
        assert_eq!(decoded(ready), Ok(FromAdapter::Ready(caps)));
        assert_eq!(decoded(r#"{"type":"ready"}"#), Ok(FromAdapter::Ready(AdapterCaps::default())));
        let sent = r#"{"v":1,"type":"sent","ref":"r1","messageId":"m9"}"#;
        let ok = FromAdapter::Sent { reference: "r1".into(), result: SentResult::Ok(Some("m9".into())) };
        assert_eq!(decoded(sent), Ok(ok));
        let failed = r#"{"type":"sent","ref":"r2","error":"down","retry":true,"retryAfterMs":1500}"#;
        let Ok(FromAdapter::Sent { result: SentResult::Failed { retry, retry_after, .. }, .. }) = decoded(failed)
        else {
            panic!()
        };
        assert!(retry);
        assert_eq!(retry_after, Some(Duration::from_millis(1500)));
        let press = r#"{"type":"callback","chatId":"c","senderId":"u","callbackId":"k","data":"perm:1:once"}"#;
        let Ok(FromAdapter::Callback(p)) = decoded(press) else { panic!() };
        assert_eq!((p.channel.as_str(), p.data.as_str(), p.callback_id.as_str()), ("ext", "perm:1:once", "k"));
        let log = decoded(&format!(r#"{{"type":"log","level":"warn","text":"{}"}}"#, "é".repeat(3000)));
        let Ok(FromAdapter::Log { level, text }) = log else { panic!() };
        assert_eq!((level, text.chars().count()), (log::Level::Warn, MAX_LOG_CHARS));
        assert_eq!(decoded(r#"{"type":"health","ok":true}"#), Ok(FromAdapter::Health { ok: true, error: None }));
        assert_eq!(decoded(r#"{"type":"presence"}"#), Ok(FromAdapter::Unknown("presence".into())));
    }

    #[test]
    fn tether_lines_carry_the_version_and_one_newline() {
        let chat = ChatRef { channel: "ext".into(), chat_id: "c".into(), thread_id: Some("t".into()) };
        let lines = [
            hello("ext"),
            send("r1", &chat, "a\nb", Format::Markdown),
            buttons("r2", &chat, "ok?", Format::Plain, &[("Yes".into(), "y".into())]),
            edit("r3", &chat, "m1", "new", Format::Markdown),
            typing(&chat),
            ack("k", "done"),
        ];
        for l in &lines {
            assert!(l.ends_with('\n') && l.matches('\n').count() == 1, "{l}");
            let v: Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["v"], 1, "{l}");
        }
        let v: Value = serde_json::from_str(&lines[2]).unwrap();
        assert_eq!(v["buttons"][0], json!({"label": "Yes", "data": "y"}));
        assert_eq!((v["chatId"].as_str(), v["threadId"].as_str()), (Some("c"), Some("t")));
    }

    #[test]
    fn lines_are_bounded() {
        let input = format!("short\r\n{}\nafter\n{}", "x".repeat(100), "y".repeat(50));
        let mut reader = LineReader::new(io::BufReader::with_capacity(7, input.as_bytes()), 20);
        assert_eq!(reader.next_line().unwrap(), Some(Line::Text(b"short".to_vec())));
        assert_eq!(reader.next_line().unwrap(), Some(Line::TooLong(100)));
        assert_eq!(reader.next_line().unwrap(), Some(Line::Text(b"after".to_vec())));
        assert_eq!(reader.next_line().unwrap(), Some(Line::TooLong(50)));
        assert_eq!(reader.next_line().unwrap(), None);
    }

    #[test]
    fn the_throttle_lets_one_through_per_period() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Duration::from_secs(60));
        assert_eq!(t.allow(t0), Some(0));
        assert_eq!(t.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(t.allow(t0 + Duration::from_secs(59)), None);
        assert_eq!(t.allow(t0 + Duration::from_secs(60)), Some(2));
    }

    #[test]
    fn cut_keeps_whole_characters() {
        assert_eq!(cut("héllo", 2), "hé");
        assert_eq!(cut("hé", 5), "hé");
        assert_eq!(cut("", 0), "");
    }
}
