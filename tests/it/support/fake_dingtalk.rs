//! A loopback DingTalk: the HTTP API (connections/open with single-use tickets, gettoken with
//! expiring tokens, session webhooks that expire, the robot send APIs, the two-step file
//! download) and the Stream gateway (a tungstenite server that pushes callbacks, pings and
//! disconnects, records every frame the client sends, and can drop or freeze a connection).
#![allow(dead_code)] // The benchmark shares these helpers and uses only some.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::handshake::server::{ErrorResponse, Request as WsRequest, Response as WsResponse};

use super::http::{Reply, Request, Server};
use super::wait_until;

pub const CLIENT_ID: &str = "dingtestapp";
pub const CLIENT_SECRET: &str = "test-client-secret";
pub const ROBOT_CODE: &str = "dingtestapp";
const TICKET_LIFE: Duration = Duration::from_secs(90);

/// A message tether sent, by whichever way.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    /// `webhook`, `group` or `direct`.
    pub via: &'static str,
    /// The conversation id (webhook, group) or the staff id (direct).
    pub to: String,
    pub title: String,
    pub text: String,
}

/// A file tether uploaded (`media/upload`), by its `media_id`.
#[derive(Debug, Clone)]
pub struct Upload {
    pub media_id: String,
    /// The `type` query: `image` or `file`.
    pub kind: String,
    pub file_name: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// What the gateway does to the current connection.
enum Command {
    Send(String),
    /// Stop reading (no pongs, no acks read) for this long.
    Freeze(Duration),
    /// Close the TCP connection without a close frame.
    Drop,
}

#[derive(Default)]
struct State {
    /// Tickets issued and not yet used, with when.
    tickets: HashMap<String, Instant>,
    /// Tickets presented twice or unknown.
    refused_tickets: u64,
    /// Tickets to burn as if they had expired before use (the upgrade gets 401).
    expire_next_tickets: u64,
    /// `connections/open` calls that got a ticket.
    opens: u64,
    /// Sessions: id → (conversation id, expired).
    sessions: HashMap<String, (String, bool)>,
    /// Valid tokens with their expiry.
    tokens: HashMap<String, Instant>,
    token_calls: u64,
    stale_token_uses: u64,
    sent: Vec<Sent>,
    /// Every text frame the client sent, parsed.
    upstream: Vec<Value>,
    files: HashMap<String, (String, Vec<u8>)>,
    download_calls: u64,
    /// Files tether uploaded through `media/upload`, in order.
    uploads: Vec<Upload>,
    /// Reactions: ("reply" or "recall", message id), in order, with the number of messages
    /// sent before each.
    reactions: Vec<(String, String, usize)>,
}

pub struct FakeDingTalk {
    server: Server,
    state: Arc<Mutex<State>>,
    /// Commands to the newest connection.
    current: Arc<Mutex<Option<Sender<Command>>>>,
    connections: Arc<AtomicU64>,
    next: AtomicU64,
    /// New sessions answer 300001 at once.
    pub expire_new_sessions: Arc<AtomicBool>,
    /// Tokens handed out live this long.
    token_life: Arc<Mutex<Duration>>,
    /// Refuse every open request (bad credentials).
    pub refuse_open: Arc<AtomicBool>,
}

impl FakeDingTalk {
    pub fn start() -> FakeDingTalk {
        let state = Arc::new(Mutex::new(State::default()));
        let current: Arc<Mutex<Option<Sender<Command>>>> = Arc::new(Mutex::new(None));
        let connections = Arc::new(AtomicU64::new(0));
        let expire_new_sessions = Arc::new(AtomicBool::new(false));
        let refuse_open = Arc::new(AtomicBool::new(false));
        let token_life = Arc::new(Mutex::new(Duration::from_secs(7200)));

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ws_addr = listener.local_addr().unwrap();
        {
            let (state, current, connections) = (state.clone(), current.clone(), connections.clone());
            thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let (state, current, connections) = (state.clone(), current.clone(), connections.clone());
                    thread::spawn(move || gateway(stream, &state, &current, &connections));
                }
            });
        }
        let http_addr = Arc::new(Mutex::new(String::new()));
        let server = {
            let (state, http_addr) = (state.clone(), http_addr.clone());
            let (refuse, life) = (refuse_open.clone(), token_life.clone());
            Server::start(move |req| {
                let base = http_addr.lock().unwrap().clone();
                handle(&state, &base, &ws_addr.to_string(), &refuse, &life, req)
            })
        };
        *http_addr.lock().unwrap() = server.url();
        FakeDingTalk {
            server,
            state,
            current,
            connections,
            next: AtomicU64::new(1),
            expire_new_sessions,
            token_life,
            refuse_open,
        }
    }

    /// The base of every host (apiBase and oapiBase).
    pub fn url(&self) -> String {
        self.server.url()
    }

    fn id(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.next.fetch_add(1, Ordering::SeqCst))
    }

    /// Connections accepted so far (with a valid ticket).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn wait_connections(&self, n: u64, within: Duration) -> bool {
        wait_until(within, || self.connections() >= n)
    }

    pub fn refused_tickets(&self) -> u64 {
        self.state.lock().unwrap().refused_tickets
    }

    /// The next `n` tickets are refused at the upgrade, as if they had expired.
    pub fn expire_next_tickets(&self, n: u64) {
        self.state.lock().unwrap().expire_next_tickets = n;
    }

    /// `connections/open` calls that were given a ticket.
    pub fn opens(&self) -> u64 {
        self.state.lock().unwrap().opens
    }

    fn command(&self, command: Command) {
        let current = self.current.lock().unwrap();
        current.as_ref().expect("no connection to the gateway").send(command).unwrap();
    }

    /// Push a frame; returns its messageId.
    pub fn push_frame(&self, kind: &str, topic: &str, data: &str) -> String {
        let message_id = self.id("frame-");
        let frame = json!({
            "specVersion": "1.0", "type": kind,
            "headers": {"appId": "app", "connectionId": "c", "contentType": "application/json",
                        "messageId": message_id, "time": "1774098949543", "topic": topic},
            "data": data,
        });
        self.command(Command::Send(frame.to_string()));
        message_id
    }

    /// A robot message callback with `data` as given; returns the frame's messageId.
    pub fn push_robot(&self, data: &Value) -> String {
        self.push_frame("CALLBACK", "/v1.0/im/bot/messages/get", &data.to_string())
    }

    /// A new session webhook of `conversation` valid for 90 min by its expiry time.
    pub fn session(&self, conversation: &str) -> (String, u64) {
        let id = self.id("session-");
        let expired = self.expire_new_sessions.load(Ordering::SeqCst);
        self.state.lock().unwrap().sessions.insert(id.clone(), (conversation.to_string(), expired));
        (format!("{}/robot/sendBySession?session={id}", self.url()), unix_ms() + 90 * 60 * 1000)
    }

    /// A robot message's data: a DM (conversation `cid-<staff>`) or a group message.
    pub fn robot_data(&self, staff: &str, conversation: Option<&str>, text: &str, mentioned: bool) -> Value {
        let conversation = conversation.map_or_else(|| format!("cid-{staff}"), str::to_string);
        let (webhook, expires) = self.session(&conversation);
        let mut data = json!({
            "conversationId": conversation,
            "conversationType": "1",
            "chatbotCorpId": "dingcorp", "chatbotUserId": "$:LWCP_v1:$bot",
            "msgId": self.id("msg-"),
            "msgtype": "text", "text": {"content": text},
            "senderId": format!("$:LWCP_v1:${staff}"), "senderStaffId": staff, "senderNick": staff,
            "robotCode": ROBOT_CODE,
            "sessionWebhook": webhook, "sessionWebhookExpiredTime": expires,
            "createAt": unix_ms(),
        });
        if conversation.starts_with("group") {
            data["conversationType"] = json!("2");
            data["conversationTitle"] = json!("Team");
            data["isInAtList"] = json!(mentioned);
        }
        data
    }

    /// A DM from `staff`; returns (frame id, msgId).
    pub fn dm(&self, staff: &str, text: &str) -> (String, String) {
        let data = self.robot_data(staff, None, text, false);
        let msg_id = data["msgId"].as_str().unwrap().to_string();
        (self.push_robot(&data), msg_id)
    }

    /// A group message from `staff` in `group` (a conversation id starting with `group`).
    pub fn group(&self, group: &str, staff: &str, text: &str, mentioned: bool) -> String {
        self.push_robot(&self.robot_data(staff, Some(group), text, mentioned))
    }

    /// A SYSTEM ping; returns its messageId.
    pub fn ping(&self, opaque: &str) -> String {
        self.push_frame("SYSTEM", "ping", &json!({"opaque": opaque}).to_string())
    }

    /// A SYSTEM disconnect; the connection is closed 300 ms later.
    pub fn disconnect(&self) {
        self.push_frame("SYSTEM", "disconnect", r#"{"reason":"connection is expired"}"#);
        let current = self.current.lock().unwrap().clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(300));
            if let Some(c) = current {
                let _ = c.send(Command::Drop);
            }
        });
    }

    /// Close the current connection's TCP without a word.
    pub fn drop_connection(&self) {
        self.command(Command::Drop);
    }

    /// The current connection stops reading (no pongs) for `d`.
    pub fn freeze(&self, d: Duration) {
        self.command(Command::Freeze(d));
    }

    /// Every session webhook handed out so far answers 300001 from now on.
    pub fn expire_sessions(&self) {
        for (_, expired) in self.state.lock().unwrap().sessions.values_mut() {
            *expired = true;
        }
    }

    /// Every token handed out so far is refused from now on.
    pub fn revoke_tokens(&self) {
        self.state.lock().unwrap().tokens.clear();
    }

    pub fn set_token_life(&self, d: Duration) {
        *self.token_life.lock().unwrap() = d;
    }

    /// A file the download API hands out for `code`.
    pub fn add_file(&self, code: &str, content_type: &str, bytes: &[u8]) {
        self.state.lock().unwrap().files.insert(code.to_string(), (content_type.to_string(), bytes.to_vec()));
    }

    /// Files uploaded, in order.
    pub fn uploads(&self) -> Vec<Upload> {
        self.state.lock().unwrap().uploads.clone()
    }

    pub fn sent(&self) -> Vec<Sent> {
        self.state.lock().unwrap().sent.clone()
    }

    pub fn wait_sent(&self, within: Duration, mut done: impl FnMut(&[Sent]) -> bool) -> Option<Vec<Sent>> {
        let mut last = Vec::new();
        let ok = wait_until(within, || {
            last = self.sent();
            done(&last)
        });
        ok.then_some(last)
    }

    /// Texts sent to `to` (a conversation or staff id), in order.
    pub fn texts_to(&self, to: &str) -> Vec<String> {
        self.sent().into_iter().filter(|s| s.to == to).map(|s| s.text).collect()
    }

    /// Frames the client sent, in order.
    pub fn upstream(&self) -> Vec<Value> {
        self.state.lock().unwrap().upstream.clone()
    }

    /// The client's answer to frame `message_id`.
    pub fn wait_ack(&self, message_id: &str, within: Duration) -> Option<Value> {
        let mut found = None;
        wait_until(within, || {
            found = self.upstream().into_iter().find(|f| f["headers"]["messageId"] == message_id);
            found.is_some()
        });
        found
    }

    pub fn token_calls(&self) -> u64 {
        self.state.lock().unwrap().token_calls
    }

    pub fn stale_token_uses(&self) -> u64 {
        self.state.lock().unwrap().stale_token_uses
    }

    /// ("reply" or "recall", message id, messages sent before it), in order.
    pub fn reactions(&self) -> Vec<(String, String, usize)> {
        self.state.lock().unwrap().reactions.clone()
    }

    pub fn download_calls(&self) -> u64 {
        self.state.lock().unwrap().download_calls
    }
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn query(path: &str, key: &str) -> Option<String> {
    let (_, q) = path.split_once('?')?;
    q.split('&').find_map(|kv| kv.strip_prefix(&format!("{key}="))).map(str::to_string)
}

