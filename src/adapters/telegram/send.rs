//! Telegram's [`Courier`] for the shared outbox: replies rendered to Telegram HTML parts
//! (plain text when Telegram refuses the HTML), one Bot API call per outbox call, and
//! Telegram's limits. Queues, pacing, retries and journal settling are the outbox's.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::{Api, wire};
use crate::adapters::outbox::{Call, Courier, Failure, Piece};
use crate::adapters::pacing::PacingRules;
use crate::adapters::uploads::OutboundFiles;
use crate::event::ChatRef;
use crate::media::{self, FileKind};
use crate::render;

const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const TYPING_TIMEOUT: Duration = Duration::from_secs(10);
/// An upload of up to `maxMediaBytes` may take a while on a slow link.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// Telegram's limit for `sendPhoto`; a bigger picture goes as a document.
const PHOTO_LIMIT: u64 = 10 * 1024 * 1024;

/// Telegram's limits: about one message a second per chat on average with short bursts
/// tolerated (so the parts of one long answer go at once), 30 calls a second per bot. A
/// 429's `retry_after` is the real signal; the outbox holds the chat that long.
pub(super) const PACING: PacingRules = PacingRules {
    chat_burst: 4,
    chat_refill: Duration::from_secs(1),
    bot_limit: 30,
    bot_window: Duration::from_secs(1),
};

/// Delivers the outbox's calls to one bot.
pub(super) struct TelegramCourier {
    pub api: Api,
    /// What `[IMAGE: …]` / `[FILE: …]` may send: under the channel's cwd or media directory.
    pub files: OutboundFiles,
}

impl Courier for TelegramCourier {
    fn render(&self, markdown: &str) -> Vec<Piece> {
        render::telegram_chunks(markdown).into_iter().map(|text| Piece { text, formatted: true }).collect()
    }

    fn plain(&self, piece: &Piece) -> Option<Piece> {
        piece.formatted.then(|| Piece { text: render::strip_tags(&piece.text), formatted: false })
    }

    fn perform(&self, call: &Call) -> Result<Option<String>, Failure> {
        match call {
            Call::SendFile { chat, path, kind, caption } => {
                self.upload(chat, path, *kind, caption.as_deref()).map(wire::message_id)
            }
            Call::Typing(chat) => {
                self.api.call("sendChatAction", &wire::send_typing(chat), TYPING_TIMEOUT).map(|_| None)
            }
            Call::Ack { callback_id, text } => self
                .api
                .call("answerCallbackQuery", &wire::answer_callback(callback_id, text), TYPING_TIMEOUT)
                .map(|_| None),
            Call::Send { chat, piece, buttons } if buttons.is_empty() => {
                let body = wire::send_message_json(chat, &piece.text, piece.formatted);
                self.api.call_json("sendMessage", &body, CALL_TIMEOUT, wire::parse_sent)
            }
            Call::Send { chat, piece, buttons } => {
                let body = if piece.formatted {
                    wire::send_html(chat, &piece.text)
                } else {
                    wire::send_message(chat, &piece.text)
                };
                self.api.call_with("sendMessage", &wire::with_buttons(body, buttons), CALL_TIMEOUT, wire::parse_sent)
            }
            Call::Edit { chat, message_id: id, piece } => {
                let mut body = wire::edit_html(chat, id, &piece.text);
                if !piece.formatted
                    && let Some(map) = body.as_object_mut()
                {
                    map.remove("parse_mode");
                }
                edited(self.api.call("editMessageText", &body, CALL_TIMEOUT)).map(wire::message_id)
            }
        }
    }

    fn pacing(&self) -> PacingRules {
        PACING
    }

    fn files(&self) -> Option<&OutboundFiles> {
        Some(&self.files)
    }
}

impl TelegramCourier {
    /// `sendPhoto` (a real image within Telegram's photo limit) or `sendDocument`, as a
    /// multipart upload. The file is checked again as it is read.
    fn upload(&self, chat: &ChatRef, path: &Path, kind: FileKind, caption: Option<&str>) -> Result<Value, Failure> {
        let bytes = self.files.read(path).map_err(Failure::Rejected)?;
        let photo = kind == FileKind::Image && bytes.len() as u64 <= PHOTO_LIMIT;
        let mime = media::sniff_image(&bytes).filter(|_| photo);
        let kind = if mime.is_some() { FileKind::Image } else { FileKind::Document };
        let (method, field) = wire::upload_method(kind);
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let name = media::safe_file_name(&name, "file");
        let fields = wire::upload_fields(chat, caption);
        let texts: Vec<&[u8]> =
            std::iter::once(bytes.as_slice()).chain(fields.iter().map(|(_, v)| v.as_bytes())).collect();
        let boundary = wire::pick_boundary(getrandom::u64().unwrap_or(0x7e7e_7e7e), &texts);
        let body =
            wire::multipart(&boundary, &fields, (field, &name, mime.unwrap_or("application/octet-stream"), &bytes));
        let content_type = format!("multipart/form-data; boundary={boundary}");
        self.api.upload(method, &content_type, &body, UPLOAD_TIMEOUT)
    }
}

