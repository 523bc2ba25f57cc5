//! DingTalk's [`Courier`] for the shared outbox: replies as markdown messages with a title,
//! in parts of about 3800 UTF-16 units (code fences closed and reopened by the shared
//! chunker), sent to the conversation's session webhook while it is valid, and through the
//! robot OpenAPI once it expired (errcode 300001 or its expiry time) or when there is none,
//! so an answer that took longer than the webhook lived still arrives. DingTalk has no
//! typing indicator: a 👀 reaction on the person's message stands in while the agent works,
//! taken back when the answer's first part is delivered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::api::App;
use super::routes::Routes;
use super::wire::{self, Route, WebhookError};
use crate::adapters::outbox::{Call, Courier, Failure, Piece};
use crate::adapters::pacing::PacingRules;
use crate::event::ChatRef;
use crate::health::wall_ms;
use crate::render::{self, Units};

const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A reaction is a nicety: it may not hold up the answer long.
const REACTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Chats with a reaction shown; more means answers went missing: forget them all.
const REACTIONS_MAX: usize = 256;
/// One message: Qwen Code's 3800 UTF-16 units, well under the 20,000 DingTalk takes and the
/// 15,000 bytes of a group send's `msgParam`.
pub const MESSAGE_LIMIT: usize = 3800;

/// DingTalk limits a robot to about 20 messages a minute per conversation: the parts of one
/// answer go at once, then one every 3 s.
const PACING: PacingRules = PacingRules {
    chat_burst: 5,
    chat_refill: Duration::from_secs(3),
    bot_limit: 20,
    bot_window: Duration::from_secs(1),
};

/// Delivers the outbox's calls for one app.
pub(super) struct DingTalkCourier {
    pub app: Arc<App>,
    pub routes: Arc<Routes>,
    pub channel: String,
    pub reactions: Mutex<Reactions>,
}

/// The 👀 reactions shown, by chat: the message each is on.
#[derive(Debug, Default)]
pub(super) struct Reactions {
    shown: HashMap<String, String>,
    /// DingTalk refused a reaction (the app may lack the permission): no more tries.
    off: bool,
}

impl Courier for DingTalkCourier {
    fn render(&self, markdown: &str) -> Vec<Piece> {
        let title = wire::title_of(markdown);
        let chunks = render::chunk_markdown(markdown, MESSAGE_LIMIT, Units::Utf16);
        chunks
            .into_iter()
            .filter(|c| !c.trim().is_empty())
            .enumerate()
            .map(|(i, text)| {
                let title = if i == 0 { title.clone() } else { format!("{title} (cont.)") };
                Piece { text: wire::titled(&title, &text), formatted: true }
            })
            .collect()
    }

    fn plain(&self, _: &Piece) -> Option<Piece> {
        None // DingTalk does not refuse markdown.
    }

    fn perform(&self, call: &Call) -> Result<Option<String>, Failure> {
        match call {
            // Not queued: this courier has no `files()`, so markers stay in the text.
            Call::SendFile { .. } => Err(Failure::Rejected("DingTalk file uploads go through Call::Send".into())),
            Call::Typing(chat) => self.react(chat).map(|()| None),
            // No buttons to answer.
            Call::Ack { .. } => Ok(None),
            // No edits: the new text goes as a new message.
            Call::Send { chat, piece, .. } | Call::Edit { chat, piece, .. } => {
                self.deliver(chat, piece)?;
                self.recall(chat);
                Ok(None)
            }
        }
    }

    fn pacing(&self) -> PacingRules {
        PACING
    }
}

impl DingTalkCourier {
    fn deliver(&self, chat: &ChatRef, piece: &Piece) -> Result<(), Failure> {
        let (title, text) = wire::untitled(&piece.text);
        let route = self.routes.get(&chat.chat_id);
        if let Some(url) = route.as_ref().and_then(|r| r.live_webhook(wall_ms())) {
            let answer = match self.app.http.post_json(url, &wire::webhook_markdown(&title, text), CALL_TIMEOUT) {
                Ok((status, body)) => wire::parse_webhook_reply(status, &body),
                Err(e) => Err(WebhookError::Failed(Failure::Transient(e.to_string()))),
            };
            match answer {
                Ok(()) => return Ok(()),
                Err(WebhookError::Expired) => {
                    log::info!(target: self.channel.as_str(), "the session webhook of chat {} expired; answering through the robot API", chat.chat_id);
                    self.routes.expire_webhook(&chat.chat_id);
                }
                Err(WebhookError::Failed(failure)) => return Err(failure),
            }
        }
        let Some(route) = route else {
            return Err(Failure::Rejected(format!(
                "no way to answer chat {}: DingTalk sends it with each message, and none came from this chat",
                chat.chat_id
            )));
        };
        self.robot_send(&route, &title, text)
    }

