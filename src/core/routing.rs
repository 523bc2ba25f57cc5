//! Which conversation a message belongs to (its session key) and where replies go.
//! Keys match Qwen Code's, so `sessions.json` stays readable by people who know it.

use crate::config::SessionScope;
use crate::event::{ChatRef, InboundMessage, SessionKey};

pub fn session_key(scope: SessionScope, m: &InboundMessage) -> SessionKey {
    match scope {
        SessionScope::User => format!("{}:{}:{}", m.channel, m.sender_id, m.chat_id),
        SessionScope::Thread => format!("{}:{}", m.channel, m.thread_id.as_deref().unwrap_or(&m.chat_id)),
        SessionScope::Single => format!("{}:__single__", m.channel),
        // Thread ids are unique only inside their chat (Telegram numbers topics per group).
        SessionScope::ChatThread => match &m.thread_id {
            Some(thread) => format!("{}:{}:{thread}", m.channel, m.chat_id),
            None => format!("{}:{}", m.channel, m.chat_id),
        },
    }
}

/// Replies go to the chat, and the thread, the message came from.
pub fn reply_to(m: &InboundMessage) -> ChatRef {
    ChatRef { channel: m.channel.clone(), chat_id: m.chat_id.clone(), thread_id: m.thread_id.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_per_scope() {
        let m = InboundMessage {
            channel: "tg".into(),
            sender_id: "7".into(),
            chat_id: "-100".into(),
            thread_id: Some("9".into()),
            ..Default::default()
        };
        let no_thread = InboundMessage { thread_id: None, ..m.clone() };
        let cases = [
            (SessionScope::User, &m, "tg:7:-100"),
            (SessionScope::Thread, &m, "tg:9"),
            (SessionScope::Thread, &no_thread, "tg:-100"),
            (SessionScope::Single, &m, "tg:__single__"),
            (SessionScope::ChatThread, &m, "tg:-100:9"),
            (SessionScope::ChatThread, &no_thread, "tg:-100"),
        ];
        for (scope, message, expected) in cases {
            assert_eq!(session_key(scope, message), expected);
        }
    }
}