fn json_reply(value: Value) -> Reply {
    Reply::Json(200, value.to_string())
}

fn handle(
    state: &Mutex<State>,
    base: &str,
    ws_addr: &str,
    refuse_open: &AtomicBool,
    token_life: &Mutex<Duration>,
    req: Request,
) -> Reply {
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let route = req.path.split('?').next().unwrap_or_default().to_string();
    let mut s = state.lock().unwrap();
    match route.as_str() {
        "/v1.0/gateway/connections/open" => {
            let subscribed = body["subscriptions"]
                .as_array()
                .is_some_and(|subs| subs.iter().any(|x| x["topic"] == "/v1.0/im/bot/messages/get"));
            if refuse_open.load(Ordering::SeqCst)
                || body["clientId"] != CLIENT_ID
                || body["clientSecret"] != CLIENT_SECRET
            {
                return Reply::Json(401, r#"{"requestid":"r","code":"authFailed","message":"鉴权失败"}"#.into());
            }
            if !subscribed || req.header("accept") != Some("application/json") {
                return Reply::Json(400, r#"{"code":"invalidParameter"}"#.into());
            }
            static TICKETS: AtomicU64 = AtomicU64::new(1);
            let ticket = format!("ticket-{}-{}", TICKETS.fetch_add(1, Ordering::SeqCst), unix_ms());
            s.tickets.insert(ticket.clone(), Instant::now());
            s.opens += 1;
            json_reply(json!({"endpoint": format!("ws://{ws_addr}/connect"), "ticket": ticket}))
        }
        "/gettoken" => {
            s.token_calls += 1;
            if query(&req.path, "appkey").as_deref() != Some(CLIENT_ID)
                || query(&req.path, "appsecret").as_deref() != Some(CLIENT_SECRET)
            {
                return json_reply(json!({"errcode": 40089, "errmsg": "invalid appkey or appsecret"}));
            }
            let token = format!("token-{}", s.token_calls);
            let life = *token_life.lock().unwrap();
            s.tokens.insert(token.clone(), Instant::now() + life);
            json_reply(
                json!({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": life.as_secs().max(1)}),
            )
        }
        "/media/upload" => {
            let token = query(&req.path, "access_token").unwrap_or_default();
            if s.tokens.get(&token).is_none_or(|until| *until <= Instant::now()) {
                s.stale_token_uses += 1;
                return json_reply(json!({"errcode": 42001, "errmsg": "access_token expired"}));
            }
            let kind = query(&req.path, "type").unwrap_or_default();
            let form = super::http::parse_form(&req);
            let Some((field, file_name, content_type, bytes)) = form.and_then(|f| f.file) else {
                return json_reply(json!({"errcode": 40004, "errmsg": "no media"}));
            };
            if field != "media" || !matches!(kind.as_str(), "image" | "file") {
                return json_reply(json!({"errcode": 40004, "errmsg": "invalid media type"}));
            }
            let media_id = format!("@media-{}", s.uploads.len() + 1);
            s.uploads.push(Upload { media_id: media_id.clone(), kind, file_name, content_type, bytes });
            json_reply(json!({"errcode": 0, "errmsg": "ok", "media_id": media_id, "type": "image"}))
        }
        "/robot/sendBySession" => {
            let Some((conversation, expired)) = query(&req.path, "session").and_then(|id| s.sessions.get(&id).cloned())
            else {
                return json_reply(json!({"errcode": 300001, "errmsg": "session 不存在"}));
            };
            if expired {
                return json_reply(json!({"errcode": 300001, "errmsg": "session 不存在"}));
            }
            let (title, text) = match body["msgtype"].as_str() {
                Some("markdown") => (body["markdown"]["title"].as_str(), body["markdown"]["text"].as_str()),
                Some("text") => (Some(""), body["text"]["content"].as_str()),
                _ => (None, None),
            };
            let (Some(title), Some(text)) = (title, text) else {
                return json_reply(json!({"errcode": 400, "errmsg": "bad msgtype"}));
            };
            s.sent.push(Sent { via: "webhook", to: conversation, title: title.into(), text: text.into() });
            json_reply(json!({"errcode": 0, "errmsg": "ok"}))
        }
        "/v1.0/robot/groupMessages/send"
        | "/v1.0/robot/oToMessages/batchSend"
        | "/v1.0/robot/messageFiles/download"
        | "/v1.0/robot/emotion/reply"
        | "/v1.0/robot/emotion/recall" => {
            let token = req.header("x-acs-dingtalk-access-token").unwrap_or_default().to_string();
            match s.tokens.get(&token) {
                Some(until) if *until > Instant::now() => {}
                _ => {
                    s.stale_token_uses += 1;
                    return Reply::Json(
                        401,
                        r#"{"code":"InvalidAuthentication","message":"不合法的access_token","requestid":"r"}"#.into(),
                    );
                }
            }
            if body["robotCode"] != ROBOT_CODE {
                return Reply::Json(400, r#"{"code":"invalidParameter","message":"robotCode"}"#.into());
            }
            if let Some(action) = route.strip_prefix("/v1.0/robot/emotion/") {
                if body["textEmotion"]["text"] != "👀" || body["openConversationId"].as_str().is_none() {
                    return Reply::Json(400, r#"{"code":"invalidParameter","message":"emotion"}"#.into());
                }
                let message = body["openMsgId"].as_str().unwrap_or_default().to_string();
                let sent = s.sent.len();
                s.reactions.push((action.to_string(), message, sent));
                return json_reply(json!({"result": true}));
            }
            if route.ends_with("download") {
                s.download_calls += 1;
                let code = body["downloadCode"].as_str().unwrap_or_default();
                if !s.files.contains_key(code) {
                    return Reply::Json(400, r#"{"code":"invalidParameter","message":"downloadCode"}"#.into());
                }
                return json_reply(json!({"downloadUrl": format!("{base}/files/{code}")}));
            }
            let param: Value =
                serde_json::from_str(body["msgParam"].as_str().unwrap_or_default()).unwrap_or(Value::Null);
            // A picture or file names an uploaded media id; it is recorded with the message
            // kind as its title and the media id (and file name) as its text.
            let media = match body["msgKey"].as_str() {
                Some("sampleImageMsg") => param["photoURL"].as_str().map(|id| (id.to_string(), String::new())),
                Some("sampleFile") => param["mediaId"]
                    .as_str()
                    .zip(param["fileName"].as_str())
                    .filter(|_| param["fileType"].as_str().is_some())
                    .map(|(id, name)| (id.to_string(), format!(" {name}"))),
                _ => None,
            };
            let media_text = match media {
                Some((id, name)) if s.uploads.iter().any(|u| u.media_id == id) => Some(format!("{id}{name}")),
                Some(_) => return Reply::Json(400, r#"{"code":"invalidParameter","message":"mediaId"}"#.into()),
                None => None,
            };
            let (Some(title), Some(text)) = (
                media_text.as_ref().and(body["msgKey"].as_str()).or(param["title"].as_str()),
                media_text.as_deref().or(param["text"].as_str()),
            ) else {
                return Reply::Json(400, r#"{"code":"invalidParameter","message":"msgParam"}"#.into());
            };
            let (via, to) = if route.contains("group") {
                ("group", body["openConversationId"].as_str().unwrap_or_default().to_string())
            } else {
                ("direct", body["userIds"][0].as_str().unwrap_or_default().to_string())
            };
            s.sent.push(Sent { via, to, title: title.into(), text: text.into() });
            json_reply(json!({"processQueryKey": "q"}))
        }
        other => {
            if let Some(code) = other.strip_prefix("/files/")
                && let Some((content_type, bytes)) = s.files.get(code)
            {
                return Reply::Bytes(200, vec![("Content-Type".into(), content_type.clone())], bytes.clone());
            }
            Reply::Json(404, r#"{"code":"notFound"}"#.into())
        }
    }
}

/// One gateway connection: check the ticket, then relay commands and record what comes up.
fn gateway(stream: TcpStream, state: &Mutex<State>, current: &Mutex<Option<Sender<Command>>>, connections: &AtomicU64) {
    // tungstenite's callback type fixes the error type.
    #[allow(clippy::result_large_err)]
    let check = |req: &WsRequest, resp: WsResponse| -> Result<WsResponse, ErrorResponse> {
        let ticket = req.uri().query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ticket=")));
        let mut s = state.lock().unwrap();
        let burn = s.expire_next_tickets > 0;
        s.expire_next_tickets = s.expire_next_tickets.saturating_sub(1);
        match ticket.and_then(|t| s.tickets.remove(t)) {
            Some(issued) if issued.elapsed() < TICKET_LIFE && !burn => Ok(resp),
            _ => {
                s.refused_tickets += 1;
                let mut refusal = ErrorResponse::new(Some("bad ticket".into()));
                *refusal.status_mut() = tungstenite::http::StatusCode::UNAUTHORIZED;
                Err(refusal)
            }
        }
    };
    let Ok(mut ws) = tungstenite::accept_hdr(stream.try_clone().unwrap(), check) else { return };
    let (tx, rx): (Sender<Command>, Receiver<Command>) = unbounded();
    *current.lock().unwrap() = Some(tx);
    connections.fetch_add(1, Ordering::SeqCst);
    stream.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    loop {
        while let Ok(command) = rx.try_recv() {
            match command {
                Command::Send(text) => {
                    if ws.send(Message::text(text)).is_err() {
                        return;
                    }
                }
                Command::Freeze(d) => thread::sleep(d),
                Command::Drop => {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    return;
                }
            }
        }
        match ws.read() {
            Ok(Message::Text(text)) => {
                let value: Value = serde_json::from_str(text.as_str()).unwrap_or(json!({"unreadable": text.as_str()}));
                state.lock().unwrap().upstream.push(value);
            }
            Ok(Message::Close(_)) => {
                let _ = ws.flush();
                return;
            }
            Ok(_) => {
                let _ = ws.flush(); // Pongs to the client's pings.
            }
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}