    fn reactions(&self) -> std::sync::MutexGuard<'_, Reactions> {
        self.reactions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Show 👀 on the newest message of the chat, once per message.
    fn react(&self, chat: &ChatRef) -> Result<(), Failure> {
        let Some(route) = self.routes.get(&chat.chat_id) else { return Ok(()) };
        let Some(message_id) = route.last_message_id.clone() else { return Ok(()) };
        {
            let reactions = self.reactions();
            if reactions.off || reactions.shown.get(&chat.chat_id) == Some(&message_id) {
                return Ok(());
            }
        }
        let robot = route.robot_code.as_deref().unwrap_or(&self.app.client_id);
        let body = wire::working_reaction(robot, &route.conversation_id, &message_id);
        match self.app.call_within("/v1.0/robot/emotion/reply", &body, REACTION_TIMEOUT) {
            Ok(_) => {
                let mut reactions = self.reactions();
                if reactions.shown.len() >= REACTIONS_MAX {
                    reactions.shown.clear();
                }
                reactions.shown.insert(chat.chat_id.clone(), message_id);
                Ok(())
            }
            Err(failure @ (Failure::Rejected(_) | Failure::Blocked(_))) => {
                log::info!(target: self.channel.as_str(), "DingTalk refused the 👀 reaction that shows tether is working ({failure}); not trying again");
                self.reactions().off = true;
                Ok(())
            }
            Err(failure) => Err(failure),
        }
    }

    /// Take back the chat's 👀 (best effort: the answer is what matters).
    fn recall(&self, chat: &ChatRef) {
        let Some(message_id) = self.reactions().shown.remove(&chat.chat_id) else { return };
        let Some(route) = self.routes.get(&chat.chat_id) else { return };
        let robot = route.robot_code.as_deref().unwrap_or(&self.app.client_id);
        let body = wire::working_reaction(robot, &route.conversation_id, &message_id);
        if let Err(failure) = self.app.call_within("/v1.0/robot/emotion/recall", &body, REACTION_TIMEOUT) {
            log::debug!(target: self.channel.as_str(), "taking back the 👀 on message {message_id} failed: {failure}");
        }
    }

    /// Through the robot OpenAPI: a group send, or a one-to-one send to the person.
    fn robot_send(&self, route: &Route, title: &str, text: &str) -> Result<(), Failure> {
        let robot = route.robot_code.as_deref().unwrap_or(&self.app.client_id);
        let (path, body) = if route.is_group {
            ("/v1.0/robot/groupMessages/send", wire::group_send(robot, &route.conversation_id, title, text))
        } else {
            let Some(staff_id) = &route.staff_id else {
                return Err(Failure::Rejected(format!(
                    "the session webhook of chat {} expired and its person has no staff id (not in your \
                     organisation), so the robot API cannot reach them; they need to write again",
                    route.conversation_id
                )));
            };
            ("/v1.0/robot/oToMessages/batchSend", wire::direct_send(robot, staff_id, title, text))
        };
        self.app.call(path, &body).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn courier() -> DingTalkCourier {
        let app = App::new("http://127.0.0.1:9".into(), "http://127.0.0.1:9".into(), "k".into(), "s".into());
        let routes = Routes::load(std::env::temp_dir().join("tether-no-such-dir/none.json"));
        DingTalkCourier {
            app: Arc::new(app),
            routes: Arc::new(routes),
            channel: "d".into(),
            reactions: Mutex::default(),
        }
    }

    #[test]
    fn a_long_answer_becomes_titled_parts_within_the_limit() {
        let text = format!("## Result\n\n{}\n\n```\n{}\n```\n", "word ".repeat(900), "code line\n".repeat(400));
        let pieces = courier().render(&text);
        assert!(pieces.len() >= 2, "{}", pieces.len());
        let mut joined = String::new();
        for (i, piece) in pieces.iter().enumerate() {
            let (title, body) = wire::untitled(&piece.text);
            assert_eq!(title, if i == 0 { "Result".to_string() } else { "Result (cont.)".to_string() });
            assert!(body.encode_utf16().count() <= MESSAGE_LIMIT);
            assert_eq!(body.matches("```").count() % 2, 0, "fences balanced in part {i}");
            joined.push_str(body);
        }
        assert!(joined.contains("word word") && joined.contains("code line"));
        assert!(courier().render(" \n ").is_empty());
    }

    #[test]
    fn a_chat_never_heard_from_is_refused_without_a_call() {
        let chat = ChatRef { channel: "d".into(), chat_id: "cidX".into(), thread_id: None };
        let piece = Piece { text: wire::titled("T", "x"), formatted: true };
        let got = courier().perform(&Call::Send { chat, piece, buttons: vec![] });
        assert!(matches!(&got, Err(Failure::Rejected(d)) if d.contains("cidX")), "{got:?}");
    }
}
