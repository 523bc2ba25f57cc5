//! iLink bot API JSON (reference: platform-protocols §2): the headers and `base_info` every
//! request carries, QR login replies, `getupdates` and its cursor, WeChat messages turned into
//! [`InboundMessage`]s (DMs only), `sendmessage`, typing, CDN parameters and error codes.
//! Pure; the only place iLink's shapes exist.

use std::time::Duration;

use serde_json::{Value, json};

use crate::event::{Attachment, AttachmentKind, InboundMessage};

use super::crypto::{self, Key, KeyEncoding};

/// The API (and login) host when the config does not name one.
pub const DEFAULT_API_BASE: &str = "https://ilinkai.weixin.qq.com";
/// The media CDN when the config does not name one.
pub const DEFAULT_CDN_BASE: &str = "https://novac2c.cdn.weixin.qq.com/c2c";
/// The plugin protocol version we speak (Tencent's plugin 2.1.3, as Qwen Code sends).
pub const CHANNEL_VERSION: &str = "2.1.3";
/// One reply message at most this many characters (Tencent's `textChunkLimit`).
pub const TEXT_LIMIT: usize = 4000;
/// How long the server holds `getupdates` when it does not say.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(35);

/// `iLink-App-ClientVersion`: `(major<<16)|(minor<<8)|patch` of a dotted version.
pub fn client_version_number(version: &str) -> u32 {
    let mut parts = version.split('.').map(|p| p.trim().parse::<u32>().unwrap_or(0).min(255));
    let (major, minor, patch) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major << 16) | (minor << 8) | patch
}

/// The `base_info` every request body carries.
pub fn base_info() -> Value {
    json!({"channel_version": CHANNEL_VERSION, "bot_agent": concat!("tether/", env!("CARGO_PKG_VERSION"))})
}

/// The headers of every API request. Without the two `iLink-App-*` headers `getupdates`
/// answers -14 "session timeout" even with a valid token (Qwen Code issue #2908).
/// `uin` is random per request; Tencent sends base64 of its decimal digits.
pub fn headers(token: Option<&str>, uin: u32) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("Content-Type", "application/json".to_string()),
        ("AuthorizationType", "ilink_bot_token".to_string()),
        ("X-WECHAT-UIN", crypto::base64_encode(uin.to_string().as_bytes())),
        ("iLink-App-Id", "bot".to_string()),
        ("iLink-App-ClientVersion", client_version_number(CHANNEL_VERSION).to_string()),
    ];
    if let Some(token) = token.filter(|t| !t.is_empty()) {
        headers.push(("Authorization", format!("Bearer {token}")));
    }
    headers
}

/// Endpoint paths, relative to the API base.
pub mod path {
    pub const GET_UPDATES: &str = "ilink/bot/getupdates";
    pub const SEND_MESSAGE: &str = "ilink/bot/sendmessage";
    pub const GET_CONFIG: &str = "ilink/bot/getconfig";
    pub const SEND_TYPING: &str = "ilink/bot/sendtyping";
    pub const GET_UPLOAD_URL: &str = "ilink/bot/getuploadurl";
    pub const QR_CODE: &str = "ilink/bot/get_bot_qrcode?bot_type=3";
}

/// `base` and a relative endpoint, with exactly one slash between.
pub fn join(base: &str, path: &str) -> String {
    format!("{}/{}", base.trim_end_matches('/'), path.trim_start_matches('/'))
}

// ---------------------------------------------------------------------------------------------
// Replies and errors

/// Why a call did not succeed, classified by what the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// `errcode`/`ret` -14: the login is gone (or the `iLink-App-*` headers were missing).
    /// Never retried: the user must run `tether weixin-login` again.
    SessionExpired(String),
    /// `errcode` -1 (system busy), 45011 (rate limit), HTTP 429: retry after a pause.
    Busy(String),
    /// 5xx, timeouts, refused connections, malformed replies: retry with backoff.
    Transient(String),
    /// `ret` -2: no valid context token for this user (none yet, older than ~24 h, or ten
    /// sends since the user last wrote). Retrying will not help until the user writes.
    NoContext(String),
    /// Anything else the server refused.
    Rejected(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::SessionExpired(d) => write!(f, "session expired ({d})"),
            Failure::Busy(d) => write!(f, "busy: {d}"),
            Failure::Transient(d) => write!(f, "{d}"),
            Failure::NoContext(d) => write!(f, "refused for want of a fresh context token ({d})"),
            Failure::Rejected(d) => write!(f, "rejected: {d}"),
        }
    }
}

