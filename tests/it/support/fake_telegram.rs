//! A loopback Telegram Bot API: long-polled `getUpdates` with offsets and the 409 of a
//! second poller, `sendMessage` and friends recorded for assertions, and faults injected
//! per method (and chat) on demand. Honest about what Telegram refuses: `sendMessage` and
//! `editMessageText` check the text as Telegram parses it (`parse_mode: "HTML"`: only its
//! tags, balanced, only its entities; at most 4096 UTF-16 units of visible text; not empty)
//! and answer `400 Bad Request: ...` like Telegram; an edit that changes nothing is
//! `message is not modified`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use serde_json::{Value, json};

use crate::support::http::{Reply, Request, Server};

pub const TOKEN: &str = "123456:TEST-token";
/// The key under which an update queued as raw JSON text is kept.
const RAW: &str = "__raw_json";
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
    /// What Telegram answers HTML it cannot parse.
    pub fn bad_entities() -> Fault {
        bad_request("can't parse entities: Unsupported start tag \"x\" at byte offset 0")
    }
    pub fn blocked() -> Fault {
        Fault::Status(
            403,
            json!({"ok": false, "error_code": 403, "description": "Forbidden: bot was blocked by the user"}),
        )
    }
}

fn bad_request(what: &str) -> Fault {
    Fault::Status(400, json!({"ok": false, "error_code": 400, "description": format!("Bad Request: {what}")}))
}

/// A call the fake received (every method but getUpdates).
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub body: Value,
    pub at: Instant,
}

/// A message the fake accepted (`sendMessage`), in the order accepted.
#[derive(Debug, Clone)]
pub struct Sent {
    pub chat_id: Value,
    pub message_id: i64,
    /// The text as sent (HTML when `parse_mode` is "HTML").
    pub text: String,
    pub parse_mode: Option<String>,
    /// What the user sees: tags removed, entities decoded.
    pub visible: String,
    pub at: Instant,
}

/// A fault for the next call of a method, optionally only for one chat.
struct PlannedFault {
    method: String,
    chat: Option<Value>,
    fault: Fault,
}

#[derive(Default)]
struct State {
    updates: VecDeque<Value>,
    next_update_id: i64,
    next_message_id: i64,
    faults: Vec<PlannedFault>,
    /// Faults answered to every call of a method until cleared.
    sticky: Vec<(String, Fault)>,
    /// Bumped to make held polls return at once (empty).
    wake: u64,
    /// Accepted messages, in order.
    sent: Vec<Sent>,
    /// The current text and parse mode of each message, by (chat id, message id), for edits.
    messages: HashMap<(String, i64), (String, Option<String>)>,
    /// Bumped by each getUpdates; a held poll that sees a newer one answers 409.
    poll_generation: u64,
    polls: u64,
    /// Files people "sent", by file id, for getFile and the download path.
    files: HashMap<String, Vec<u8>>,
    /// Files the bot uploaded (`sendPhoto`, `sendDocument`), in order.
    uploads: Vec<Upload>,
    /// File ids whose download stalls this long before answering.
    stalled: HashMap<String, Duration>,
    /// When the first getUpdates arrived (the benchmark's exec → first poll).
    first_poll: Option<Instant>,
}

/// A file the bot uploaded, as the multipart body carried it.
#[derive(Debug, Clone)]
pub struct Upload {
    pub method: String,
    /// The text fields (chat_id, caption, …).
    pub fields: HashMap<String, String>,
    /// The file field's name ("photo", "document"), file name and content type.
    pub field: String,
    pub file_name: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
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

    /// Queue a private text message from user `from` (chat id = user id), sent now.
    pub fn send_dm(&self, from: i64, text: &str) {
        self.send_dm_dated(from, text, unix_now());
    }

    /// Queue a private text message sent at `date` (unix seconds).
    pub fn send_dm_dated(&self, from: i64, text: &str, date: u64) {
        self.push(json!({
            "message_id": 0, "date": date,
            "chat": {"id": from, "type": "private", "first_name": "User"},
            "from": {"id": from, "is_bot": false, "first_name": "User", "username": format!("user{from}")},
            "text": text,
        }));
    }

