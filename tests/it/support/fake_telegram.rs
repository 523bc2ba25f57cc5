//! A loopback Telegram Bot API: long-polled `getUpdates` with offsets and the 409 of a
//! second poller, `sendMessage` and friends recorded for assertions, and faults injected
//! per method on demand.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use serde_json::{Value, json};

use crate::support::http::{Reply, Request, Server};

pub const TOKEN: &str = "123456:TEST-token";
pub const BOT_ID: i64 = 4242;
pub const BOT_USERNAME: &str = "tether_test_bot";

/// A fault to answer the next call of a method with.
#[derive(Debug, Clone)]
pub enum Fault {
    Status(u16, Value),
    Malformed,
    Drop,
}

impl Fault {
    pub fn conflict() -> Fault {
        Fault::Status(
            409,
            json!({"ok": false, "error_code": 409, "description": "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"}),
        )
    }
    pub fn too_many(retry_after: u64) -> Fault {
        Fault::Status(
            429,
            json!({"ok": false, "error_code": 429, "description": format!("Too Many Requests: retry after {retry_after}"), "parameters": {"retry_after": retry_after}}),
        )
    }
    pub fn bad_gateway() -> Fault {
        Fault::Status(502, json!({"ok": false, "error_code": 502, "description": "Bad Gateway"}))
    }
}

/// A call the fake received (every method but getUpdates).
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub body: Value,
}

#[derive(Default)]
struct State {
    updates: VecDeque<Value>,
    next_update_id: i64,
    next_message_id: i64,
    faults: Vec<(String, Fault)>,
    /// Bumped by each getUpdates; a held poll that sees a newer one answers 409.
    poll_generation: u64,
    polls: u64,
}

pub struct FakeTelegram {
    server: Server,
    state: Arc<(Mutex<State>, Condvar)>,
    calls: Receiver<Call>,
    /// Every call, in order, for assertions after the fact.
    history: Arc<Mutex<Vec<Call>>>,
}