/// Decode an API reply: the JSON object on success (an empty 200 body counts as `{}`, which
/// `sendmessage` has been seen to answer), else a classified failure.
pub fn parse_reply(status: u16, body: &str) -> Result<Value, Failure> {
    let trimmed = body.trim();
    let reply = if trimmed.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice::<Value>(trimmed.as_bytes()) {
            Ok(value) if value.is_object() => value,
            _ => {
                let detail = format!("HTTP {status} with a body that is not a JSON object: {}", preview(body));
                return Err(if status == 200 || status >= 500 {
                    Failure::Transient(detail)
                } else {
                    Failure::Rejected(detail)
                });
            }
        }
    };
    let code = |key: &str| reply.get(key).and_then(Value::as_i64).unwrap_or(0);
    let (ret, errcode) = (code("ret"), code("errcode"));
    let errmsg = reply.get("errmsg").and_then(Value::as_str).unwrap_or("").to_string();
    let detail = |what: &str| {
        let mut d = format!("HTTP {status}, {what}");
        if !errmsg.is_empty() {
            d.push_str(&format!(": {errmsg}"));
        }
        d
    };
    if ret == -14 || errcode == -14 {
        return Err(Failure::SessionExpired(detail("errcode -14")));
    }
    if errcode == -1 || errcode == 45011 || ret == 45011 || status == 429 {
        return Err(Failure::Busy(detail(&format!("errcode {errcode}"))));
    }
    if ret == -2 {
        return Err(Failure::NoContext(detail("ret -2")));
    }
    if status >= 500 {
        return Err(Failure::Transient(detail("server error")));
    }
    if status != 200 {
        return Err(Failure::Rejected(detail("refused")));
    }
    if ret != 0 || errcode != 0 {
        return Err(Failure::Rejected(detail(&format!("ret {ret}, errcode {errcode}"))));
    }
    Ok(reply)
}

/// The start of a body for an error message, cut at a character boundary.
fn preview(body: &str) -> String {
    let cut: String = body.chars().take(200).collect();
    if cut.len() < body.len() { format!("{cut}…") } else { cut }
}

// ---------------------------------------------------------------------------------------------
// QR login

/// A login QR code: `qrcode` is the server's id to poll with; `content` is what the QR code
/// encodes (a URL the WeChat app opens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QrCode {
    pub qrcode: String,
    pub content: String,
}

pub fn parse_qr_code(reply: &Value) -> Option<QrCode> {
    let text = |key: &str| reply.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
    Some(QrCode { qrcode: text("qrcode")?, content: text("qrcode_img_content")? })
}

/// `get_qrcode_status` for `qrcode`, with the digits the phone shows when asked for them.
pub fn qr_status_path(qrcode: &str, verify_code: Option<&str>) -> String {
    let mut path = format!("ilink/bot/get_qrcode_status?qrcode={}", percent_encode(qrcode));
    if let Some(code) = verify_code {
        path.push_str(&format!("&verify_code={}", percent_encode(code)));
    }
    path
}

/// What a confirmed login gives us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmed {
    pub bot_token: String,
    /// `ilink_bot_id`, e.g. `b0f5860fdecb@im.bot`.
    pub bot_id: String,
    /// `baseurl`: the API base from now on, when the server names one.
    pub base_url: Option<String>,
    /// `ilink_user_id`: the WeChat user who scanned (the natural owner).
    pub user_id: Option<String>,
}

/// The state of a login QR code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QrStatus {
    /// Not scanned yet.
    Wait,
    /// Scanned (`scaned`, sic); waiting for the confirmation on the phone.
    Scanned,
    Confirmed(Confirmed),
    /// Too old: fetch a new code.
    Expired,
    /// Keep polling at this base (`scaned_but_redirect` with `redirect_host`).
    Redirect(String),
    /// The phone shows digits to type in.
    NeedVerifyCode,
    /// Too many wrong digits: fetch a new code.
    VerifyCodeBlocked,
    /// The bot is already bound to this client: the saved login stays valid.
    AlreadyBound,
    /// A status this build does not know (or a confirmation without a token).
    Unknown(String),
}

pub fn parse_qr_status(reply: &Value) -> QrStatus {
    let text = |key: &str| reply.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
    let status = text("status").unwrap_or_default();
    match status.as_str() {
        "wait" | "" => QrStatus::Wait,
        "scaned" | "scanned" => QrStatus::Scanned,
        "confirmed" => match (text("bot_token"), text("ilink_bot_id")) {
            (Some(bot_token), Some(bot_id)) => QrStatus::Confirmed(Confirmed {
                bot_token,
                bot_id,
                base_url: text("baseurl").map(|u| redirect_base(&u)),
                user_id: text("ilink_user_id"),
            }),
            _ => QrStatus::Unknown("confirmed without bot_token and ilink_bot_id".into()),
        },
        "expired" => QrStatus::Expired,
        "scaned_but_redirect" => match text("redirect_host") {
            Some(host) => QrStatus::Redirect(redirect_base(&host)),
            None => QrStatus::Unknown("scaned_but_redirect without redirect_host".into()),
        },
        "need_verifycode" => QrStatus::NeedVerifyCode,
        "verify_code_blocked" => QrStatus::VerifyCodeBlocked,
        "binded_redirect" => QrStatus::AlreadyBound,
        other => QrStatus::Unknown(other.to_string()),
    }
}

