//! Telegram Bot API JSON: replies, updates and the requests we send. Pure; the only place
//! Telegram's shapes exist. Turns updates into [`InboundMessage`]s, deciding whether the
//! bot was addressed (entity offsets are UTF-16 code units).

use std::time::Duration;

use serde_json::{Value, json};

use crate::adapters::{Fingerprint, contain};
use crate::event::{AttachmentKind, ButtonPress, ChatRef, InboundMessage};
use crate::media::FileKind;

/// The bot's own identity, from `getMe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotIdentity {
    pub id: i64,
    pub username: String,
}

/// Bot API answers are classified into the outbox's [`Failure`] (see [`parse_reply`]).
pub use crate::adapters::outbox::Failure;

/// Decode an HTTP reply from the Bot API into its `result`, or a classified failure.
pub fn parse_reply(status: u16, body: &str) -> Result<Value, Failure> {
    let parsed = serde_json::from_slice::<Value>(body.as_bytes()).or_else(|e| {
        without_lone_surrogates(body).map_or(Err(e), |fixed| serde_json::from_slice::<Value>(fixed.as_bytes()))
    });
    let Ok(mut reply) = parsed else {
        let what = if status >= 500 || status == 200 { Failure::Transient } else { Failure::Rejected };
        return Err(what(format!("HTTP {status} with a body that is not JSON: {}", body_preview(body))));
    };
    if reply.get("ok").and_then(Value::as_bool) == Some(true) && status == 200 {
        // Taken, not cloned: a getUpdates batch may be megabytes.
        return Ok(reply.get_mut("result").map(Value::take).unwrap_or(Value::Null));
    }
    let code = reply.get("error_code").and_then(Value::as_u64).map_or(status, |c| c as u16);
    let description = reply.get("description").and_then(Value::as_str).unwrap_or("no description").to_string();
    Err(match code {
        409 => Failure::Conflict(description),
        429 => {
            let secs = reply.pointer("/parameters/retry_after").and_then(Value::as_u64).unwrap_or(5);
            Failure::RateLimited(Duration::from_secs(secs.clamp(1, 3600)))
        }
        401 | 404 => Failure::Unauthorized(format!("HTTP {code}: {description}")),
        403 => Failure::Blocked(format!("HTTP 403: {description}")),
        400 if description.contains("can't parse entities") => Failure::BadMarkup(format!("HTTP 400: {description}")),
        c if c >= 500 => Failure::Transient(format!("HTTP {c}: {description}")),
        200 => Failure::Transient(format!("reply without ok: {}", body_preview(body))),
        c => Failure::Rejected(format!("HTTP {c}: {description}")),
    })
}

/// The id of the message a `sendMessage` (or an upload) made, from its HTTP reply: `Ok(None)`
/// when the reply has no id. An accepted reply is read straight for the id, skipping the rest
/// of the message Telegram echoes back (sender, chat, text, entities: a tree of maps and
/// strings for one number); anything else goes through [`parse_reply`], as before.
pub fn parse_sent(status: u16, body: &str) -> Result<Option<String>, Failure> {
    match serde_json::from_slice::<Sent>(body.as_bytes()) {
        Ok(Sent { ok: true, result }) if status == 200 => Ok(Some(result.message_id.to_string())),
        _ => parse_reply(status, body).map(message_id),
    }
}

/// The two fields [`parse_sent`] reads of a reply; serde skips the others unread.
#[derive(serde::Deserialize)]
struct Sent {
    ok: bool,
    result: SentMessage,
}

#[derive(serde::Deserialize)]
struct SentMessage {
    message_id: i64,
}

/// The id of the message a call's `result` describes.
pub fn message_id(result: Value) -> Option<String> {
    result.get("message_id").and_then(Value::as_i64).map(|id| id.to_string())
}

/// `body` with each `\uD800`–`\uDFFF` escape that is not half of a pair replaced by `\uFFFD`,
/// or `None` when it has none. JSON allows lone surrogates; serde_json refuses them, and one
/// broken emoji in one message would otherwise make the whole batch undecodable, the offset
/// would never move, and the bot would be deaf.
fn without_lone_surrogates(body: &str) -> Option<String> {
    let hex_at = |i: usize| body.get(i..i + 4).and_then(|h| u16::from_str_radix(h, 16).ok());
    let escape_at = |i: usize| if body.get(i..i + 2) == Some("\\u") { hex_at(i + 2) } else { None };
    let mut out = String::with_capacity(body.len());
    let mut copied = 0; // `body[..copied]` is in `out`.
    let mut changed = false;
    let mut in_string = false;
    let mut i = 0;
    let bytes = body.as_bytes();
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => {
                in_string = !in_string;
                i += 1;
            }
            b'\\' if in_string => {
                let lone = match escape_at(i) {
                    Some(0xD800..=0xDBFF) => !matches!(escape_at(i + 6), Some(0xDC00..=0xDFFF)),
                    Some(0xDC00..=0xDFFF) => true,
                    _ => false,
                };
                let paired = matches!(escape_at(i), Some(0xD800..=0xDBFF)) && !lone;
                if lone {
                    out.push_str(body.get(copied..i)?);
                    out.push_str("\\ufffd");
                    copied = i + 6;
                    changed = true;
                }
                i += if lone {
                    6
                } else if paired {
                    12
                } else {
                    2
                };
            }
            _ => i += 1,
        }
    }
    out.push_str(body.get(copied..)?);
    changed.then_some(out)
}

pub fn parse_identity(result: &Value) -> Option<BotIdentity> {
    Some(BotIdentity { id: result.get("id")?.as_i64()?, username: result.get("username")?.as_str()?.to_string() })
}

/// The updates of one `getUpdates` reply: the highest `update_id` seen (to confirm them
/// all with the next offset, even the ones we skip) and the messages worth handling.
///
/// Each update is decoded on its own inside [`contain`]: one that panics is logged (its id,
/// never its text) and skipped, and its id still moves the offset, so it is not fetched again.
pub fn parse_updates(result: &Value, channel: &str, bot: &BotIdentity) -> (Option<i64>, Vec<InboundMessage>) {
    let (last_id, messages) = parse_updates_with_media(result, channel, bot);
    (last_id, messages.into_iter().map(|(message, _)| message).collect())
}

