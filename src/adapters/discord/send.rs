//! Discord's [`Courier`] for the shared outbox: replies cut into messages of at most 2000
//! characters (Discord renders the agent's Markdown as is), one REST call per outbox call,
//! and Discord's limits. The REST client's per-route buckets refuse a call that would be
//! over its limit before sending it, so the outbox waits instead of earning a 429. Queues,
//! retries and journal settling are the outbox's.

use std::sync::Arc;
use std::time::Duration;

use super::inbound::SentIds;
use super::rest::Rest;
use super::wire::{self, RestFailure};
use crate::adapters::outbox::{Call, Courier, Failure, Piece};
use crate::adapters::pacing::PacingRules;
use crate::event::ChatRef;
use crate::render::{Units, chunk_markdown};

/// Discord's limits: 5 messages per 5 s per channel, 50 requests a second per bot. The
/// buckets in the answers' headers are the real signal; these keep a burst polite.
const PACING: PacingRules = PacingRules {
    chat_burst: 5,
    chat_refill: Duration::from_secs(1),
    bot_limit: 50,
    bot_window: Duration::from_secs(1),
};

/// Delivers the outbox's calls to one bot.
pub(super) struct DiscordCourier {
    pub rest: Arc<Rest>,
    /// Ids of what we sent, so a reply to one addresses the bot.
    pub sent: Arc<SentIds>,
}

impl Courier for DiscordCourier {
    fn render(&self, markdown: &str) -> Vec<Piece> {
        // UTF-16 units are never fewer than characters: a part that fits by them fits Discord.
        chunk_markdown(markdown, wire::MESSAGE_LIMIT, Units::Utf16)
            .into_iter()
            .filter(|text| !text.trim().is_empty())
            .map(|text| Piece { text, formatted: true })
            .collect()
    }

    fn plain(&self, _piece: &Piece) -> Option<Piece> {
        // Discord takes any text: there is no markup it refuses.
        None
    }

    fn perform(&self, call: &Call) -> Result<Option<String>, Failure> {
        match call {
            // Not queued: this courier has no `files()`, so markers stay in the text.
            Call::SendFile { .. } => Err(Failure::Rejected("Discord file uploads are not implemented yet".into())),
            Call::Typing(chat) => self.rest.typing(target(chat)).map(|()| None).map_err(failure),
            Call::Ack { callback_id, text } => {
                let Some((id, token)) = wire::split_callback_id(callback_id) else {
                    return Err(Failure::Rejected(format!("button press id {callback_id:?} is not Discord's")));
                };
                self.rest
                    .interaction_callback(id, token, &wire::interaction_callback(text))
                    .map(|()| None)
                    .map_err(failure)
            }
            Call::Send { chat, piece, buttons } => {
                let body = wire::create_message(&piece.text, None, buttons);
                let id = self.rest.create_message(target(chat), &body).map_err(failure)?;
                self.sent.remember(&id);
                Ok(Some(id))
            }
            Call::Edit { chat, message_id, piece } => {
                let text: String = piece.text.chars().take(wire::MESSAGE_LIMIT).collect();
                self.rest.edit_message(target(chat), message_id, &wire::edit_message(&text)).map_err(failure)?;
                Ok(Some(message_id.clone()))
            }
        }
    }

    fn pacing(&self) -> PacingRules {
        PACING
    }
}

/// The Discord channel a reply goes to: the thread when there is one (a thread is a channel).
fn target(chat: &ChatRef) -> &str {
    chat.thread_id.as_deref().unwrap_or(&chat.chat_id)
}

fn failure(e: RestFailure) -> Failure {
    match e {
        RestFailure::RateLimited(d) => Failure::RateLimited(d),
        RestFailure::GlobalRateLimited(d) => Failure::BotRateLimited(d),
        RestFailure::Unauthorized(d) => Failure::Unauthorized(d),
        RestFailure::Transient(d) => Failure::Transient(d),
        RestFailure::Blocked(d) => Failure::Blocked(d),
        RestFailure::Rejected(d) => Failure::Rejected(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn courier() -> DiscordCourier {
        // Never called: these tests only render.
        DiscordCourier { rest: Arc::new(Rest::new("http://127.0.0.1:9", "T")), sent: Arc::new(SentIds::default()) }
    }

    #[test]
    fn replies_render_to_markdown_parts_within_2000_characters() {
        let text = format!("**bold** start\n\n```rust\n{}\n```\n\nend", "let x = 1;\n".repeat(400));
        let pieces = courier().render(&text);
        assert!(pieces.len() >= 3, "{}", pieces.len());
        for piece in &pieces {
            assert!(piece.formatted);
            assert!(piece.text.chars().count() <= 2000 && piece.text.encode_utf16().count() <= 2000);
            // A code block cut in two is closed and reopened.
            assert_eq!(piece.text.matches("```").count() % 2, 0, "{}", piece.text);
        }
        assert!(pieces[0].text.starts_with("**bold**"));
        assert!(courier().render(" \n ").is_empty());
        assert_eq!(courier().plain(&pieces[0]), None);
    }

    #[test]
    fn failures_map_to_the_outbox_classes() {
        let d = Duration::from_millis(300);
        assert_eq!(failure(RestFailure::RateLimited(d)), Failure::RateLimited(d));
        assert_eq!(failure(RestFailure::GlobalRateLimited(d)), Failure::BotRateLimited(d));
        assert_eq!(failure(RestFailure::Blocked("x".into())), Failure::Blocked("x".into()));
        let chat = ChatRef { channel: "dc".into(), chat_id: "1".into(), thread_id: Some("2".into()) };
        assert_eq!(target(&chat), "2");
    }
}