/// The id of the message a `sendMessage` or `editMessageText` call answered with.
/// Editing a message to the text it already has is no failure.
fn edited(result: Result<Value, Failure>) -> Result<Value, Failure> {
    match result {
        Err(Failure::Rejected(d)) if d.contains("message is not modified") => Ok(Value::Null),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use serde_json::json;

    use super::*;
    use crate::adapters::outbox::{Schedule, Verdict};
    use crate::event::{ChatRef, Outbound};
    use crate::net::http::HttpClient;

    fn courier() -> TelegramCourier {
        // Never called: these tests only render and schedule.
        TelegramCourier {
            api: Api {
                http: HttpClient::default(),
                base: "http://127.0.0.1:9/botTOKEN".into(),
                file_base: "http://127.0.0.1:9/file/botTOKEN".into(),
                channel: "tg".into(),
            },
            files: OutboundFiles { roots: Vec::new(), max_bytes: 1 },
        }
    }

    fn chat(id: &str) -> ChatRef {
        ChatRef { channel: "tg".into(), chat_id: id.into(), thread_id: None }
    }

    /// Markdown that renders to exactly three parts.
    fn three_parts() -> String {
        ["first", "second", "third"].map(|w| format!("**{w}** {}", "x".repeat(3500))).join("\n\n")
    }

    #[test]
    fn a_reply_renders_to_html_parts_within_the_limit() {
        let pieces = courier().render(&three_parts());
        assert_eq!(pieces.len(), 3);
        for (piece, word) in pieces.iter().zip(["first", "second", "third"]) {
            assert!(piece.formatted);
            assert!(piece.text.starts_with(&format!("<b>{word}</b>")), "{:.20}", piece.text);
            assert!(piece.text.encode_utf16().count() <= render::TELEGRAM_LIMIT);
        }
        assert!(courier().render("  \n ").is_empty());
    }

    #[test]
    fn refused_html_goes_again_as_plain_text_once() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Arc::new(courier()));
        s.push(Outbound::Text { chat: chat("1"), text: "**a** < b & `c`".into(), answers: vec![] }, t0);
        let job = s.next_job(t0).unwrap();
        let Call::Send { piece, .. } = &job.call else { panic!("{job:?}") };
        assert_eq!(piece, &Piece { text: "<b>a</b> &lt; b &amp; <code>c</code>".into(), formatted: true });
        let refused = || Failure::BadMarkup("HTTP 400: Bad Request: can't parse entities".into());
        s.finish(job, Err(refused()), t0);
        let job = s.next_job(t0).unwrap();
        let Call::Send { piece, .. } = &job.call else { panic!("{job:?}") };
        assert_eq!(piece, &Piece { text: "a < b & c".into(), formatted: false });
        let verdict = s.finish(job, Err(refused()), t0);
        assert!(matches!(verdict, Verdict::Dropped { index: 1, of: 1, .. }), "{verdict:?}");
        assert!(s.is_empty(t0));
    }

    #[test]
    fn the_parts_of_a_long_answer_are_not_held_apart() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Arc::new(courier()));
        s.push(Outbound::Text { chat: chat("1"), text: three_parts(), answers: vec![] }, t0);
        for n in 0..3 {
            let now = t0 + Duration::from_millis(n * 50);
            let job = s.next_job(now).unwrap_or_else(|| panic!("part {} held back", n + 1));
            s.finish(job, Ok(Some("1".into())), now);
        }
        assert!(s.is_empty(t0));
    }

    #[test]
    fn answers_are_read_for_message_ids_and_unmodified_edits() {
        assert_eq!(wire::message_id(json!({"message_id": 77, "chat": {"id": 1}})), Some("77".to_string()));
        assert_eq!(wire::message_id(json!(true)), None);
        let not_modified = Failure::Rejected("HTTP 400: Bad Request: message is not modified".into());
        assert_eq!(edited(Err(not_modified)), Ok(Value::Null));
        let other = Failure::Rejected("HTTP 400: Bad Request: message to edit not found".into());
        assert_eq!(edited(Err(other.clone())), Err(other));
    }
}