/// A file that came with a message, still on Telegram's servers (`getFile` finds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub file_id: String,
    pub kind: AttachmentKind,
    /// The sender's name for it, or one made up from its kind ("photo.jpg", "voice.ogg").
    pub file_name: String,
    pub mime_type: String,
    /// As Telegram announced it (absent for some files).
    pub size: Option<u64>,
}

/// The files of a message, in the order Telegram lists the kinds: the photo (its largest
/// size), document, voice, audio, video, video note, animation.
pub fn parse_media(msg: &Value) -> Vec<RemoteFile> {
    let mut files = Vec::new();
    if let Some(sizes) = msg.get("photo").and_then(Value::as_array) {
        let area = |p: &Value| {
            let side = |k: &str| p.get(k).and_then(Value::as_u64).unwrap_or(0);
            (p.get("file_size").and_then(Value::as_u64).unwrap_or(0), side("width").saturating_mul(side("height")))
        };
        // The largest by bytes, then by pixels; the last one on a tie (Telegram lists them ascending).
        if let Some(largest) = sizes.iter().rev().max_by_key(|p| area(p)) {
            files.extend(remote_file(largest, AttachmentKind::Image, "photo.jpg", "image/jpeg"));
        }
    }
    let kinds = [
        ("document", AttachmentKind::File, "file", "application/octet-stream"),
        ("voice", AttachmentKind::Audio, "voice.ogg", "audio/ogg"),
        ("audio", AttachmentKind::Audio, "audio.mp3", "audio/mpeg"),
        ("video", AttachmentKind::Video, "video.mp4", "video/mp4"),
        ("video_note", AttachmentKind::Video, "video_note.mp4", "video/mp4"),
        ("animation", AttachmentKind::Video, "animation.mp4", "video/mp4"),
    ];
    for (key, kind, name, mime) in kinds {
        // A GIF animation also comes as a `document`: take it once.
        if key == "animation" && msg.get("document").is_some() {
            continue;
        }
        if let Some(file) = msg.get(key) {
            files.extend(remote_file(file, kind, name, mime));
        }
    }
    files
}

fn remote_file(file: &Value, kind: AttachmentKind, name: &str, mime: &str) -> Option<RemoteFile> {
    let text = |k: &str| file.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
    Some(RemoteFile {
        file_id: text("file_id")?,
        kind,
        file_name: text("file_name").unwrap_or_else(|| name.to_string()),
        mime_type: text("mime_type").unwrap_or_else(|| mime.to_string()),
        size: file.get("file_size").and_then(Value::as_u64),
    })
}

/// The `getFile` request body.
pub fn get_file(file_id: &str) -> Value {
    json!({"file_id": file_id})
}

/// The `file_path` of a `getFile` result, when it is a plain relative path (it becomes part
/// of the download URL: no `..`, no query, no scheme).
pub fn file_path(result: &Value) -> Option<String> {
    let path = result.get("file_path").and_then(Value::as_str)?;
    let plain = !path.is_empty()
        && path.len() <= 512
        && !path.starts_with('/')
        && path.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && path.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '.'));
    plain.then(|| path.to_string())
}

/// The upload method and its file field for a file of `kind`.
pub fn upload_method(kind: FileKind) -> (&'static str, &'static str) {
    match kind {
        FileKind::Image => ("sendPhoto", "photo"),
        FileKind::Document => ("sendDocument", "document"),
    }
}

/// The text fields of a `sendPhoto` / `sendDocument` call.
pub fn upload_fields(chat: &ChatRef, caption: Option<&str>) -> Vec<(&'static str, String)> {
    let mut fields = vec![("chat_id", chat.chat_id.clone())];
    if let Some(thread) = chat.thread_id.as_deref().filter(|t| t.parse::<i64>().is_ok()) {
        fields.push(("message_thread_id", thread.to_string()));
    }
    if let Some(caption) = caption.filter(|c| !c.is_empty()) {
        fields.push(("caption", caption.chars().take(1024).collect()));
    }
    fields
}

/// The multipart builder is shared with the other platforms' uploads.
pub use crate::net::multipart::{multipart, pick_boundary};

/// [`parse_updates`], with each message's files still to fetch.
pub fn parse_updates_with_media(
    result: &Value,
    channel: &str,
    bot: &BotIdentity,
) -> (Option<i64>, Vec<(InboundMessage, Vec<RemoteFile>)>) {
    let mut last_id = None;
    let mut messages = Vec::new();
    for update in result.as_array().map(Vec::as_slice).unwrap_or_default() {
        let id = update.get("update_id").and_then(Value::as_i64);
        if let Some(id) = id {
            last_id = Some(last_id.map_or(id, |last: i64| last.max(id)));
        } else {
            log::warn!(target: channel, "skipped an update without an update_id");
        }
        let Some(message) = update.get("message") else { continue };
        let input = Fingerprint::of(&[channel.as_bytes(), id_text(id).as_bytes()]);
        match contain(input, || decode_message(id, message, channel, bot).map(|m| (m, parse_media(message)))) {
            Some(Some(message)) => messages.push(message),
            Some(None) => {} // Not for us: from a bot, no text, not a chat message.
            None => {
                log::warn!(target: channel, "skipped update {}: decoding it failed (see the error above)", id_text(id))
            }
        }
    }
    (last_id, messages)
}

fn id_text(id: Option<i64>) -> String {
    id.map_or_else(|| "without id".to_string(), |id| id.to_string())
}

/// [`parse_message`], with a panic injected for one update id in unit tests.
fn decode_message(id: Option<i64>, message: &Value, channel: &str, bot: &BotIdentity) -> Option<InboundMessage> {
    #[cfg(test)]
    if id.is_some() && id == tests::PANIC_ON_UPDATE.with(std::cell::Cell::get) {
        panic!("injected panic decoding update {id:?}");
    }
    #[cfg(not(test))]
    let _ = id;
    parse_message(message, channel, bot)
}