    /// Queue a message from user `from` in supergroup `chat` with exactly the entities given
    /// (`[]` for none), for tests of what counts as a mention.
    pub fn send_group_with_entities(&self, chat: i64, from: i64, text: &str, entities: Value) {
        self.push(json!({
            "message_id": 0, "date": unix_now(),
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
            "message_id": 0, "date": unix_now(),
            "chat": {"id": chat, "type": "supergroup", "title": "Team", "is_forum": topic.is_some()},
            "from": {"id": from, "is_bot": false, "first_name": "User", "username": format!("user{from}")},
            "text": text,
        });
        if let Some(entities) = mention_entities(text) {
            message["entities"] = entities;
        }
        if let Some(topic) = topic {
            message["message_thread_id"] = json!(topic);
            message["is_topic_message"] = json!(true);
        }
        self.push(message);
    }

    /// Queue a photo with `caption` from user `from` in supergroup `chat`. A `@botname` in
    /// the caption gets its `caption_entities` mention, as Telegram would send it.
    pub fn send_group_photo(&self, chat: i64, from: i64, caption: &str) {
        let mut message = json!({
            "message_id": 0, "date": unix_now(),
            "chat": {"id": chat, "type": "supergroup", "title": "Team"},
            "from": {"id": from, "is_bot": false, "first_name": "User", "username": format!("user{from}")},
            "photo": [{"file_id": "p1", "file_unique_id": "u1", "width": 90, "height": 90}],
            "caption": caption,
        });
        if let Some(entities) = mention_entities(caption) {
            message["caption_entities"] = entities;
        }
        self.push(message);
    }

    /// Make a file downloadable by `file_id` (getFile, then `/file/bot<token>/files/<id>`).
    pub fn add_file(&self, file_id: &str, bytes: &[u8]) {
        self.state.0.lock().unwrap().files.insert(file_id.to_string(), bytes.to_vec());
    }

    /// Queue a private message from `from` carrying `media` (e.g. `{"photo": [...]}`,
    /// `{"document": {...}, "caption": "…"}`), sent now.
    pub fn send_dm_media(&self, from: i64, media: Value) {
        let mut message = json!({
            "message_id": 0, "date": unix_now(),
            "chat": {"id": from, "type": "private", "first_name": "User"},
            "from": {"id": from, "is_bot": false, "first_name": "User", "username": format!("user{from}")},
        });
        message.as_object_mut().unwrap().extend(media.as_object().unwrap().clone());
        self.push(message);
    }

    /// Make the download of `file_id` hang for `delay` before it answers.
    pub fn stall_file(&self, file_id: &str, delay: Duration) {
        self.state.0.lock().unwrap().stalled.insert(file_id.to_string(), delay);
    }

    /// The files the bot uploaded so far.
    pub fn uploads(&self) -> Vec<Upload> {
        self.state.0.lock().unwrap().uploads.clone()
    }

    /// Wait until at least `n` files were uploaded.
    pub fn wait_uploads(&self, n: usize, within: Duration) -> Vec<Upload> {
        let deadline = Instant::now() + within;
        loop {
            let uploads = self.uploads();
            if uploads.len() >= n || Instant::now() > deadline {
                return uploads;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Queue a private message from `from` that replies to an earlier message of the bot
    /// whose text was `quoted`.
    pub fn send_reply_to_bot(&self, from: i64, text: &str, quoted: &str) {
        self.push(json!({
            "message_id": 0, "date": unix_now(),
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

    /// Queue a private message from `from` whose JSON text field is `text_json`, written into
    /// the reply exactly as given (e.g. `"\\ud83d"`, a lone surrogate: valid JSON that no
    /// Rust string can hold).
    pub fn push_raw_message(&self, from: i64, text_json: &str) {
        let (lock, cvar) = &*self.state;
        let mut state = lock.lock().unwrap();
        let id = state.next_update_id;
        state.next_update_id += 1;
        let raw = format!(
            r#"{{"update_id":{id},"message":{{"message_id":{id},"date":{},"chat":{{"id":{from},"type":"private"}},"from":{{"id":{from},"is_bot":false,"first_name":"User"}},"text":"{text_json}"}}}}"#,
            unix_now()
        );
        state.updates.push_back(json!({"update_id": id, RAW: raw}));
        cvar.notify_all();
    }

    /// Queue a press of an inline button with `data` by user `from` under message
    /// `message_id` of their DM. Returns the callback id.
    pub fn press_button(&self, from: i64, message_id: i64, data: &str) -> String {
        let (lock, cvar) = &*self.state;
        let mut state = lock.lock().unwrap();
        let id = state.next_update_id;
        state.next_update_id += 1;
        let callback_id = format!("cb{id}");
        state.updates.push_back(json!({"update_id": id, "callback_query": {
            "id": callback_id, "from": {"id": from, "is_bot": false, "first_name": "User"},
            "message": {"message_id": message_id, "date": 1_700_000_000, "chat": {"id": from, "type": "private"}},
            "chat_instance": "1", "data": data,
        }}));
        cvar.notify_all();
        callback_id
    }

    /// Answer the next call of `method` with `fault`.
    pub fn fail_next(&self, method: &str, fault: Fault) {
        self.state.0.lock().unwrap().faults.push(PlannedFault { method: method.to_string(), chat: None, fault });
    }

    /// Answer the next call of `method` addressed to `chat` with `fault`.
    pub fn fail_next_in_chat(&self, method: &str, chat: i64, fault: Fault) {
        let planned = PlannedFault { method: method.to_string(), chat: Some(json!(chat)), fault };
        self.state.0.lock().unwrap().faults.push(planned);
    }

    /// Every message accepted so far, in order.
    pub fn delivered(&self) -> Vec<Sent> {
        self.state.0.lock().unwrap().sent.clone()
    }

    /// The messages accepted for `chat`, in order.
    pub fn delivered_to(&self, chat: i64) -> Vec<Sent> {
        self.delivered().into_iter().filter(|s| s.chat_id == json!(chat)).collect()
    }

    /// Wait at most `within` until the accepted messages satisfy `done`; return them.
    pub fn wait_delivered(&self, within: Duration, mut done: impl FnMut(&[Sent]) -> bool) -> Option<Vec<Sent>> {
        let mut result = None;
        crate::support::wait_until(within, || {
            let sent = self.delivered();
            let ok = done(&sent);
            if ok {
                result = Some(sent);
            }
            ok
        });
        result
    }

    /// Answer every call of `method` with `fault` from now on (`None`: stop).
    pub fn fail_all(&self, method: &str, fault: Option<Fault>) {
        let mut st = self.state.0.lock().unwrap();
        st.sticky.retain(|(m, _)| m != method);
        if let Some(fault) = fault {
            st.sticky.push((method.to_string(), fault));
        }
    }

    /// End the poll being held now (it answers with no updates), so a fault set with
    /// [`FakeTelegram::fail_all`] or [`FakeTelegram::fail_next`] is met by the next one.
    pub fn interrupt_polls(&self) {
        let (lock, cvar) = &*self.state;
        lock.lock().unwrap().wake += 1;
        cvar.notify_all();
    }

    /// Updates queued and not yet confirmed by a later offset.
    pub fn unconfirmed(&self) -> usize {
        self.state.0.lock().unwrap().updates.len()
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

    /// When the first getUpdates arrived, if one did.
    #[allow(dead_code)] // Used by the benchmark.
    pub fn first_poll_at(&self) -> Option<Instant> {
        self.state.0.lock().unwrap().first_poll
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

/// The mention entity of the first `@botname` in `text` (offsets in UTF-16 units).
fn mention_entities(text: &str) -> Option<Value> {
    let handle = format!("@{BOT_USERNAME}");
    let at = text.find(&handle)?;
    let offset = text.get(..at)?.encode_utf16().count();
    Some(json!([{"type": "mention", "offset": offset, "length": handle.len()}]))
}

/// Seconds since 1970, as Telegram dates messages.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn handle(
    state: &Arc<(Mutex<State>, Condvar)>,
    calls: &Sender<Call>,
    history: &Mutex<Vec<Call>>,
    req: Request,
) -> Reply {
    if let Some(path) = req.path.strip_prefix(&format!("/file/bot{TOKEN}/files/")) {
        let _ = calls.send(Call { method: "download".into(), body: json!(path), at: Instant::now() });
        let stall = state.0.lock().unwrap().stalled.get(path).copied();
        if let Some(delay) = stall {
            std::thread::sleep(delay);
        }
        return match state.0.lock().unwrap().files.get(path) {
            Some(bytes) => {
                Reply::Bytes(200, vec![("Content-Type".into(), "application/octet-stream".into())], bytes.clone())
            }
            None => not_found(),
        };
    }
    let Some(rest) = req.path.strip_prefix("/bot") else { return not_found() };
    let Some((token, method)) = rest.split_once('/') else { return not_found() };
    if token != TOKEN {
        return Reply::Json(401, json!({"ok": false, "error_code": 401, "description": "Unauthorized"}).to_string());
    }
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    if method != "getUpdates" {
        history.lock().unwrap().push(Call { method: method.to_string(), body: body.clone(), at: Instant::now() });
    }
    let fault = {
        let mut st = state.0.lock().unwrap();
        let pos = st.faults.iter().position(|f| {
            f.method.eq_ignore_ascii_case(method) && f.chat.as_ref().is_none_or(|c| *c == body["chat_id"])
        });
        let sticky = st.sticky.iter().find(|(m, _)| m.eq_ignore_ascii_case(method)).map(|(_, f)| f.clone());
        pos.map(|i| st.faults.remove(i).fault).or(sticky)
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
        "getFile" => {
            let id = body["file_id"].as_str().unwrap_or_default().to_string();
            let size = state.0.lock().unwrap().files.get(&id).map(Vec::len);
            let _ = calls.send(Call { method: method.to_string(), body: body.clone(), at: Instant::now() });
            match size {
                Some(size) => ok(
                    json!({"file_id": id, "file_unique_id": id, "file_size": size, "file_path": format!("files/{id}")}),
                ),
                None => status(bad_request("invalid file_id")),
            }
        }
        "sendPhoto" | "sendDocument" => {
            let Some(upload) = parse_multipart(method, &req) else {
                return status(bad_request("there is no photo in the request"));
            };
            let id = {
                let mut st = state.0.lock().unwrap();
                st.uploads.push(upload.clone());
                st.next_message_id += 1;
                st.next_message_id
            };
            let chat: Value =
                upload.fields.get("chat_id").and_then(|c| c.parse::<i64>().ok()).map_or(Value::Null, |c| json!(c));
            let _ = calls.send(Call { method: method.to_string(), body: json!({"chat_id": chat}), at: Instant::now() });
            ok(json!({"message_id": id, "date": 1_700_000_000, "chat": {"id": chat}}))
        }
        "sendMessage" | "editMessageText" => {
            let visible = match checked_text(&body) {
                Ok(visible) => visible,
                Err(Fault::Status(code, body)) => return Reply::Json(code, body.to_string()),
                Err(_) => return not_found(),
            };
            let text = body["text"].as_str().unwrap_or_default().to_string();
            let parse_mode = body["parse_mode"].as_str().map(str::to_string);
            let chat_key = body["chat_id"].to_string();
            let id = {
                let mut st = state.0.lock().unwrap();
                let id = if method == "editMessageText" {
                    let id = body["message_id"].as_i64().unwrap_or(0);
                    match st.messages.get(&(chat_key.clone(), id)) {
                        None => return status(bad_request("message to edit not found")),
                        Some(current) if *current == (text.clone(), parse_mode.clone()) => {
                            return status(bad_request(
                                "message is not modified: specified new message content and reply markup are \
                                 exactly the same as a current content and reply markup of the message",
                            ));
                        }
                        Some(_) => id,
                    }
                } else {
                    st.next_message_id += 1;
                    let id = st.next_message_id;
                    st.sent.push(Sent {
                        chat_id: body["chat_id"].clone(),
                        message_id: id,
                        text: text.clone(),
                        parse_mode: parse_mode.clone(),
                        visible: visible.clone(),
                        at: Instant::now(),
                    });
                    id
                };
                st.messages.insert((chat_key, id), (text, parse_mode));
                id
            };
            let _ = calls.send(Call { method: method.to_string(), body: body.clone(), at: Instant::now() });
            ok(json!({"message_id": id, "date": 1_700_000_000, "chat": {"id": body["chat_id"]}, "text": visible}))
        }
        _ => {
            let _ = calls.send(Call { method: method.to_string(), body, at: Instant::now() });
            ok(json!(true))
        }
    }
}

/// A `multipart/form-data` body as Telegram reads it: text fields and one file, which must
/// be in the field the method names (`photo`, `document`).
fn parse_multipart(method: &str, req: &Request) -> Option<Upload> {
    let content_type = req.headers.iter().find(|(n, _)| n == "content-type").map(|(_, v)| v.clone())?;
    let boundary = content_type.strip_prefix("multipart/form-data; boundary=")?;
    let delimiter = format!("--{boundary}");
    let body = &req.body;
    let find =
        |from: usize, needle: &[u8]| body[from..].windows(needle.len()).position(|w| w == needle).map(|p| p + from);
    let mut fields = HashMap::new();
    let mut file = None;
    let mut at = find(0, delimiter.as_bytes())? + delimiter.len();
    loop {
        if body[at..].starts_with(b"--") {
            break;
        }
        at += 2; // \r\n
        let head_end = find(at, b"\r\n\r\n")?;
        let head = String::from_utf8(body[at..head_end].to_vec()).ok()?;
        let next = find(head_end, format!("\r\n{delimiter}").as_bytes())?;
        let content = body[head_end + 4..next].to_vec();
        let attr = |name: &str| {
            let key = format!("{name}=\"");
            let start = head.find(&key)? + key.len();
            Some(head[start..].split('"').next()?.to_string())
        };
        let name = attr("name")?;
        match attr("filename") {
            Some(file_name) => {
                let content_type = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Type: "))
                    .unwrap_or("application/octet-stream")
                    .to_string();
                file = Some((name, file_name, content_type, content));
            }
            None => {
                fields.insert(name, String::from_utf8(content).ok()?);
            }
        }
        at = next + 2 + delimiter.len();
    }
    let (field, file_name, content_type, bytes) = file?;
    let wanted = if method == "sendPhoto" { "photo" } else { "document" };
    (field == wanted).then(|| Upload { method: method.to_string(), fields, field, file_name, content_type, bytes })
}

fn get_updates(state: &Arc<(Mutex<State>, Condvar)>, body: &Value) -> Reply {
    let offset = body["offset"].as_i64().unwrap_or(0);
    let hold = Duration::from_secs(body["timeout"].as_u64().unwrap_or(0).min(30));
    let (lock, cvar) = &**state;
    let mut st = lock.lock().unwrap();
    st.polls += 1;
    st.first_poll.get_or_insert_with(Instant::now);
    st.poll_generation += 1;
    let generation = st.poll_generation;
    let wake = st.wake;
    cvar.notify_all();
    // Confirm everything below the offset.
    st.updates.retain(|u| u["update_id"].as_i64().unwrap_or(0) >= offset);
    let deadline = Instant::now() + hold;
    loop {
        if st.poll_generation != generation {
            return Reply::Json(409, Fault::conflict_body());
        }
        if st.wake != wake {
            return ok(json!([]));
        }
        if !st.updates.is_empty() {
            // Updates queued with `push_raw_message` go out exactly as written.
            let batch: Vec<String> = st
                .updates
                .iter()
                .take(100)
                .map(|u| u.get(RAW).and_then(Value::as_str).map_or_else(|| u.to_string(), str::to_string))
                .collect();
            return Reply::Json(200, format!(r#"{{"ok":true,"result":[{}]}}"#, batch.join(",")));
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

fn status(fault: Fault) -> Reply {
    match fault {
        Fault::Status(code, body) => Reply::Json(code, body.to_string()),
        _ => not_found(),
    }
}

/// Telegram's limit on a message's text, counted after entity parsing, in UTF-16 units.
pub const TEXT_LIMIT: usize = 4096;

/// The visible text of a `sendMessage`/`editMessageText` body, or the 400 Telegram answers.
fn checked_text(body: &Value) -> Result<String, Fault> {
    let Some(text) = body["text"].as_str() else { return Err(bad_request("message text is empty")) };
    let visible = match body["parse_mode"].as_str() {
        None => text.to_string(),
        Some(mode) if mode.eq_ignore_ascii_case("html") => {
            parse_html(text).map_err(|e| bad_request(&format!("can't parse entities: {e}")))?
        }
        // We never send Markdown; a fake that accepted it unchecked would hide a regression.
        Some(_) => return Err(bad_request("unsupported parse_mode")),
    };
    if visible.trim().is_empty() {
        return Err(bad_request("message text is empty"));
    }
    if visible.encode_utf16().count() > TEXT_LIMIT {
        return Err(bad_request("message is too long"));
    }
    Ok(visible)
}

/// Tags Telegram's HTML parse mode accepts.
const TAGS: [&str; 16] = [
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ins",
    "s",
    "strike",
    "del",
    "a",
    "code",
    "pre",
    "blockquote",
    "span",
    "tg-spoiler",
    "tg-emoji",
];

/// Parse Telegram HTML the way the Bot API does: only [`TAGS`], closed in order, no tags
/// inside `code`, only `code` inside `pre`, no nested `blockquote`; `&lt; &gt; &amp; &quot;`
/// and numeric entities only; a `<` that starts no tag is an error. Returns the visible text.
pub fn parse_html(text: &str) -> Result<String, String> {
    let mut visible = String::new();
    let mut open: Vec<String> = Vec::new();
    let mut i = 0;
    while let Some(c) = text[i..].chars().next() {
        match c {
            '<' => {
                let Some(len) = tag_len(&text[i..]) else {
                    return Err(format!("Unclosed start tag at byte offset {i}"));
                };
                let tag = &text[i + 1..i + len];
                if let Some(name) = tag.strip_prefix('/') {
                    let name = name.trim().to_ascii_lowercase();
                    if open.pop().as_deref() != Some(name.as_str()) {
                        return Err(format!("Unexpected end tag at byte offset {i}"));
                    }
                } else {
                    let name = start_tag(tag).map_err(|e| format!("{e} at byte offset {i}"))?;
                    let inside = open.last().map(String::as_str);
                    if inside == Some("code") || (inside == Some("pre") && name != "code") {
                        return Err(format!(
                            "Unsupported tag \"{name}\" inside \"{}\" at byte offset {i}",
                            inside.unwrap_or("")
                        ));
                    }
                    if name == "blockquote" && open.iter().any(|t| t == "blockquote") {
                        return Err(format!("Blockquote can't be nested at byte offset {i}"));
                    }
                    open.push(name);
                }
                i += len + 1;
            }
            '&' => {
                let (ch, len) =
                    entity(&text[i..]).ok_or_else(|| format!("Unsupported HTML entity at byte offset {i}"))?;
                visible.push(ch);
                i += len;
            }
            _ => {
                visible.push(c);
                i += c.len_utf8();
            }
        }
    }
    match open.last() {
        Some(tag) => Err(format!("Can't find end tag corresponding to start tag \"{tag}\"")),
        None => Ok(visible),
    }
}

/// The length of the tag at the start of `text` up to its `>`, skipping quoted attribute values.
fn tag_len(text: &str) -> Option<usize> {
    let mut quote = None;
    for (at, c) in text.char_indices() {
        match (quote, c) {
            (None, '>') => return Some(at),
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
    }
    None
}

/// The lowercase name of a start tag (the text between `<` and `>`), its attributes checked.
fn start_tag(tag: &str) -> Result<String, String> {
    let name_len = tag.find(|c: char| c.is_ascii_whitespace()).unwrap_or(tag.len());
    let name = tag[..name_len].to_ascii_lowercase();
    if !TAGS.contains(&name.as_str()) {
        return Err(format!("Unsupported start tag \"{name}\""));
    }
    let mut attributes = HashMap::new();
    let mut rest = tag[name_len..].trim_start();
    while !rest.is_empty() {
        let key_len = rest.find(|c: char| c == '=' || c.is_ascii_whitespace()).unwrap_or(rest.len());
        let key = rest[..key_len].to_ascii_lowercase();
        rest = rest[key_len..].trim_start();
        let Some(after_eq) = rest.strip_prefix('=') else {
            attributes.insert(key, String::new());
            continue;
        };
        let after_eq = after_eq.trim_start();
        let (value, after) = match after_eq.chars().next() {
            Some(q @ ('"' | '\'')) => {
                let end = after_eq[1..].find(q).ok_or("Unclosed attribute value")?;
                (&after_eq[1..1 + end], &after_eq[end + 2..])
            }
            _ => {
                let end = after_eq.find(|c: char| c.is_ascii_whitespace()).unwrap_or(after_eq.len());
                (&after_eq[..end], &after_eq[end..])
            }
        };
        if value.contains('<') {
            return Err("Unexpected '<' in an attribute value".to_string());
        }
        attributes.insert(key, value.to_string());
        rest = after.trim_start();
    }
    if name == "span" && attributes.get("class").map(String::as_str) != Some("tg-spoiler") {
        return Err("Unsupported start tag \"span\"".to_string());
    }
    Ok(name)
}

/// The character an entity at the start of `text` stands for, and the entity's length.
fn entity(text: &str) -> Option<(char, usize)> {
    let end = text.get(..text.len().min(12))?.find(';')?;
    let ch = match &text[1..end] {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "quot" => '"',
        body => {
            let number = body.strip_prefix('#')?;
            let code = match number.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => number.parse().ok()?,
            };
            char::from_u32(code)?
        }
    };
    Some((ch, end + 1))
}

fn ok(result: Value) -> Reply {
    Reply::Json(200, json!({"ok": true, "result": result}).to_string())
}

fn not_found() -> Reply {
    Reply::Json(404, json!({"ok": false, "error_code": 404, "description": "Not Found"}).to_string())
}

#[cfg(test)]
mod tests {
    //! The fake must refuse what Telegram refuses, or the reply tests prove nothing.

    use super::*;
    use tether::net::http::HttpClient;

    #[test]
    fn html_is_parsed_like_telegram() {
        let accepted = [
            ("<b>bold</b> &amp; <i>it</i>", "bold & it"),
            ("<pre><code class=\"language-rust\">a &lt; b</code></pre>", "a < b"),
            ("<a href=\"https://e.com/?a=1&amp;b=&quot;x&quot;\">link</a>", "link"),
            ("<B>upper</B> <span class=\"tg-spoiler\">s</span> <tg-spoiler>t</tg-spoiler>", "upper s t"),
            ("<blockquote expandable>q</blockquote>", "q"),
            ("<a href='https://e.com/?q=a>b'>quoted &gt;</a>", "quoted >"),
            ("&#128512; &#x1F600; a > b", "😀 😀 a > b"),
            ("<b><i><u><s>deep</s></u></i></b>", "deep"),
        ];
        for (html, visible) in accepted {
            assert_eq!(parse_html(html).as_deref(), Ok(visible), "{html}");
        }
        let refused = [
            ("a<br>b", "Unsupported start tag \"br\" at byte offset 1"),
            ("a < b", "Unclosed start tag at byte offset 2"),
            ("x < y > z", "Unsupported start tag \"\" at byte offset 2"),
            ("<script>x</script>", "Unsupported start tag \"script\" at byte offset 0"),
            ("<b>open", "Can't find end tag corresponding to start tag \"b\""),
            ("<b><i>x</b></i>", "Unexpected end tag at byte offset 7"),
            ("x</b>", "Unexpected end tag at byte offset 1"),
            ("a & b", "Unsupported HTML entity at byte offset 2"),
            ("&nbsp;", "Unsupported HTML entity at byte offset 0"),
            ("<b", "Unclosed start tag at byte offset 0"),
            ("<code><b>x</b></code>", "Unsupported tag \"b\" inside \"code\" at byte offset 6"),
            ("<pre><i>x</i></pre>", "Unsupported tag \"i\" inside \"pre\" at byte offset 5"),
            ("<blockquote><blockquote>x</blockquote></blockquote>", "Blockquote can't be nested at byte offset 12"),
            ("<span>x</span>", "Unsupported start tag \"span\" at byte offset 0"),
            ("<a href=\"x>y</a>", "Unclosed start tag at byte offset 0"),
            ("<a href=\"x\"y\">t</a>", "Unclosed start tag at byte offset 0"),
        ];
        for (html, error) in refused {
            assert_eq!(parse_html(html), Err(error.to_string()), "{html}");
        }
    }

    fn call(fake: &FakeTelegram, method: &str, body: Value) -> (u16, Value) {
        let url = format!("{}/bot{TOKEN}/{method}", fake.url());
        let (status, text) = HttpClient::default().post_json(&url, &body, Duration::from_secs(5)).unwrap();
        (status, serde_json::from_str(&text).unwrap())
    }

    #[test]
    fn send_and_edit_are_validated() {
        let fake = FakeTelegram::start();
        let html = |text: &str| json!({"chat_id": 1, "text": text, "parse_mode": "HTML"});
        let fits = "&lt;".repeat(TEXT_LIMIT);
        let emoji_over = "😀".repeat(TEXT_LIMIT / 2) + "x";
        let cases = vec![
            (html("<b>hi</b>"), 200, ""),
            // 4096 visible characters in 16 KiB of markup fit.
            (html(&fits), 200, ""),
            (html(&format!("{fits}x")), 400, "Bad Request: message is too long"),
            (json!({"chat_id": 1, "text": emoji_over}), 400, "Bad Request: message is too long"),
            (json!({"chat_id": 1, "text": "a<br>b"}), 200, ""),
            (html("a<br>b"), 400, "Bad Request: can't parse entities: Unsupported start tag \"br\" at byte offset 1"),
            (html("<b> </b>"), 400, "Bad Request: message text is empty"),
            (json!({"chat_id": 1, "text": ""}), 400, "Bad Request: message text is empty"),
            (
                json!({"chat_id": 1, "text": "*x*", "parse_mode": "MarkdownV2"}),
                400,
                "Bad Request: unsupported parse_mode",
            ),
        ];
        for (body, status, description) in cases {
            let (got, reply) = call(&fake, "sendMessage", body.clone());
            assert_eq!(got, status, "{body}: {reply}");
            if status == 400 {
                assert_eq!(reply["description"], description, "{body}");
                assert_eq!(reply["error_code"], 400);
            }
        }
        let sent = fake.delivered();
        assert_eq!(sent.len(), 3);
        assert_eq!(sent[0].visible, "hi");
        assert_eq!(sent[1].visible, "<".repeat(TEXT_LIMIT));
        assert_eq!(sent[2].parse_mode, None);

        let id = sent[0].message_id;
        let edit = |text: &str, id: i64| json!({"chat_id": 1, "message_id": id, "text": text, "parse_mode": "HTML"});
        let (status, reply) = call(&fake, "editMessageText", edit("<b>hi</b>", id));
        assert_eq!(status, 400);
        assert!(reply["description"].as_str().unwrap().starts_with("Bad Request: message is not modified"), "{reply}");
        assert_eq!(call(&fake, "editMessageText", edit("<i>hi</i>", id)).0, 200);
        assert_eq!(call(&fake, "editMessageText", edit("<i>hi</i>", id)).0, 400);
        let (status, reply) = call(&fake, "editMessageText", edit("<b>x", id));
        assert_eq!(
            (status, reply["description"].as_str().unwrap()),
            (400, "Bad Request: can't parse entities: Can't find end tag corresponding to start tag \"b\"")
        );
        let (status, reply) = call(&fake, "editMessageText", edit("x", 999));
        assert_eq!((status, reply["description"].as_str().unwrap()), (400, "Bad Request: message to edit not found"));
        // Edits are not new messages.
        assert_eq!(fake.delivered().len(), 3);
    }

    #[test]
    fn faults_can_target_one_chat() {
        let fake = FakeTelegram::start();
        fake.fail_next_in_chat("sendMessage", 2, Fault::blocked());
        assert_eq!(call(&fake, "sendMessage", json!({"chat_id": 1, "text": "a"})).0, 200);
        let (status, reply) = call(&fake, "sendMessage", json!({"chat_id": 2, "text": "b"}));
        assert_eq!((status, reply["description"].as_str().unwrap()), (403, "Forbidden: bot was blocked by the user"));
        assert_eq!(call(&fake, "sendMessage", json!({"chat_id": 2, "text": "c"})).0, 200);
        assert_eq!(fake.delivered_to(2).iter().map(|s| s.visible.as_str()).collect::<Vec<_>>(), ["c"]);
        assert_eq!(fake.calls_of("sendMessage").len(), 3);
    }
}