impl FakeTelegram {
    pub fn start() -> FakeTelegram {
        let state = Arc::new((
            Mutex::new(State { next_update_id: 1000, next_message_id: 1, ..Default::default() }),
            Condvar::new(),
        ));
        let (calls_tx, calls) = unbounded();
        let history = Arc::new(Mutex::new(Vec::new()));
        let handler_state = state.clone();
        let handler_history = history.clone();
        let server = Server::start(move |req| handle(&handler_state, &calls_tx, &handler_history, req));
        FakeTelegram { server, state, calls, history }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Queue a private text message from user `from` (chat id = user id).
    pub fn send_dm(&self, from: i64, text: &str) {
        self.push(json!({
            "message_id": 0, "date": 1_700_000_000,
            "chat": {"id": from, "type": "private", "first_name": "User"},
            "from": {"id": from, "is_bot": false, "first_name": "User", "username": format!("user{from}")},
            "text": text,
        }));
    }

    /// Queue a message from user `from` in supergroup `chat` with exactly the entities given
    /// (`[]` for none), for tests of what counts as a mention.
    pub fn send_group_with_entities(&self, chat: i64, from: i64, text: &str, entities: Value) {
        self.push(json!({
            "message_id": 0, "date": 1_700_000_000,
            "chat": {"id": chat, "type": "supergroup", "title": "Team"},
            "from": {"id": from, "is_bot": false, "first_name": "Member", "username": format!("user{from}")},
            "text": text,
            "entities": entities,
        }));
    }

    /// Queue a message from user `from` in supergroup `chat`, inside forum topic `topic` if
    /// given. A `@botname` in the text gets its mention entity, as Telegram would send it.
    pub fn send_group(&self, chat: i64, from: i64, text: &str, topic: Option<i64>) {
        let mut message = json!({
            "message_id": 0, "date": 1_700_000_000,
            "chat": {"id": chat, "type": "supergroup", "title": "Team", "is_forum": topic.is_some()},
            "from": {"id": from, "is_bot": false, "first_name": "User", "username": format!("user{from}")},
            "text": text,
        });
        let handle = format!("@{BOT_USERNAME}");
        if let Some(at) = text.find(&handle) {
            let offset = text[..at].encode_utf16().count();
            message["entities"] = json!([{"type": "mention", "offset": offset, "length": handle.len()}]);
        }
        if let Some(topic) = topic {
            message["message_thread_id"] = json!(topic);
            message["is_topic_message"] = json!(true);
        }
        self.push(message);
    }

    /// Queue a private message from `from` that replies to an earlier message of the bot
    /// whose text was `quoted`.
    pub fn send_reply_to_bot(&self, from: i64, text: &str, quoted: &str) {
        self.push(json!({
            "message_id": 0, "date": 1_700_000_000,
            "chat": {"id": from, "type": "private", "first_name": "User"},
            "from": {"id": from, "is_bot": false, "first_name": "User"},
            "text": text,
            "reply_to_message": {"message_id": 1, "date": 1_700_000_000, "chat": {"id": from, "type": "private"},
                "from": {"id": BOT_ID, "is_bot": true, "first_name": "Test", "username": BOT_USERNAME}, "text": quoted},
        }));
    }

    /// Every `sendMessage` body sent to `chat` so far, in order.
    pub fn messages_to(&self, chat: i64) -> Vec<Value> {
        self.calls_of("sendMessage").into_iter().map(|c| c.body).filter(|b| b["chat_id"] == json!(chat)).collect()
    }

    /// The texts sent to `chat` so far, in order.
    pub fn texts_to(&self, chat: i64) -> Vec<String> {
        self.messages_to(chat).iter().filter_map(|b| b["text"].as_str().map(str::to_string)).collect()
    }

    /// Wait until at least `n` texts went to `chat` (at most `within`); all of them so far.
    pub fn wait_texts_to(&self, chat: i64, n: usize, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        while self.texts_to(chat).len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.texts_to(chat)
    }

    /// Wait until "typing…" was shown in `chat` at least `n` times (at most `within`).
    pub fn wait_typing_in(&self, chat: i64, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let shown = self.calls_of("sendChatAction").iter().filter(|c| c.body["chat_id"] == json!(chat)).count();
            if shown >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Queue any message object (its update id and message id are filled in).
    pub fn push(&self, mut message: Value) {
        let (lock, cvar) = &*self.state;
        let mut state = lock.lock().unwrap();
        let id = state.next_update_id;
        state.next_update_id += 1;
        message["message_id"] = json!(id);
        state.updates.push_back(json!({"update_id": id, "message": message}));
        cvar.notify_all();
    }

    /// Answer the next call of `method` with `fault`.
    pub fn fail_next(&self, method: &str, fault: Fault) {
        self.state.0.lock().unwrap().faults.push((method.to_string(), fault));
    }

    /// Every call of `method` so far (faulted ones included).
    pub fn calls_of(&self, method: &str) -> Vec<Call> {
        self.history.lock().unwrap().iter().filter(|c| c.method == method).cloned().collect()
    }

    /// Faults set with [`FakeTelegram::fail_next`] not yet used.
    pub fn pending_faults(&self) -> usize {
        self.state.0.lock().unwrap().faults.len()
    }

    /// How many getUpdates calls arrived so far.
    pub fn polls(&self) -> u64 {
        self.state.0.lock().unwrap().polls
    }

    /// The next recorded call of `method`, waiting at most `within`.
    pub fn next_call(&self, method: &str, within: Duration) -> Option<Call> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.calls.recv_timeout(left) {
                Ok(call) if call.method == method => return Some(call),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// The text of the next message sent to `chat`, waiting at most `within`.
    pub fn next_text_to(&self, chat: i64, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let call = self.next_call("sendMessage", left)?;
            if call.body["chat_id"] == json!(chat) {
                return call.body["text"].as_str().map(str::to_string);
            }
        }
    }
}

fn handle(
    state: &Arc<(Mutex<State>, Condvar)>,
    calls: &Sender<Call>,
    history: &Mutex<Vec<Call>>,
    req: Request,
) -> Reply {
    let Some(rest) = req.path.strip_prefix("/bot") else { return not_found() };
    let Some((token, method)) = rest.split_once('/') else { return not_found() };
    if token != TOKEN {
        return Reply::Json(401, json!({"ok": false, "error_code": 401, "description": "Unauthorized"}).to_string());
    }
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    if method != "getUpdates" {
        history.lock().unwrap().push(Call { method: method.to_string(), body: body.clone() });
    }
    let fault = {
        let mut st = state.0.lock().unwrap();
        let pos = st.faults.iter().position(|(m, _)| m.eq_ignore_ascii_case(method));
        pos.map(|i| st.faults.remove(i).1)
    };
    match fault {
        Some(Fault::Status(code, body)) => return Reply::Json(code, body.to_string()),
        Some(Fault::Malformed) => return Reply::Json(200, "{\"ok\": tru".to_string()),
        Some(Fault::Drop) => return Reply::Drop,
        None => {}
    }
    match method {
        "getMe" => ok(json!({"id": BOT_ID, "is_bot": true, "first_name": "Test", "username": BOT_USERNAME})),
        "getUpdates" => get_updates(state, &body),
        "sendMessage" | "editMessageText" => {
            let id = {
                let mut st = state.0.lock().unwrap();
                st.next_message_id += 1;
                st.next_message_id
            };
            let _ = calls.send(Call { method: method.to_string(), body: body.clone() });
            ok(json!({"message_id": id, "date": 1_700_000_000, "chat": {"id": body["chat_id"]}, "text": body["text"]}))
        }
        _ => {
            let _ = calls.send(Call { method: method.to_string(), body });
            ok(json!(true))
        }
    }
}

fn get_updates(state: &Arc<(Mutex<State>, Condvar)>, body: &Value) -> Reply {
    let offset = body["offset"].as_i64().unwrap_or(0);
    let hold = Duration::from_secs(body["timeout"].as_u64().unwrap_or(0).min(30));
    let (lock, cvar) = &**state;
    let mut st = lock.lock().unwrap();
    st.polls += 1;
    st.poll_generation += 1;
    let generation = st.poll_generation;
    cvar.notify_all();
    // Confirm everything below the offset.
    st.updates.retain(|u| u["update_id"].as_i64().unwrap_or(0) >= offset);
    let deadline = Instant::now() + hold;
    loop {
        if st.poll_generation != generation {
            return Reply::Json(409, Fault::conflict_body());
        }
        if !st.updates.is_empty() {
            let batch: Vec<Value> = st.updates.iter().take(100).cloned().collect();
            return ok(Value::Array(batch));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return ok(json!([]));
        }
        st = cvar.wait_timeout(st, left).unwrap().0;
    }
}

impl Fault {
    fn conflict_body() -> String {
        match Fault::conflict() {
            Fault::Status(_, body) => body.to_string(),
            _ => String::new(),
        }
    }
}

fn ok(result: Value) -> Reply {
    Reply::Json(200, json!({"ok": true, "result": result}).to_string())
}

fn not_found() -> Reply {
    Reply::Json(404, json!({"ok": false, "error_code": 404, "description": "Not Found"}).to_string())
}