fn parse_message(msg: &Value, channel: &str, bot: &BotIdentity) -> Option<InboundMessage> {
    let chat = msg.get("chat")?;
    let chat_id = id_string(chat.get("id")?)?;
    let from = msg.get("from")?;
    if from.get("is_bot").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    let sender_id = id_string(from.get("id")?)?;
    let (text, entities) = match (msg.get("text").and_then(Value::as_str), msg.get("caption").and_then(Value::as_str)) {
        (Some(text), _) => (text, msg.get("entities")),
        (None, Some(caption)) => (caption, msg.get("caption_entities")),
        // A file without a caption.
        (None, None) if !parse_media(msg).is_empty() => ("", None),
        (None, None) => return None,
    };
    let entities = entities.and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let is_group = chat.get("type").and_then(Value::as_str) != Some("private");
    let is_topic = msg.get("is_topic_message").and_then(Value::as_bool) == Some(true);
    let thread_id = if is_topic { msg.get("message_thread_id").and_then(id_string) } else { None };
    let reply = msg.get("reply_to_message");
    // In a forum topic every message "replies" to the topic's creation message.
    let reply = reply.filter(|r| {
        r.get("forum_topic_created").is_none()
            && !(is_topic && r.get("message_id").is_some() && r.get("message_id") == msg.get("message_thread_id"))
    });
    let is_reply_to_bot = reply.and_then(|r| r.pointer("/from/id")).and_then(Value::as_i64) == Some(bot.id);
    let quoted_text =
        reply.and_then(|r| r.get("text").or_else(|| r.get("caption"))).and_then(Value::as_str).map(str::to_string);
    let is_mentioned = !is_group || mentions_bot(text, entities, bot);
    Some(InboundMessage {
        channel: channel.to_string(),
        sender_id,
        sender_name: display_name(from),
        chat_id,
        thread_id,
        message_id: msg.get("message_id").and_then(id_string),
        is_group,
        is_mentioned,
        is_reply_to_bot,
        text: strip_mention(text, &bot.username),
        quoted_text,
        attachments: Vec::new(),
        sent_at_ms: msg.get("date").and_then(Value::as_u64).map(|secs| secs.saturating_mul(1000)),
        webhook: None,
    })
}

fn mentions_bot(text: &str, entities: &[Value], bot: &BotIdentity) -> bool {
    let handle = format!("@{}", bot.username);
    entities.iter().any(|e| {
        let slice = || {
            let offset = e.get("offset").and_then(Value::as_u64)? as usize;
            let length = e.get("length").and_then(Value::as_u64)? as usize;
            utf16_slice(text, offset, length)
        };
        match e.get("type").and_then(Value::as_str) {
            Some("mention") => slice().is_some_and(|s| s.eq_ignore_ascii_case(&handle)),
            Some("bot_command") => slice()
                .and_then(|s| s.split_once('@').map(|(_, at)| at.to_string()))
                .is_some_and(|at| at.eq_ignore_ascii_case(&bot.username)),
            Some("text_mention") => e.pointer("/user/id").and_then(Value::as_i64) == Some(bot.id),
            _ => false,
        }
    })
}

/// The part of `text` at UTF-16 `offset..offset+length`, if it falls on char boundaries.
fn utf16_slice(text: &str, offset: usize, length: usize) -> Option<String> {
    let units: Vec<u16> = text.encode_utf16().collect();
    let end = offset.checked_add(length)?;
    String::from_utf16(units.get(offset..end)?).ok()
}

/// Remove every `@botname` (any case), as Qwen does, and the spaces it leaves behind.
/// `/cmd@botname` keeps the command: the suffix goes, the command stays. Usernames are ASCII,
/// so the match is ASCII case-insensitive on the text itself: no lowercased copy, whose byte
/// offsets differ from the original's (`Ⱥ` is 2 bytes, its lowercase 3).
pub fn strip_mention(text: &str, username: &str) -> String {
    let handle = format!("@{username}");
    if username.is_empty() {
        return text.trim().to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut kept_from = 0; // Start of the text not yet copied to `out`; always a char boundary.
    for (at, c) in text.char_indices() {
        if c != '@' || at < kept_from {
            continue;
        }
        let end = at.saturating_add(handle.len());
        // `get` is None when `end` is not a char boundary: then it is not our handle either.
        if !text.get(at..end).is_some_and(|found| found.eq_ignore_ascii_case(&handle)) {
            continue;
        }
        let after = text.get(end..).unwrap_or_default();
        if after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue; // `@botname_2` is someone else (usernames are ASCII letters, digits, `_`).
        }
        out.push_str(text.get(kept_from..at).unwrap_or_default());
        kept_from = end;
        // "hi @bot there" keeps one space; "/new@bot now" keeps its space.
        if out.is_empty() || out.ends_with(' ') {
            kept_from = end + (after.len() - after.trim_start_matches(' ').len());
        }
    }
    out.push_str(text.get(kept_from..).unwrap_or_default());
    let out = out.trim();
    out.to_string()
}

fn display_name(from: &Value) -> String {
    let first = from.get("first_name").and_then(Value::as_str).unwrap_or("");
    let last = from.get("last_name").and_then(Value::as_str).unwrap_or("");
    // Pushed, not `format!`: one copy, no formatting machinery, for every message.
    let mut name = String::with_capacity(first.len() + 1 + last.len());
    for part in [first, " ", last] {
        name.push_str(part);
    }
    if name.trim().len() != name.len() {
        name = name.trim().to_string();
    }
    match (name.is_empty(), from.get("username").and_then(Value::as_str)) {
        (true, Some(user)) => user.to_string(),
        (true, None) => id_string(from.get("id").unwrap_or(&Value::Null)).unwrap_or_default(),
        (false, _) => name,
    }
}

fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// A chat (or message) id as Telegram wants it: a number when it is one.
fn chat_id_value(chat_id: &str) -> Value {
    chat_id.parse::<i64>().map_or_else(|_| json!(chat_id), |n| json!(n))
}

/// The `getUpdates` request body, as JSON text: written out, not built as a `Value` and
/// encoded, on every poll.
pub fn get_updates(offset: i64, timeout: Duration) -> Vec<u8> {
    format!(
        r#"{{"offset":{offset},"timeout":{},"allowed_updates":["message","edited_message","callback_query","my_chat_member"]}}"#,
        timeout.as_secs()
    )
    .into_bytes()
}