/// A host the server names, as a base URL: followed verbatim when it carries a scheme
/// (tests point it at a loopback `http://` fake), else over HTTPS.
pub fn redirect_base(host: &str) -> String {
    let host = host.trim().trim_end_matches('/');
    if host.starts_with("http://") || host.starts_with("https://") {
        host.to_string()
    } else {
        format!("https://{host}")
    }
}

// ---------------------------------------------------------------------------------------------
// getupdates

pub fn get_updates_body(cursor: &str) -> Value {
    json!({"get_updates_buf": cursor, "base_info": base_info()})
}

/// One `getupdates` answer: the raw messages (each decoded apart, so one bad message cannot
/// take the batch down), the new cursor when the server sent a non-empty one, and how long
/// the server says it holds the next poll.
#[derive(Debug, Clone, PartialEq)]
pub struct Updates {
    pub messages: Vec<Value>,
    pub cursor: Option<String>,
    pub hold: Option<Duration>,
}

pub fn parse_updates(reply: &Value) -> Updates {
    let messages = reply.get("msgs").and_then(Value::as_array).cloned().unwrap_or_default();
    let cursor = reply
        .get("get_updates_buf")
        .or_else(|| reply.get("sync_buf"))
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .map(str::to_string);
    let hold = reply
        .get("longpolling_timeout_ms")
        .and_then(Value::as_u64)
        .filter(|ms| *ms > 0)
        .map(|ms| Duration::from_millis(ms.min(120_000)));
    Updates { messages, cursor, hold }
}

/// Where a media item's ciphertext is and how to decrypt it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CdnMedia {
    pub encrypt_query_param: Option<String>,
    /// `media.aes_key`: base64 of 16 raw bytes or of 32 hex characters.
    pub aes_key: Option<String>,
    /// `image_item.aeskey`: hex (preferred when present).
    pub hex_key: Option<String>,
    /// A URL to fetch as is.
    pub full_url: Option<String>,
}

impl CdnMedia {
    /// The key to decrypt with; `Ok(None)` when the item is not encrypted.
    pub fn key(&self) -> Result<Option<Key>, crypto::CryptoError> {
        crypto::media_key(self.hex_key.as_deref(), self.aes_key.as_deref())
    }
}

/// A file that came with a message, before it is downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaItem {
    pub kind: AttachmentKind,
    pub media: CdnMedia,
    /// The sender's file name (files), else a name we make up.
    pub file_name: String,
    /// The plaintext size the message announces (`file_item.len`, a string), if any.
    pub announced_len: Option<u64>,
}

/// A user's message, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub message_id: String,
    pub from_user_id: String,
    pub create_time_ms: Option<u64>,
    pub context_token: Option<String>,
    /// Text items and recognised speech, in order.
    pub texts: Vec<String>,
    /// The summary of a quoted message.
    pub quoted: Option<String>,
    pub media: Vec<MediaItem>,
    /// Voice messages without recognised text (their audio is downloaded like a file).
    pub voice_without_text: usize,
}

const TYPE_USER: i64 = 1;
const ITEM_TEXT: i64 = 1;
const ITEM_IMAGE: i64 = 2;
const ITEM_VOICE: i64 = 3;
const ITEM_FILE: i64 = 4;
const ITEM_VIDEO: i64 = 5;

