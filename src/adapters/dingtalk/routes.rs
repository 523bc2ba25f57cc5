//! How to answer each DingTalk conversation: the newest session webhook and what the robot
//! OpenAPI needs once it expired, shared by the stream thread (which learns them from each
//! message) and the courier (which answers). Bounded (the least recently heard chats go
//! first) and kept in `<home>/dingtalk-<channel>-chats.json`, so that a message replayed
//! from the journal after a restart can still be answered.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use serde_json::{Value, json};

use super::wire::Route;
use crate::vec_map::VecMap;

/// Conversations remembered; beyond this the one heard from longest ago is forgotten.
pub const CAPACITY: usize = 512;

/// The routes, by conversation id, with when each was last heard from (a sequence number).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouteBook {
    routes: VecMap<String, (u64, Route)>,
    next: u64,
}

impl RouteBook {
    /// Take a conversation's newest route; true when anything changed.
    pub fn update(&mut self, route: Route) -> bool {
        let seq = self.next;
        self.next += 1;
        let changed = self.routes.get(&route.conversation_id).is_none_or(|(_, old)| *old != route);
        self.routes.insert(route.conversation_id.clone(), (seq, route));
        while self.routes.len() > CAPACITY {
            let oldest = self.routes.iter().min_by_key(|(_, (seq, _))| *seq).map(|(id, _)| id.clone());
            match oldest {
                Some(id) => self.routes.remove(&id),
                None => break,
            };
        }
        changed
    }

    pub fn get(&self, conversation_id: &str) -> Option<&Route> {
        self.routes.get(conversation_id).map(|(_, r)| r)
    }

    /// DingTalk said the conversation's webhook expired: never try it again.
    pub fn expire_webhook(&mut self, conversation_id: &str) {
        if let Some((_, route)) = self.routes.get_mut(conversation_id) {
            route.webhook = None;
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// The book as JSON, oldest first.
    pub fn to_json(&self) -> Value {
        let mut all: Vec<&(u64, Route)> = self.routes.values().collect();
        all.sort_by_key(|(seq, _)| *seq);
        Value::Array(
            all.into_iter()
                .map(|(_, r)| {
                    json!({
                        "conversationId": r.conversation_id,
                        "isGroup": r.is_group,
                        "webhook": r.webhook,
                        "webhookExpiresMs": r.webhook_expires_ms,
                        "staffId": r.staff_id,
                        "robotCode": r.robot_code,
                        "lastMessageId": r.last_message_id,
                    })
                })
                .collect(),
        )
    }

    /// Read back what [`RouteBook::to_json`] wrote; entries that do not read are skipped.
    pub fn from_json(value: &Value) -> RouteBook {
        let mut book = RouteBook::default();
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        for v in value.as_array().map(Vec::as_slice).unwrap_or_default() {
            let Some(conversation_id) = text(v, "conversationId") else { continue };
            book.update(Route {
                webhook: text(v, "webhook"),
                webhook_expires_ms: v.get("webhookExpiresMs").and_then(Value::as_u64).unwrap_or(0),
                is_group: v.get("isGroup").and_then(Value::as_bool).unwrap_or(false),
                conversation_id,
                staff_id: text(v, "staffId"),
                robot_code: text(v, "robotCode"),
                last_message_id: text(v, "lastMessageId"),
            });
        }
        book
    }
}

/// The shared book and its file.
#[derive(Debug)]
pub struct Routes {
    book: Mutex<RouteBook>,
    path: PathBuf,
}

impl Routes {
    /// The routes saved at `path` (none when it is missing or unreadable).
    pub fn load(path: PathBuf) -> Routes {
        let book = match crate::store::read_json::<Value>(&path) {
            Ok(Some(value)) => RouteBook::from_json(&value),
            Ok(None) => RouteBook::default(),
            Err(e) => {
                log::warn!("{e}; starting without known DingTalk conversations");
                RouteBook::default()
            }
        };
        Routes { book: Mutex::new(book), path }
    }

    fn with<T>(&self, f: impl FnOnce(&mut RouteBook) -> T) -> T {
        f(&mut self.book.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Learn a conversation's newest route, and save the book when it changed.
    pub fn update(&self, route: Route) {
        let saved = self.with(|b| b.update(route).then(|| b.to_json()));
        if let Some(json) = saved
            && let Err(e) = crate::store::write_json_atomic(&self.path, &json)
        {
            // Only a restart needs the file; answering now works from memory.
            log::warn!("{e}");
        }
    }

    pub fn get(&self, conversation_id: &str) -> Option<Route> {
        self.with(|b| b.get(conversation_id).cloned())
    }

    pub fn expire_webhook(&self, conversation_id: &str) {
        self.with(|b| b.expire_webhook(conversation_id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(id: &str, webhook: &str) -> Route {
        Route {
            webhook: Some(webhook.into()),
            webhook_expires_ms: 5,
            is_group: id.starts_with('g'),
            conversation_id: id.into(),
            staff_id: Some("s".into()),
            robot_code: None,
            last_message_id: Some("m".into()),
        }
    }

    #[test]
    fn the_newest_route_wins_and_the_book_is_bounded() {
        let mut b = RouteBook::default();
        assert!(b.update(route("c1", "w1")));
        assert!(!b.update(route("c1", "w1")), "nothing new");
        assert!(b.update(route("c1", "w2")));
        assert_eq!(b.get("c1").unwrap().webhook.as_deref(), Some("w2"));
        b.expire_webhook("c1");
        assert_eq!(b.get("c1").unwrap().webhook, None);
        for n in 0..CAPACITY + 10 {
            b.update(route(&format!("x{n}"), "w"));
        }
        assert_eq!(b.len(), CAPACITY);
        assert!(b.get("c1").is_none(), "the chat heard from longest ago went first");
        assert!(b.get(&format!("x{}", CAPACITY + 9)).is_some());
    }

    #[test]
    fn the_book_survives_a_round_trip() {
        let mut b = RouteBook::default();
        b.update(route("c1", "w1"));
        b.update(route("g2", "w2"));
        let back = RouteBook::from_json(&b.to_json());
        assert_eq!(back.get("c1"), b.get("c1"));
        assert_eq!(back.get("g2"), b.get("g2"));
        assert!(back.get("g2").unwrap().is_group);
        assert_eq!(RouteBook::from_json(&json!({"not": "a list"})).len(), 0);
        assert_eq!(RouteBook::from_json(&json!([{"webhook": "no id"}, 3])).len(), 0);
    }
}