/// The `sendMessage` body of [`send_html`] (`html`) or [`send_message`], as JSON text
/// written straight out: building the `Value` of a reply and then encoding it cost the
/// sending thread about as much as the rest of the call (a test holds the two equal).
pub fn send_message_json(chat: &ChatRef, text: &str, html: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 128);
    out.extend_from_slice(b"{\"chat_id\":");
    match chat.chat_id.parse::<i64>() {
        Ok(number) => out.extend_from_slice(number.to_string().as_bytes()),
        Err(_) => json_string(&mut out, &chat.chat_id),
    }
    out.extend_from_slice(b",\"text\":");
    json_string(&mut out, text);
    if html {
        out.extend_from_slice(br#","parse_mode":"HTML""#);
    }
    out.extend_from_slice(br#","link_preview_options":{"is_disabled":true}"#);
    if let Some(thread) = chat.thread_id.as_deref().and_then(|t| t.parse::<i64>().ok()) {
        out.extend_from_slice(format!(r#","message_thread_id":{thread}"#).as_bytes());
    }
    out.push(b'}');
    out
}

/// `text` as a JSON string, quoted and escaped, at the end of `out`.
fn json_string(out: &mut Vec<u8>, text: &str) {
    // Writing into a `Vec` cannot fail, and a `str` always encodes.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// The `sendMessage` request body for one chunk of plain text (no `parse_mode`: Telegram
/// shows it exactly as written).
pub fn send_message(chat: &ChatRef, text: &str) -> Value {
    let mut body = json!({
        "chat_id": chat_id_value(&chat.chat_id),
        "text": text,
        "link_preview_options": {"is_disabled": true},
    });
    if let Some(thread) = chat.thread_id.as_deref().and_then(|t| t.parse::<i64>().ok()) {
        body["message_thread_id"] = json!(thread);
    }
    body
}

/// The `sendMessage` request body for one chunk of Telegram HTML (see `render::telegram_chunks`).
pub fn send_html(chat: &ChatRef, html: &str) -> Value {
    let mut body = send_message(chat, html);
    body["parse_mode"] = json!("HTML");
    body
}

/// Buttons under a message: one row of `(label, callback data)`.
pub fn with_buttons(mut body: Value, buttons: &[(String, String)]) -> Value {
    if !buttons.is_empty() {
        let row: Vec<Value> = buttons.iter().map(|(text, data)| json!({"text": text, "callback_data": data})).collect();
        body["reply_markup"] = json!({"inline_keyboard": [row]});
    }
    body
}

/// The `editMessageText` request body: new HTML text, and no `reply_markup`, which removes
/// the message's buttons.
pub fn edit_html(chat: &ChatRef, message_id: &str, html: &str) -> Value {
    json!({
        "chat_id": chat_id_value(&chat.chat_id),
        "message_id": chat_id_value(message_id),
        "text": html,
        "parse_mode": "HTML",
        "link_preview_options": {"is_disabled": true},
    })
}

/// The `answerCallbackQuery` request body (stops the spinner on the pressed button).
pub fn answer_callback(callback_id: &str, text: &str) -> Value {
    let text: String = text.chars().take(200).collect();
    json!({"callback_query_id": callback_id, "text": text})
}

/// The button presses (`callback_query`) of one `getUpdates` reply, each decoded inside
/// [`contain`] like the messages of [`parse_updates`].
pub fn parse_button_presses(result: &Value, channel: &str) -> Vec<ButtonPress> {
    let updates = result.as_array().map(Vec::as_slice).unwrap_or_default();
    let mut presses = Vec::new();
    for update in updates {
        let Some(query) = update.get("callback_query") else { continue };
        let id = update.get("update_id").and_then(Value::as_i64);
        let input = Fingerprint::of(&[channel.as_bytes(), id_text(id).as_bytes(), b"callback_query"]);
        match contain(input, || parse_button_press(query, channel)) {
            Some(Some(press)) => presses.push(press),
            Some(None) => {}
            None => {
                log::warn!(target: channel, "skipped update {}: decoding its button press failed", id_text(id));
            }
        }
    }
    presses
}

fn parse_button_press(q: &Value, channel: &str) -> Option<ButtonPress> {
    let from = q.get("from")?;
    let message = q.get("message");
    let chat = message.and_then(|m| m.get("chat"));
    let is_topic = message.and_then(|m| m.get("is_topic_message")).and_then(Value::as_bool) == Some(true);
    Some(ButtonPress {
        channel: channel.to_string(),
        sender_id: id_string(from.get("id")?)?,
        sender_name: display_name(from),
        // An inaccessible message has no chat: the press then belongs to the sender's DM.
        chat_id: chat.and_then(|c| c.get("id")).and_then(id_string).or_else(|| id_string(from.get("id")?))?,
        thread_id: if is_topic { message.and_then(|m| m.get("message_thread_id")).and_then(id_string) } else { None },
        is_group: chat.and_then(|c| c.get("type")).and_then(Value::as_str).is_some_and(|t| t != "private"),
        data: q.get("data").and_then(Value::as_str).unwrap_or_default().to_string(),
        callback_id: q.get("id").and_then(Value::as_str)?.to_string(),
    })
}

/// The `sendChatAction` request body for "typing".
pub fn send_typing(chat: &ChatRef) -> Value {
    let mut body = send_message(chat, "");
    if let Some(map) = body.as_object_mut() {
        map.remove("text");
        map.remove("link_preview_options");
        map.insert("action".into(), json!("typing"));
    }
    body
}

fn body_preview(body: &str) -> String {
    body.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bot() -> BotIdentity {
        BotIdentity { id: 42, username: "tether_bot".into() }
    }

    #[test]
    fn display_name_table() {
        let cases = [
            (json!({"id": 7, "first_name": "Ada", "last_name": "L"}), "Ada L"),
            (json!({"id": 7, "first_name": "Ada"}), "Ada"),
            (json!({"id": 7, "last_name": "L"}), "L"),
            (json!({"id": 7, "first_name": " A ", "last_name": "B  "}), "A  B"),
            (json!({"id": 7, "first_name": " ", "username": "ada"}), "ada"),
            (json!({"id": 7}), "7"),
            (json!({"id": "x7", "first_name": ""}), "x7"),
            (json!({}), ""),
        ];
        for (from, expected) in cases {
            assert_eq!(display_name(&from), expected, "{from}");
        }
    }

    #[test]
    fn replies_are_classified() {
        let cases: Vec<(u16, &str, Result<Value, Failure>)> = vec![
            (200, r#"{"ok":true,"result":[1]}"#, Ok(json!([1]))),
            (
                409,
                r#"{"ok":false,"error_code":409,"description":"Conflict: terminated by other getUpdates request"}"#,
                Err(Failure::Conflict("Conflict: terminated by other getUpdates request".into())),
            ),
            (
                429,
                r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 7","parameters":{"retry_after":7}}"#,
                Err(Failure::RateLimited(Duration::from_secs(7))),
            ),
            (
                401,
                r#"{"ok":false,"error_code":401,"description":"Unauthorized"}"#,
                Err(Failure::Unauthorized("HTTP 401: Unauthorized".into())),
            ),
            (
                502,
                "<html>Bad Gateway</html>",
                Err(Failure::Transient("HTTP 502 with a body that is not JSON: <html>Bad Gateway</html>".into())),
            ),
            (200, "{not json", Err(Failure::Transient("HTTP 200 with a body that is not JSON: {not json".into()))),
            (
                400,
                r#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#,
                Err(Failure::Rejected("HTTP 400: Bad Request: chat not found".into())),
            ),
            (
                400,
                r#"{"ok":false,"error_code":400,"description":"Bad Request: can't parse entities: Unsupported start tag \"br\" at byte offset 3"}"#,
                Err(Failure::BadMarkup(
                    "HTTP 400: Bad Request: can't parse entities: Unsupported start tag \"br\" at byte offset 3".into(),
                )),
            ),
            (
                403,
                r#"{"ok":false,"error_code":403,"description":"Forbidden: bot was blocked by the user"}"#,
                Err(Failure::Blocked("HTTP 403: Forbidden: bot was blocked by the user".into())),
            ),
            (
                400,
                r#"{"ok":false,"error_code":400,"description":"Bad Request: message is too long"}"#,
                Err(Failure::Rejected("HTTP 400: Bad Request: message is too long".into())),
            ),
            (
                500,
                r#"{"ok":false,"error_code":500,"description":"Internal"}"#,
                Err(Failure::Transient("HTTP 500: Internal".into())),
            ),
        ];
        for (status, body, expected) in cases {
            assert_eq!(parse_reply(status, body), expected, "{status} {body}");
        }
    }

    #[test]
    fn a_sent_messages_id_is_read_as_the_general_path_reads_it() {
        let message = r#"{"message_id":77,"from":{"id":1,"is_bot":true,"first_name":"Bot"},"chat":{"id":5,"type":"private"},"date":1,"text":"hi \ud83d\ude00","entities":[{"type":"bold","offset":0,"length":2}]}"#;
        let ok = |result: &str| format!(r#"{{"ok":true,"result":{result}}}"#);
        let cases = [
            (200, ok(message), Ok(Some("77".to_string()))),
            (200, ok(r#"{"text":"id last","message_id":-9}"#), Ok(Some("-9".to_string()))),
            (200, ok(r#"{"message_id":8,"text":"a lone \udc00 in the text"}"#), Ok(Some("8".to_string()))),
            (200, ok("true"), Ok(None)),
            (200, ok(r#"{"message_id":"12"}"#), Ok(None)),
            (200, ok(r#"{"message_id":1e30}"#), Ok(None)),
            (200, ok(r#"{"message_id":1,"message_id":2}"#), Ok(Some("2".to_string()))),
            (200, r#"{"ok":false,"result":{"message_id":3}}"#.to_string(), Err(Failure::Transient(String::new()))),
            (500, ok(r#"{"message_id":4}"#), Err(Failure::Transient(String::new()))),
            (
                429,
                r#"{"ok":false,"error_code":429,"parameters":{"retry_after":7}}"#.to_string(),
                Err(Failure::RateLimited(Duration::from_secs(7))),
            ),
            (200, "not json".to_string(), Err(Failure::Transient(String::new()))),
        ];
        for (status, body, expected) in cases {
            let general = parse_reply(status, &body).map(message_id);
            let sent = parse_sent(status, &body);
            assert_eq!(sent, general, "{status} {body}");
            // Failures are compared by kind here; their texts are parse_reply's, tested above.
            match (&sent, &expected) {
                (Ok(id), Ok(want)) => assert_eq!(id, want, "{status} {body}"),
                (Err(got), Err(want)) => {
                    assert_eq!(std::mem::discriminant(got), std::mem::discriminant(want), "{status} {body}: {got}")
                }
                _ => panic!("{status} {body}: {sent:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn lone_surrogates_do_not_make_a_batch_undecodable() {
        let body = |text: &str| format!(r#"{{"ok":true,"result":[{{"update_id":1,"text":"{text}"}}]}}"#);
        let cases = [
            (r"a\ud83d b", "a\u{fffd} b"),
            (r"\ud83d\ude00", "😀"),
            (r"\ude00\ud83d", "\u{fffd}\u{fffd}"),
            (r"\ud83d\u0041", "\u{fffd}A"),
            (r"\\ud83d", r"\ud83d"),
            (r#"\"\ud800"#, "\"\u{fffd}"),
            (r"\ud83d", "\u{fffd}"),
            ("Ⱥ\\ud800ẞ", "Ⱥ\u{fffd}ẞ"),
        ];
        for (text, expected) in cases {
            let result = parse_reply(200, &body(text)).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(result[0]["text"], expected, "{text}");
        }
        // A key may hold one too.
        assert!(parse_reply(200, r#"{"ok":true,"result":{"\udc00":1}}"#).is_ok());
        assert!(matches!(parse_reply(200, r#"{"ok":true,"result":"\ud83d"#), Err(Failure::Transient(_))));
    }

    #[test]
    fn private_text_message_becomes_inbound() {
        let result = json!([
            {"update_id": 10, "message": {"message_id": 5, "date": 1, "chat": {"id": 111, "type": "private"},
             "from": {"id": 111, "is_bot": false, "first_name": "Ada", "last_name": "L"}, "text": "hello"}},
            {"update_id": 11, "edited_message": {"message_id": 5}},
        ]);
        let (last, msgs) = parse_updates(&result, "phone", &bot());
        assert_eq!(last, Some(11));
        assert_eq!(msgs.len(), 1);
        let m = &msgs[0];
        assert_eq!((m.sender_id.as_str(), m.chat_id.as_str(), m.text.as_str()), ("111", "111", "hello"));
        assert_eq!(m.sender_name, "Ada L");
        assert_eq!(m.message_id.as_deref(), Some("5"));
        assert!(!m.is_group && m.is_mentioned);
    }

    #[test]
    fn media_of_a_message() {
        let file = |kind, name: &str, mime: &str, size| RemoteFile {
            file_id: name.split('.').next().unwrap().into(),
            kind,
            file_name: name.into(),
            mime_type: mime.into(),
            size,
        };
        let cases: Vec<(Value, Vec<RemoteFile>)> = vec![
            (json!({"text": "hi"}), vec![]),
            // The largest photo size, by bytes, then by pixels.
            (
                json!({"photo": [{"file_id": "s", "width": 90, "height": 90, "file_size": 10},
                                 {"file_id": "l", "width": 800, "height": 600, "file_size": 900},
                                 {"file_id": "m", "width": 320, "height": 240, "file_size": 100}]}),
                vec![file(AttachmentKind::Image, "l.jpg", "image/jpeg", Some(900)).tap_name("photo.jpg")],
            ),
            (
                json!({"photo": [{"file_id": "a", "width": 90, "height": 90}, {"file_id": "b", "width": 900, "height": 90}]}),
                vec![file(AttachmentKind::Image, "b", "image/jpeg", None).tap_name("photo.jpg")],
            ),
            (
                json!({"document": {"file_id": "d", "file_name": "d.pdf", "mime_type": "application/pdf", "file_size": 5},
                       "animation": {"file_id": "d"}}),
                vec![file(AttachmentKind::File, "d.pdf", "application/pdf", Some(5))],
            ),
            (
                json!({"voice": {"file_id": "v", "duration": 1}}),
                vec![file(AttachmentKind::Audio, "v", "audio/ogg", None).tap_name("voice.ogg")],
            ),
            (
                json!({"audio": {"file_id": "a", "file_name": "a.flac", "mime_type": "audio/flac"}}),
                vec![file(AttachmentKind::Audio, "a.flac", "audio/flac", None)],
            ),
            (
                json!({"video": {"file_id": "c", "file_size": 7}}),
                vec![file(AttachmentKind::Video, "c", "video/mp4", Some(7)).tap_name("video.mp4")],
            ),
            (json!({"video_note": {"file_id": ""}}), vec![]),
            (json!({"sticker": {"file_id": "x"}}), vec![]),
        ];
        for (msg, files) in cases {
            assert_eq!(parse_media(&msg), files, "{msg}");
        }
    }

    impl RemoteFile {
        fn tap_name(mut self, name: &str) -> RemoteFile {
            self.file_name = name.into();
            self
        }
    }

    #[test]
    fn a_file_without_caption_is_a_message_with_empty_text() {
        let result = json!([
            {"update_id": 1, "message": {"message_id": 1, "chat": {"id": 5, "type": "private"}, "from": {"id": 5},
             "voice": {"file_id": "v"}}},
            {"update_id": 2, "message": {"message_id": 2, "chat": {"id": 5, "type": "private"}, "from": {"id": 5},
             "sticker": {"file_id": "s"}}},
        ]);
        let (last, msgs) = parse_updates_with_media(&result, "phone", &bot());
        assert_eq!(last, Some(2));
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].0.text, "");
        assert_eq!(msgs[0].1[0].file_id, "v");
    }

    #[test]
    fn file_paths_must_be_plain() {
        let cases = [
            (json!({"file_path": "photos/file_1.jpg"}), Some("photos/file_1.jpg")),
            (json!({"file_path": "../bot/x"}), None),
            (json!({"file_path": "/etc/passwd"}), None),
            (json!({"file_path": "a//b"}), None),
            (json!({"file_path": "a/b?x=1"}), None),
            (json!({"file_path": "http://evil/x"}), None),
            (json!({"file_path": ""}), None),
            (json!({}), None),
        ];
        for (result, path) in cases {
            assert_eq!(file_path(&result).as_deref(), path, "{result}");
        }
    }

    #[test]
    fn uploads_are_multipart_form_data() {
        let chat = ChatRef { channel: "tg".into(), chat_id: "-100".into(), thread_id: Some("7".into()) };
        let fields = upload_fields(&chat, Some("a caption"));
        assert_eq!(
            fields,
            vec![("chat_id", "-100".into()), ("message_thread_id", "7".into()), ("caption", "a caption".into())]
        );
        let body = multipart("B", &fields[..1], ("photo", "p\"\n.png", "image/png", b"\x89PNG"));
        let expected = b"--B\r\nContent-Disposition: form-data; name=\"chat_id\"\r\n\r\n-100\r\n\
            --B\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"p.png\"\r\n\
            Content-Type: image/png\r\n\r\n\x89PNG\r\n--B--\r\n";
        assert_eq!(String::from_utf8_lossy(&body), String::from_utf8_lossy(expected));
        // A boundary never occurs in what it separates.
        let seed = 1u64;
        let taken = format!("tether-{seed:016x}");
        let boundary = pick_boundary(seed, &[taken.as_bytes()]);
        assert_ne!(boundary, taken);
        assert_eq!(upload_method(FileKind::Document), ("sendDocument", "document"));
    }

    #[test]
    fn group_mentions_use_utf16_offsets() {
        // "🎉 @tether_bot hi": the emoji is 2 UTF-16 units, so the mention starts at 3.
        let text = "🎉 @tether_bot hi";
        let msg = |entities: Value| {
            json!([{"update_id": 1, "message": {"message_id": 1, "chat": {"id": -100, "type": "supergroup"},
                "from": {"id": 7, "first_name": "B"}, "text": text, "entities": entities}}])
        };
        let cases = vec![
            (json!([{"type": "mention", "offset": 3, "length": 11}]), true),
            (json!([{"type": "mention", "offset": 2, "length": 11}]), false),
            (json!([]), false),
            (json!([{"type": "text_mention", "offset": 0, "length": 2, "user": {"id": 42}}]), true),
        ];
        for (entities, mentioned) in cases {
            let (_, msgs) = parse_updates(&msg(entities.clone()), "g", &bot());
            assert_eq!(msgs[0].is_mentioned, mentioned, "{entities}");
            assert!(msgs[0].is_group);
            assert_eq!(msgs[0].text, "🎉 hi");
        }
    }

    #[test]
    fn bot_commands_address_us_only_with_our_name() {
        let cases = vec![
            ("/help@tether_bot", true, "/help"),
            ("/help@other_bot", false, "/help@other_bot"),
            ("/help", false, "/help"),
        ];
        for (text, mentioned, stripped) in cases {
            let len = text.encode_utf16().count();
            let result = json!([{"update_id": 1, "message": {"message_id": 1, "chat": {"id": -5, "type": "group"},
                "from": {"id": 7, "first_name": "B"}, "text": text,
                "entities": [{"type": "bot_command", "offset": 0, "length": len}]}}]);
            let (_, msgs) = parse_updates(&result, "g", &bot());
            assert_eq!(msgs[0].is_mentioned, mentioned, "{text}");
            assert_eq!(msgs[0].text, stripped, "{text}");
        }
    }

    #[test]
    fn replies_to_the_bot_but_not_forum_topic_roots() {
        let reply_to_bot = json!({"message_id": 3, "from": {"id": 42, "is_bot": true}, "text": "earlier answer"});
        let topic_root =
            json!({"message_id": 9, "from": {"id": 42, "is_bot": true}, "forum_topic_created": {"name": "t"}});
        let make = |reply: &Value, topic: bool| {
            json!([{"update_id": 1, "message": {"message_id": 20, "chat": {"id": -100, "type": "supergroup", "is_forum": topic},
                "from": {"id": 7, "first_name": "B"}, "text": "ok", "message_thread_id": 9, "is_topic_message": topic,
                "reply_to_message": reply}}])
        };
        let (_, msgs) = parse_updates(&make(&reply_to_bot, false), "g", &bot());
        assert!(msgs[0].is_reply_to_bot);
        assert_eq!(msgs[0].quoted_text.as_deref(), Some("earlier answer"));
        assert_eq!(msgs[0].thread_id, None, "a reply chain is not a topic");
        let (_, msgs) = parse_updates(&make(&topic_root, true), "g", &bot());
        assert!(!msgs[0].is_reply_to_bot);
        assert_eq!(msgs[0].quoted_text, None);
        assert_eq!(msgs[0].thread_id.as_deref(), Some("9"));
    }

    #[test]
    fn messages_from_bots_and_without_text_are_skipped() {
        let result = json!([
            {"update_id": 1, "message": {"message_id": 1, "chat": {"id": 1, "type": "private"}, "from": {"id": 9, "is_bot": true}, "text": "x"}},
            {"update_id": 2, "message": {"message_id": 2, "chat": {"id": 1, "type": "private"}, "from": {"id": 1}, "sticker": {}}},
            {"update_id": 3, "message": {"message_id": 3, "chat": {"id": 1, "type": "private"}, "from": {"id": 1}, "photo": [], "caption": "look"}},
        ]);
        let (last, msgs) = parse_updates(&result, "c", &bot());
        assert_eq!(last, Some(3));
        assert_eq!(msgs.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), vec!["look"]);
    }

    #[test]
    fn button_presses_are_parsed() {
        let result = json!([
            {"update_id": 5, "callback_query": {"id": "cb1", "from": {"id": 111, "first_name": "Ada"},
                "message": {"message_id": 9, "chat": {"id": 111, "type": "private"}}, "data": "perm:1:once"}},
            {"update_id": 6, "callback_query": {"id": "cb2", "from": {"id": 7, "first_name": "B"},
                "message": {"message_id": 9, "date": 0, "chat": {"id": -100, "type": "supergroup"}, "is_topic_message": true, "message_thread_id": 4},
                "data": "perm:2:deny"}},
            {"update_id": 7, "message": {"message_id": 1}},
        ]);
        let presses = parse_button_presses(&result, "tg");
        assert_eq!(presses.len(), 2);
        assert_eq!(
            presses[0],
            ButtonPress {
                channel: "tg".into(),
                sender_id: "111".into(),
                sender_name: "Ada".into(),
                chat_id: "111".into(),
                thread_id: None,
                is_group: false,
                data: "perm:1:once".into(),
                callback_id: "cb1".into(),
            }
        );
        assert_eq!(
            (presses[1].chat_id.as_str(), presses[1].thread_id.as_deref(), presses[1].is_group),
            ("-100", Some("4"), true)
        );
        // The highest update id still confirms presses too.
        assert_eq!(parse_updates(&result, "tg", &bot()).0, Some(7));
    }

    #[test]
    fn keyboard_edit_and_callback_bodies() {
        let chat = ChatRef { channel: "c".into(), chat_id: "111".into(), thread_id: None };
        let body = with_buttons(send_html(&chat, "ask"), &[("✅ Allow".into(), "perm:1:once".into())]);
        assert_eq!(
            body["reply_markup"],
            json!({"inline_keyboard": [[{"text": "✅ Allow", "callback_data": "perm:1:once"}]]})
        );
        let edit = edit_html(&chat, "42", "done");
        assert_eq!((edit["message_id"].clone(), edit.get("reply_markup")), (json!(42), None));
        assert_eq!(answer_callback("cb", "ok")["callback_query_id"], "cb");
    }

    #[test]
    fn send_bodies() {
        let topic = ChatRef { channel: "c".into(), chat_id: "-100123".into(), thread_id: Some("9".into()) };
        let dm = ChatRef { channel: "c".into(), chat_id: "111".into(), thread_id: None };
        let by_name = ChatRef { channel: "c".into(), chat_id: "@news".into(), thread_id: Some("x".into()) };
        let no_preview = json!({"is_disabled": true});
        let cases = vec![
            (
                send_message(&topic, "a < b"),
                json!({"chat_id": -100123, "message_thread_id": 9, "text": "a < b", "link_preview_options": no_preview}),
            ),
            (
                send_html(&dm, "<b>hi</b> &amp;"),
                json!({"chat_id": 111, "text": "<b>hi</b> &amp;", "parse_mode": "HTML", "link_preview_options": no_preview}),
            ),
            (
                send_html(&topic, "x"),
                json!({"chat_id": -100123, "message_thread_id": 9, "text": "x", "parse_mode": "HTML", "link_preview_options": no_preview}),
            ),
            // A thread id that is not a number is not sent (Telegram would refuse it).
            (send_message(&by_name, "x"), json!({"chat_id": "@news", "text": "x", "link_preview_options": no_preview})),
            (send_typing(&topic), json!({"chat_id": -100123, "message_thread_id": 9, "action": "typing"})),
            (send_typing(&dm), json!({"chat_id": 111, "action": "typing"})),
        ];
        for (body, expected) in cases {
            assert_eq!(body, expected);
        }
    }

    #[test]
    fn bodies_written_as_text_are_the_values_they_replace() {
        let chats = [
            ChatRef { channel: "c".into(), chat_id: "-100123".into(), thread_id: Some("9".into()) },
            ChatRef { channel: "c".into(), chat_id: "111".into(), thread_id: None },
            ChatRef { channel: "c".into(), chat_id: "@news".into(), thread_id: Some("x".into()) },
            ChatRef { channel: "c".into(), chat_id: "we\"ird\\".into(), thread_id: Some("-5".into()) },
        ];
        let texts = ["", "echo: hi", "<b>a</b> &amp; \"q\" \\ /", "line\nnext\ttab \u{1} \u{7f} é 😀 \u{2028}"];
        for chat in &chats {
            for text in texts {
                let parse = |bytes: Vec<u8>| serde_json::from_slice::<Value>(&bytes).unwrap();
                assert_eq!(parse(send_message_json(chat, text, true)), send_html(chat, text), "{chat:?} {text:?}");
                assert_eq!(parse(send_message_json(chat, text, false)), send_message(chat, text), "{chat:?} {text:?}");
            }
        }
        let body: Value = serde_json::from_slice(&get_updates(-7, Duration::from_secs(50))).unwrap();
        let expected = json!({
            "offset": -7,
            "timeout": 50,
            "allowed_updates": ["message", "edited_message", "callback_query", "my_chat_member"],
        });
        assert_eq!(body, expected);
    }

    #[test]
    fn strip_mention_cases() {
        let cases = vec![
            ("@tether_bot hello", "hello"),
            ("hello @TETHER_BOT", "hello"),
            ("@Tether_Bot", ""),
            ("@tether_botany stays", "@tether_botany stays"),
            ("/new@tether_bot now", "/new now"),
            ("hi @tether_bot there", "hi there"),
            // Case-folding letters change byte length when lowercased: this used to panic.
            ("Ⱥ@tether_bot éẞ", "Ⱥ éẞ"),
            ("Ⱥ@TETHER_BOT", "Ⱥ"),
            ("ẞẞ @tether_bot ȺȺ", "ẞẞ ȺȺ"),
            ("@tether_botẞ", "ẞ"),
            ("Ⱥ@tether_botéẞ", "Ⱥéẞ"),
            ("Ⱥ@tether_bot éẞ Ⱥ@tether_botéẞ", "Ⱥ éẞ Ⱥéẞ"),
            ("@tether_bot_2 @tether_bot2", "@tether_bot_2 @tether_bot2"),
            ("@tether_bot,ẞ", ",ẞ"),
            ("日本@tether_bot語", "日本語"),
            ("🎉@tether_bot🎉", "🎉🎉"),
            ("@tether_bo", "@tether_bo"),
            ("@", "@"),
            ("ẞ@", "ẞ@"),
            ("@@tether_bot", "@"),
            ("a  b", "a  b"),
            ("  code\n    indented", "code\n    indented"),
            ("@tether_bot @tether_bot twice", "twice"),
            // A non-ASCII look-alike of a letter is not it (K is the Kelvin sign).
            ("@\u{212A}tether_bot", "@\u{212A}tether_bot"),
            ("", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(strip_mention(input, "tether_bot"), expected, "{input}");
        }
        // The issue's examples, with getMe's name in either case.
        let named = [
            ("yourbot", "Ⱥ@yourbot éẞ", "Ⱥ éẞ"),
            ("YourBot", "Ⱥ@yourbot éẞ", "Ⱥ éẞ"),
            ("yourbot", "@YourBot", ""),
            ("YourBot", "hey @YOURBOT, ẞ", "hey , ẞ"),
            ("YourBot", "", ""),
        ];
        for (username, input, expected) in named {
            assert_eq!(strip_mention(input, username), expected, "{username} {input}");
        }
    }

    #[test]
    fn poisoned_mentions_are_decoded_in_dms_groups_and_captions() {
        let text = "Ⱥ@tether_bot éẞ";
        let at = "Ⱥ".encode_utf16().count();
        let mention = json!([{"type": "mention", "offset": at, "length": 11}]);
        let result = json!([
            {"update_id": 1, "message": {"message_id": 1, "chat": {"id": 9, "type": "private"},
                "from": {"id": 9, "first_name": "S"}, "text": text}},
            {"update_id": 2, "message": {"message_id": 2, "chat": {"id": -5, "type": "supergroup"},
                "from": {"id": 9, "first_name": "S"}, "text": text, "entities": mention}},
            {"update_id": 3, "message": {"message_id": 3, "chat": {"id": -5, "type": "group"},
                "from": {"id": 9, "first_name": "S"}, "photo": [], "caption": text, "caption_entities": mention}},
            {"update_id": 4, "message": {"message_id": 4, "chat": {"id": -5, "type": "group"},
                "from": {"id": 9, "first_name": "S"}, "text": "Ⱥ@TETHER_BOT"}},
        ]);
        let (last, msgs) = parse_updates(&result, "c", &bot());
        assert_eq!(last, Some(4));
        let got: Vec<(&str, bool)> = msgs.iter().map(|m| (m.text.as_str(), m.is_mentioned)).collect();
        assert_eq!(got, vec![("Ⱥ éẞ", true), ("Ⱥ éẞ", true), ("Ⱥ éẞ", true), ("Ⱥ", false)]);
    }

    thread_local! {
        /// The update id whose decoding panics (unit tests only).
        pub(super) static PANIC_ON_UPDATE: std::cell::Cell<Option<i64>> = const { std::cell::Cell::new(None) };
    }

    #[test]
    fn an_update_whose_decoding_panics_is_skipped_and_still_confirmed() {
        let dm = |id: i64, text: &str| {
            json!({"update_id": id, "message": {"message_id": id, "chat": {"id": 111, "type": "private"},
                "from": {"id": 111, "first_name": "A"}, "text": text}})
        };
        let result = json!([dm(20, "before"), dm(21, "poison"), dm(22, "after")]);
        PANIC_ON_UPDATE.with(|p| p.set(Some(22)));
        let (last, msgs) = parse_updates(&result, "c", &bot());
        assert_eq!(last, Some(22), "the offset moves past the bad update");
        assert_eq!(msgs.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), ["before", "poison"]);
        PANIC_ON_UPDATE.with(|p| p.set(Some(21)));
        let (last, msgs) = parse_updates(&result, "c", &bot());
        PANIC_ON_UPDATE.with(|p| p.set(None));
        assert_eq!(last, Some(22));
        assert_eq!(msgs.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), ["before", "after"]);
    }
}