/// A message worth handling: from a user (not the bot's own echo), in a direct chat (group
/// messages are skipped: neither reference plugin supports them), with a sender.
pub fn parse_message(value: &Value) -> Option<Message> {
    if value.get("message_type").and_then(Value::as_i64).is_some_and(|t| t != TYPE_USER) {
        return None;
    }
    if value.get("group_id").and_then(Value::as_str).is_some_and(|g| !g.is_empty()) {
        return None;
    }
    let from_user_id = text_of(value, "from_user_id")?;
    // `message_id` can exceed 2^53: serde_json keeps integers as u64, never as f64.
    let message_id = ["message_id", "client_id", "seq"].iter().find_map(|key| value.get(*key).and_then(id_text))?;
    let mut message = Message {
        message_id,
        from_user_id,
        create_time_ms: value.get("create_time_ms").and_then(Value::as_u64),
        context_token: text_of(value, "context_token"),
        texts: Vec::new(),
        quoted: None,
        media: Vec::new(),
        voice_without_text: 0,
    };
    for item in value.get("item_list").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
        add_item(&mut message, item);
        if message.quoted.is_none()
            && let Some(quote) = item.get("ref_msg")
        {
            message.quoted = text_of(quote, "title").or_else(|| {
                quote
                    .get("message_item")
                    .and_then(|i| i.pointer("/text_item/text"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
        }
    }
    message.media.truncate(MAX_MEDIA_ITEMS);
    Some(message)
}

/// Media items taken from one message; more are ignored (each may be 20 MB to fetch).
pub const MAX_MEDIA_ITEMS: usize = 10;

fn add_item(message: &mut Message, item: &Value) {
    let n = message.media.len() + 1;
    match item.get("type").and_then(Value::as_i64).unwrap_or(0) {
        ITEM_TEXT => {
            if let Some(text) = item.pointer("/text_item/text").and_then(Value::as_str) {
                message.texts.push(text.to_string());
            }
        }
        ITEM_IMAGE => {
            let Some(image) = item.get("image_item") else { return };
            let mut media = cdn_media(image.get("media"));
            media.hex_key = text_of(image, "aeskey");
            if media.full_url.is_none() {
                media.full_url = text_of(image, "url").filter(|u| u.starts_with("http"));
            }
            let file_name = format!("image-{n}");
            message.media.push(MediaItem { kind: AttachmentKind::Image, media, file_name, announced_len: None });
        }
        ITEM_VOICE => {
            let Some(voice) = item.get("voice_item") else { return };
            match text_of(voice, "text") {
                Some(text) => message.texts.push(text),
                None => {
                    message.voice_without_text += 1;
                    let media = cdn_media(voice.get("media"));
                    let file_name = format!("voice-{n}.silk");
                    message.media.push(MediaItem {
                        kind: AttachmentKind::Audio,
                        media,
                        file_name,
                        announced_len: None,
                    });
                }
            }
        }
        ITEM_FILE => {
            let Some(file) = item.get("file_item") else { return };
            let file_name = text_of(file, "file_name").unwrap_or_else(|| format!("file-{n}"));
            // `len` is a string of the plaintext size (sometimes a number).
            let announced_len = file.get("len").and_then(|l| l.as_u64().or_else(|| l.as_str()?.trim().parse().ok()));
            message.media.push(MediaItem {
                kind: AttachmentKind::File,
                media: cdn_media(file.get("media")),
                file_name,
                announced_len,
            });
        }
        ITEM_VIDEO => {
            let Some(video) = item.get("video_item") else { return };
            let file_name = format!("video-{n}.mp4");
            message.media.push(MediaItem {
                kind: AttachmentKind::Video,
                media: cdn_media(video.get("media")),
                file_name,
                announced_len: None,
            });
        }
        _ => {}
    }
}

fn cdn_media(media: Option<&Value>) -> CdnMedia {
    let Some(media) = media else { return CdnMedia::default() };
    CdnMedia {
        encrypt_query_param: text_of(media, "encrypt_query_param"),
        aes_key: text_of(media, "aes_key"),
        hex_key: None,
        full_url: text_of(media, "full_url"),
    }
}

fn text_of(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string)
}

fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The message as the core sees it: a DM whose chat is the sender. `attachments` are the
/// media already saved; `failed` names the media that could not be fetched (the user is
/// told, the message is still handled).
pub fn to_inbound(channel: &str, message: &Message, attachments: Vec<Attachment>, failed: &[String]) -> InboundMessage {
    let mut text = message.texts.join("\n");
    for name in failed {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&format!("(User sent a file \"{}\" but download failed)", name.replace(['"', '\n'], " ")));
    }
    InboundMessage {
        channel: channel.to_string(),
        sender_id: message.from_user_id.clone(),
        sender_name: message.from_user_id.clone(),
        chat_id: message.from_user_id.clone(),
        thread_id: None,
        message_id: Some(message.message_id.clone()),
        is_group: false,
        is_mentioned: false,
        is_reply_to_bot: false,
        text,
        quoted_text: message.quoted.clone(),
        attachments,
        sent_at_ms: message.create_time_ms,
        webhook: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Sending

/// A `sendmessage` body with one item (one item per request, as both plugins send).
pub fn send_body(to_user: &str, context_token: &str, client_id: &str, item: Value) -> Value {
    json!({
        "msg": {
            "from_user_id": "",
            "to_user_id": to_user,
            "client_id": client_id,
            "message_type": 2,
            "message_state": 2,
            "context_token": context_token,
            "item_list": [item],
        },
        "base_info": base_info(),
    })
}

pub fn text_item(text: &str) -> Value {
    json!({"type": ITEM_TEXT, "text_item": {"text": text}})
}

/// A file on the CDN, as a message refers to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// `x-encrypted-param` of the upload: the download parameter.
    pub download_param: String,
    pub key: Key,
    pub plain_len: usize,
}

impl Uploaded {
    fn media(&self) -> Value {
        // Tencent's form (base64 of the hex key) works for every media type.
        json!({
            "encrypt_query_param": self.download_param,
            "aes_key": crypto::encode_key(&self.key, KeyEncoding::Base64Hex),
            "encrypt_type": 1,
        })
    }
}

pub fn image_item(uploaded: &Uploaded) -> Value {
    json!({"type": ITEM_IMAGE, "image_item": {"media": uploaded.media(), "mid_size": crypto::padded_len(uploaded.plain_len)}})
}

pub fn file_item(uploaded: &Uploaded, file_name: &str) -> Value {
    json!({"type": ITEM_FILE, "file_item": {
        "media": uploaded.media(), "file_name": file_name, "len": uploaded.plain_len.to_string(),
    }})
}

/// An answer as WeChat messages: Markdown stripped to plain text (reference spec §6.3),
/// split at gentle breaks into pieces of at most [`TEXT_LIMIT`] characters.
pub fn reply_texts(markdown: &str) -> Vec<String> {
    crate::render::plain_chunks(markdown, TEXT_LIMIT, crate::render::Units::Chars)
        .into_iter()
        .filter(|piece| !piece.trim().is_empty())
        .collect()
}

/// A `client_id` of our own for a message: unique per send (the server may dedup by it).
pub fn client_id(now_ms: u64, random: u32) -> String {
    format!("tether-{now_ms}-{random:08x}")
}

// ---------------------------------------------------------------------------------------------
// Typing

pub fn get_config_body(user: &str, context_token: &str) -> Value {
    json!({"ilink_user_id": user, "context_token": context_token, "base_info": base_info()})
}

pub fn typing_ticket(reply: &Value) -> Option<String> {
    text_of(reply, "typing_ticket")
}

/// Show (`typing`) or cancel "typing…".
pub fn send_typing_body(user: &str, ticket: &str, typing: bool) -> Value {
    json!({"ilink_user_id": user, "typing_ticket": ticket, "status": if typing { 1 } else { 2 }, "base_info": base_info()})
}

// ---------------------------------------------------------------------------------------------
// CDN

/// Where to download a media item: its `full_url` verbatim, else the CDN's download path.
pub fn download_url(cdn_base: &str, media: &CdnMedia) -> Option<String> {
    if let Some(url) = &media.full_url {
        return Some(url.clone());
    }
    let param = media.encrypt_query_param.as_deref()?;
    Some(format!("{}?encrypted_query_param={}", join(cdn_base, "download"), percent_encode(param)))
}

/// `media_type` of `getuploadurl` (2 video and 4 voice exist; videos go as files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadKind {
    Image = 1,
    File = 3,
}

/// The `getuploadurl` body for `plain` encrypted with `key`; `filekey` is 16 random bytes
/// as hex.
pub fn get_upload_url_body(filekey: &str, kind: UploadKind, to_user: &str, plain: &[u8], key: &Key) -> Value {
    json!({
        "filekey": filekey,
        "media_type": kind as u8,
        "to_user_id": to_user,
        "rawsize": plain.len(),
        "rawfilemd5": crypto::md5_hex(plain),
        "filesize": crypto::padded_len(plain.len()),
        "no_need_thumb": true,
        "aeskey": crypto::to_hex(key),
        "base_info": base_info(),
    })
}

/// Where to POST the ciphertext: `upload_full_url` verbatim, else the CDN's upload path
/// with `upload_param`.
pub fn upload_url(cdn_base: &str, reply: &Value, filekey: &str) -> Option<String> {
    if let Some(url) = text_of(reply, "upload_full_url") {
        return Some(url);
    }
    let param = text_of(reply, "upload_param")?;
    Some(format!(
        "{}?encrypted_query_param={}&filekey={}",
        join(cdn_base, "upload"),
        percent_encode(&param),
        percent_encode(filekey)
    ))
}

/// Percent-encode everything but RFC 3986's unreserved characters.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_headers() {
        assert_eq!(client_version_number("2.1.3"), 131_331);
        assert_eq!(client_version_number("1.0.0"), 65_536);
        assert_eq!(client_version_number("junk"), 0);
        let h = headers(Some("tok"), 1234);
        let get = |name: &str| h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str());
        assert_eq!(get("iLink-App-Id"), Some("bot"));
        assert_eq!(get("iLink-App-ClientVersion"), Some("131331"));
        assert_eq!(get("AuthorizationType"), Some("ilink_bot_token"));
        assert_eq!(get("Authorization"), Some("Bearer tok"));
        assert_eq!(get("X-WECHAT-UIN"), Some("MTIzNA=="), "base64 of the decimal digits");
        assert_eq!(get("Content-Type"), Some("application/json"));
        assert!(headers(None, 1).iter().all(|(n, _)| *n != "Authorization"));
        assert_eq!(base_info()["channel_version"], "2.1.3");
        assert!(base_info()["bot_agent"].as_str().unwrap().starts_with("tether/"));
        assert_eq!(join("http://a/", "/ilink/bot/x"), "http://a/ilink/bot/x");
    }

    #[test]
    fn replies_and_error_codes() {
        type Check = fn(&Failure) -> bool;
        let cases: Vec<(u16, &str, Result<(), Check>)> = vec![
            (200, "", Ok(())),
            (200, "{}", Ok(())),
            (200, r#"{"ret": 0}"#, Ok(())),
            (
                200,
                r#"{"ret": -14, "errcode": -14, "errmsg": "session timeout"}"#,
                Err(|f| matches!(f, Failure::SessionExpired(d) if d.contains("session timeout"))),
            ),
            (200, r#"{"errcode": -14}"#, Err(|f| matches!(f, Failure::SessionExpired(_)))),
            (200, r#"{"ret": -2}"#, Err(|f| matches!(f, Failure::NoContext(_)))),
            (200, r#"{"errcode": -1, "errmsg": "system busy"}"#, Err(|f| matches!(f, Failure::Busy(_)))),
            (200, r#"{"ret": 0, "errcode": 45011}"#, Err(|f| matches!(f, Failure::Busy(_)))),
            (429, "", Err(|f| matches!(f, Failure::Busy(_)))),
            (502, "<html>bad gateway</html>", Err(|f| matches!(f, Failure::Transient(_)))),
            (503, "{}", Err(|f| matches!(f, Failure::Transient(_)))),
            (200, "{\"ret\": 0", Err(|f| matches!(f, Failure::Transient(_)))),
            (200, "[1]", Err(|f| matches!(f, Failure::Transient(_)))),
            (400, r#"{"ret": 1, "errmsg": "bad"}"#, Err(|f| matches!(f, Failure::Rejected(d) if d.contains("bad")))),
            (200, r#"{"ret": 7}"#, Err(|f| matches!(f, Failure::Rejected(_)))),
        ];
        for (status, body, want) in cases {
            match (parse_reply(status, body), want) {
                (Ok(_), Ok(())) => {}
                (Err(got), Err(check)) => assert!(check(&got), "{status} {body}: {got:?}"),
                (got, _) => panic!("{status} {body}: {got:?}"),
            }
        }
        // A long body is cut at a character boundary.
        let long = "é".repeat(500);
        let Err(Failure::Transient(d)) = parse_reply(200, &long) else { panic!() };
        assert!(d.ends_with('…') && d.chars().count() < 300, "{d}");
    }

    #[test]
    fn qr_login_states() {
        assert_eq!(
            parse_qr_code(&json!({"qrcode": "q1", "qrcode_img_content": "https://liteapp.weixin.qq.com/q/x"})),
            Some(QrCode { qrcode: "q1".into(), content: "https://liteapp.weixin.qq.com/q/x".into() })
        );
        assert_eq!(parse_qr_code(&json!({"qrcode": "q1"})), None);
        assert_eq!(qr_status_path("a b&c", None), "ilink/bot/get_qrcode_status?qrcode=a%20b%26c");
        assert_eq!(qr_status_path("q", Some("123")), "ilink/bot/get_qrcode_status?qrcode=q&verify_code=123");
        let confirmed = Confirmed {
            bot_token: "t".into(),
            bot_id: "b@im.bot".into(),
            base_url: Some("https://ilinkai2.weixin.qq.com".into()),
            user_id: Some("o9@im.wechat".into()),
        };
        let cases = vec![
            (json!({"status": "wait"}), QrStatus::Wait),
            (json!({}), QrStatus::Wait),
            (json!({"status": "scaned"}), QrStatus::Scanned),
            (
                json!({"status": "confirmed", "bot_token": "t", "ilink_bot_id": "b@im.bot",
                       "baseurl": "https://ilinkai2.weixin.qq.com/", "ilink_user_id": "o9@im.wechat"}),
                QrStatus::Confirmed(confirmed),
            ),
            (json!({"status": "confirmed"}), QrStatus::Unknown("confirmed without bot_token and ilink_bot_id".into())),
            (json!({"status": "expired"}), QrStatus::Expired),
            (
                json!({"status": "scaned_but_redirect", "redirect_host": "sz.ilinkai.weixin.qq.com"}),
                QrStatus::Redirect("https://sz.ilinkai.weixin.qq.com".into()),
            ),
            (
                json!({"status": "scaned_but_redirect", "redirect_host": "http://127.0.0.1:9/"}),
                QrStatus::Redirect("http://127.0.0.1:9".into()),
            ),
            (json!({"status": "need_verifycode"}), QrStatus::NeedVerifyCode),
            (json!({"status": "verify_code_blocked"}), QrStatus::VerifyCodeBlocked),
            (json!({"status": "binded_redirect"}), QrStatus::AlreadyBound),
            (json!({"status": "martian"}), QrStatus::Unknown("martian".into())),
        ];
        for (reply, want) in cases {
            assert_eq!(parse_qr_status(&reply), want, "{reply}");
        }
    }

    #[test]
    fn updates_and_cursor() {
        let reply = json!({"ret": 0, "msgs": [{"a": 1}, {"b": 2}], "get_updates_buf": "Y3Vyc29yMg==", "longpolling_timeout_ms": 500});
        let updates = parse_updates(&reply);
        assert_eq!(updates.messages.len(), 2);
        assert_eq!(updates.cursor.as_deref(), Some("Y3Vyc29yMg=="));
        assert_eq!(updates.hold, Some(Duration::from_millis(500)));
        // An empty cursor never replaces the saved one; no hold: the default applies.
        let updates = parse_updates(&json!({"ret": 0, "get_updates_buf": "", "longpolling_timeout_ms": 0}));
        assert_eq!((updates.messages.len(), updates.cursor, updates.hold), (0, None, None));
        assert_eq!(parse_updates(&json!({"sync_buf": "old"})).cursor.as_deref(), Some("old"));
        let body = get_updates_body("c1");
        assert_eq!(body["get_updates_buf"], "c1");
        assert_eq!(body["base_info"]["channel_version"], CHANNEL_VERSION);
    }

    fn user_message(items: Value) -> Value {
        json!({"seq": 12, "message_id": 7_301_234_567_890_123_456u64, "from_user_id": "o9cq80@im.wechat",
               "to_user_id": "b0f5@im.bot", "create_time_ms": 1_774_080_994_334u64, "message_type": 1,
               "message_state": 2, "context_token": "ctx-1", "item_list": items})
    }

    #[test]
    fn messages_of_each_kind() {
        let value = user_message(json!([
            {"type": 1, "text_item": {"text": "hello"}},
            {"type": 2, "image_item": {"media": {"encrypt_query_param": "p1", "aes_key": "a2V5"}, "aeskey": "00112233445566778899aabbccddeeff"}},
            {"type": 3, "voice_item": {"media": {"encrypt_query_param": "p2"}, "encode_type": 6, "text": "spoken words"}},
            {"type": 3, "voice_item": {"media": {"encrypt_query_param": "p3"}, "encode_type": 6}},
            {"type": 4, "file_item": {"media": {"encrypt_query_param": "p4", "aes_key": "k", "full_url": "http://cdn/x"}, "file_name": "a.pdf", "len": "1234"}},
            {"type": 5, "video_item": {"media": {"encrypt_query_param": "p5"}}},
            {"type": 99},
            {"type": 1, "text_item": {"text": "more"}, "ref_msg": {"title": "the quoted summary"}},
        ]));
        let m = parse_message(&value).unwrap();
        // Beyond 2^53, kept exactly.
        assert_eq!(m.message_id, "7301234567890123456");
        assert_eq!(m.from_user_id, "o9cq80@im.wechat");
        assert_eq!(m.create_time_ms, Some(1_774_080_994_334));
        assert_eq!(m.context_token.as_deref(), Some("ctx-1"));
        assert_eq!(m.texts, vec!["hello", "spoken words", "more"]);
        assert_eq!(m.quoted.as_deref(), Some("the quoted summary"));
        assert_eq!(m.voice_without_text, 1);
        let kinds: Vec<_> = m.media.iter().map(|i| (i.kind, i.file_name.as_str())).collect();
        assert_eq!(
            kinds,
            vec![
                (AttachmentKind::Image, "image-1"),
                (AttachmentKind::Audio, "voice-2.silk"),
                (AttachmentKind::File, "a.pdf"),
                (AttachmentKind::Video, "video-4.mp4"),
            ]
        );
        assert_eq!(m.media[0].media.hex_key.as_deref(), Some("00112233445566778899aabbccddeeff"));
        assert_eq!(m.media[2].announced_len, Some(1234));
        assert_eq!(download_url("http://cdn.test/c2c", &m.media[2].media).as_deref(), Some("http://cdn/x"));
        assert_eq!(
            download_url("http://cdn.test/c2c/", &m.media[0].media).as_deref(),
            Some("http://cdn.test/c2c/download?encrypted_query_param=p1")
        );
        assert_eq!(download_url("http://c", &CdnMedia::default()), None);

        let inbound = to_inbound("wx", &m, Vec::new(), &["a.pdf".to_string()]);
        assert_eq!(inbound.chat_id, "o9cq80@im.wechat");
        assert_eq!(inbound.sender_id, "o9cq80@im.wechat");
        assert!(!inbound.is_group);
        assert_eq!(inbound.message_id.as_deref(), Some("7301234567890123456"));
        assert_eq!(inbound.text, "hello\nspoken words\nmore\n(User sent a file \"a.pdf\" but download failed)");
    }

    #[test]
    fn media_items_per_message_are_capped() {
        let items: Vec<Value> = (0..50)
            .map(|_| json!({"type": 2, "image_item": {"media": {"encrypt_query_param": "p"}}}))
            .chain([json!({"type": 1, "text_item": {"text": "after them"}})])
            .collect();
        let m = parse_message(&user_message(Value::Array(items))).unwrap();
        assert_eq!(m.media.len(), MAX_MEDIA_ITEMS);
        assert_eq!(m.texts, vec!["after them"]);
    }

    #[test]
    fn messages_skipped_or_tolerated() {
        let mut bot_echo = user_message(json!([{"type": 1, "text_item": {"text": "x"}}]));
        bot_echo["message_type"] = json!(2);
        assert_eq!(parse_message(&bot_echo), None);
        let mut group = user_message(json!([]));
        group["group_id"] = json!("g1@chatroom");
        assert_eq!(parse_message(&group), None);
        let mut no_sender = user_message(json!([]));
        no_sender["from_user_id"] = json!("");
        assert_eq!(parse_message(&no_sender), None);
        // No message_id: the client id or the sequence number identifies it.
        let mut no_id = user_message(json!([]));
        no_id.as_object_mut().unwrap().remove("message_id");
        assert_eq!(parse_message(&no_id).unwrap().message_id, "12");
        // Wrong types inside items are skipped, not fatal; a null group id is a DM.
        let mut odd = user_message(
            json!([{"type": 1, "text_item": {"text": 5}}, {"type": 2}, "junk", {"type": 4, "file_item": {"len": 3}}]),
        );
        odd["group_id"] = Value::Null;
        let m = parse_message(&odd).unwrap();
        assert!(m.texts.is_empty());
        assert_eq!(m.media.len(), 1);
        assert_eq!(m.media[0].announced_len, Some(3));
    }

    #[test]
    fn send_typing_and_upload_bodies() {
        let body = send_body("u@im.wechat", "ctx", "cid", text_item("plain"));
        assert_eq!(body["msg"]["to_user_id"], "u@im.wechat");
        assert_eq!(body["msg"]["context_token"], "ctx");
        assert_eq!(body["msg"]["message_type"], 2);
        assert_eq!(body["msg"]["message_state"], 2);
        assert_eq!(body["msg"]["item_list"][0]["text_item"]["text"], "plain");
        assert_eq!(body["base_info"]["channel_version"], CHANNEL_VERSION);

        let key = [0x11; 16];
        let uploaded = Uploaded { download_param: "dl".into(), key, plain_len: 20 };
        let image = image_item(&uploaded);
        assert_eq!(image["type"], 2);
        assert_eq!(image["image_item"]["mid_size"], 32);
        let sent_key = image["image_item"]["media"]["aes_key"].as_str().unwrap();
        assert_eq!(crypto::decode_base64_key(sent_key).unwrap(), key);
        let file = file_item(&uploaded, "r.pdf");
        assert_eq!(file["file_item"]["len"], "20");
        assert_eq!(file["file_item"]["media"]["encrypt_query_param"], "dl");

        assert_eq!(get_config_body("u", "ctx")["context_token"], "ctx");
        assert_eq!(typing_ticket(&json!({"ret": 0, "typing_ticket": "dGs="})).as_deref(), Some("dGs="));
        assert_eq!(send_typing_body("u", "t", true)["status"], 1);
        assert_eq!(send_typing_body("u", "t", false)["status"], 2);

        let body = get_upload_url_body("fk", UploadKind::Image, "u", b"abc", &key);
        assert_eq!(body["rawsize"], 3);
        assert_eq!(body["filesize"], 16);
        assert_eq!(body["rawfilemd5"], "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(body["aeskey"], "11111111111111111111111111111111");
        assert_eq!(body["media_type"], 1);
        assert_eq!(
            upload_url("http://c/c2c", &json!({"upload_full_url": "http://x/up?a=1"}), "fk").as_deref(),
            Some("http://x/up?a=1")
        );
        assert_eq!(
            upload_url("http://c/c2c", &json!({"upload_param": "p/q="}), "fk").as_deref(),
            Some("http://c/c2c/upload?encrypted_query_param=p%2Fq%3D&filekey=fk")
        );
        assert_eq!(upload_url("http://c", &json!({}), "fk"), None);
        assert_eq!(
            reply_texts("# Title\n\n**bold** [docs](https://d.rs)\n\n```\ncode\n```"),
            vec!["Title\n\nbold docs (https://d.rs)\n\ncode"]
        );
        let long = "word ".repeat(2000);
        let pieces = reply_texts(&long);
        assert!(pieces.len() == 3 && pieces.iter().all(|p| p.chars().count() <= TEXT_LIMIT), "{}", pieces.len());
        assert!(reply_texts("  \n").is_empty());
        assert_eq!(client_id(5, 255), "tether-5-000000ff");
        assert_eq!(percent_encode("aZ9-._~ /é"), "aZ9-._~%20%2F%C3%A9");
    }
}
