//! A loopback Discord: REST under `/api/v10` (gateway URL, messages with the 2000-character
//! rule, edits, typing, interaction callbacks, channel history, channels) with rate-limit
//! headers and injectable 429s, and a WebSocket gateway scripted by the test: Hello, Identify
//! checked (bad token → 4004, refused intents → 4014), READY, sequenced dispatches kept per
//! session and replayed on Resume, heartbeat ACKs that can be withheld, op 7 / op 9 / op 1
//! on demand, close codes and dropped sockets. Everything the client sent is recorded.

use std::collections::{HashMap, VecDeque};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

use crate::support::http::{Reply, Request, Server};

pub const TOKEN: &str = "MTA.fake-discord.token";
pub const BOT_ID: &str = "987654321098765432";
pub const BOT_NAME: &str = "tether_test";

/// What the test asks the current gateway connection to do.
#[derive(Debug, Clone)]
pub enum Command {
    /// op 7.
    Reconnect,
    /// op 9 with this `d`.
    InvalidSession(bool),
    /// op 1: the client must heartbeat at once.
    RequestHeartbeat,
    /// Close with a code.
    Close(u16, &'static str),
    /// Shut the socket without a close frame.
    Drop,
}

/// A REST call the fake received.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub body: Value,
}

#[derive(Default)]
struct Gateway {
    /// Handshake paths (with query) of every connection, in order.
    connections: Vec<String>,
    /// The newest connection's number; commands go to it.
    current: u64,
    commands: VecDeque<Command>,
    /// Every dispatch: (seq, session number, name, d).
    events: Vec<(u64, u64, String, Value)>,
    seq: u64,
    /// Session ids handed out; the index is the session number.
    sessions: Vec<String>,
    /// Sessions that can no longer be resumed.
    dead_sessions: Vec<String>,
    heartbeat_interval_ms: u64,
    /// Connections still to accept and then say nothing on (no Hello): a broken proxy.
    silent_connections: u32,
    withhold_acks: bool,
    refuse_intents: bool,
    identifies: Vec<Value>,
    resumes: Vec<Value>,
    heartbeats: Vec<(u64, Option<u64>)>,
    /// Close codes the client sent.
    client_closes: Vec<u16>,
}

#[derive(Default)]
struct Rest {
    calls: Vec<Call>,
    /// Messages per channel (sent by users via dispatches and by the bot via REST), in order.
    history: HashMap<String, Vec<Value>>,
    /// Known threads: thread id → parent channel id.
    threads: HashMap<String, String>,
    /// 429s to answer: (path prefix, retry_after seconds, global).
    throttles: Vec<(String, f64, bool)>,
    /// Sends per channel in the current window, for the bucket headers.
    bucket: HashMap<String, (Instant, u32)>,
    /// Sends refused because the client ignored `X-RateLimit-Remaining: 0`.
    violations: u32,
    /// Interactions injected and not yet answered: id → token.
    interactions: HashMap<String, String>,
    /// Attachment bytes served at `/cdn/{name}` (no authorization, as Discord's CDN).
    files: HashMap<String, String>,
    /// Files the bot attached to its messages, in order.
    uploads: Vec<Upload>,
}

/// A file the bot sent: a multipart message with `payload_json` and `files[0]`.
#[derive(Debug, Clone)]
pub struct Upload {
    pub channel: String,
    /// The message's text (the caption).
    pub content: String,
    pub file_name: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// How many messages a channel may take per window before a 429.
const BUCKET_LIMIT: u32 = 5;
const BUCKET_WINDOW: Duration = Duration::from_millis(1000);

struct Shared {
    gateway: Mutex<Gateway>,
    rest: Mutex<Rest>,
    ids: AtomicU64,
    ws_port: u16,
}

pub struct FakeDiscord {
    server: Server,
    shared: Arc<Shared>,
}

impl FakeDiscord {
    pub fn start() -> FakeDiscord {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ws_port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            gateway: Mutex::new(Gateway { heartbeat_interval_ms: 45_000, ..Default::default() }),
            rest: Mutex::new(Rest::default()),
            ids: AtomicU64::new(0),
            ws_port,
        });
        let accept_shared = shared.clone();
        thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                let shared = accept_shared.clone();
                thread::spawn(move || serve_gateway(tcp, &shared));
            }
        });
        let rest_shared = shared.clone();
        let server = Server::start(move |req| handle_rest(&rest_shared, req));
        FakeDiscord { server, shared }
    }

    /// The `apiBase` to configure.
    pub fn api_base(&self) -> String {
        format!("{}/api/v10", self.server.url())
    }

    pub fn set_heartbeat_interval(&self, ms: u64) {
        self.gw().heartbeat_interval_ms = ms;
    }

    /// The next `n` gateway connections are accepted and left silent: no Hello, ever.
    pub fn silence_connections(&self, n: u32) {
        self.gw().silent_connections = n;
    }

    /// Stop (or resume) answering heartbeats with op 11.
    pub fn withhold_acks(&self, on: bool) {
        self.gw().withhold_acks = on;
    }

    /// Identify is answered with close 4014 (Message Content intent not enabled).
    pub fn refuse_intents(&self) {
        self.gw().refuse_intents = true;
    }

    /// Sessions so far can no longer be resumed (a Resume gets op 9 `false`).
    pub fn expire_sessions(&self) {
        let mut g = self.gw();
        let all = g.sessions.clone();
        g.dead_sessions.extend(all);
    }

    pub fn command(&self, command: Command) {
        self.gw().commands.push_back(command);
    }

    /// Register a thread of `parent` (for `GET /channels/{thread}`).
    pub fn add_thread(&self, thread: &str, parent: &str) {
        self.rest().threads.insert(thread.to_string(), parent.to_string());
    }

    /// Answer the next call whose path starts with `prefix` (after `/api/v10`) with a 429.
    pub fn throttle_next(&self, prefix: &str, retry_after: f64, global: bool) {
        self.rest().throttles.push((prefix.to_string(), retry_after, global));
    }

    /// A new snowflake, dated now.
    pub fn snowflake(&self) -> String {
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64 - 1_420_070_400_000;
        let n = self.shared.ids.fetch_add(1, Ordering::SeqCst) % 4096;
        ((ms << 22) | n).to_string()
    }

    /// A DM from `user` (its DM channel id is `1000` + the user id's last digits).
    pub fn dm(&self, user: &str, text: &str) -> String {
        let id = self.snowflake();
        let channel = dm_channel(user);
        self.dispatch_message(json!({
            "id": id, "channel_id": channel, "channel_type": 1, "type": 0, "content": text,
            "author": {"id": user, "username": format!("user{user}"), "global_name": format!("User {user}")},
            "mentions": [], "attachments": [],
        }));
        id
    }

    /// A DM from `user` with a file `name` holding `content`, served by the fake's CDN.
    pub fn dm_with_file(&self, user: &str, text: &str, name: &str, content: &str) -> String {
        self.rest().files.insert(name.to_string(), content.to_string());
        let id = self.snowflake();
        self.dispatch_message(json!({
            "id": id, "channel_id": dm_channel(user), "channel_type": 1, "type": 0, "content": text,
            "author": {"id": user, "username": format!("user{user}")}, "mentions": [],
            "attachments": [{"id": self.snowflake(), "filename": name, "content_type": "text/plain", "size": content.len(),
                             "url": format!("{}/cdn/{name}?ex=1&is=2&hm=3", self.server.url()), "proxy_url": "x"}],
        }));
        id
    }

    /// A message in guild channel `channel`; `mention` adds the bot's `<@id>` in front.
    pub fn guild(&self, channel: &str, user: &str, text: &str, mention: bool) -> String {
        let d = self.guild_message(channel, user, text, mention);
        let id = d["id"].as_str().unwrap().to_string();
        self.dispatch_message(d);
        id
    }

    /// Like [`FakeDiscord::guild`], but the gateway never delivers it (posted while the bot's
    /// session was lost): only the channel history has it.
    pub fn guild_missed(&self, channel: &str, user: &str, text: &str, mention: bool) -> String {
        let d = self.guild_message(channel, user, text, mention);
        let id = d["id"].as_str().unwrap().to_string();
        self.rest().history.entry(channel.to_string()).or_default().push(d);
        id
    }

    fn guild_message(&self, channel: &str, user: &str, text: &str, mention: bool) -> Value {
        let id = self.snowflake();
        let (content, mentions) = if mention {
            (format!("<@{BOT_ID}> {text}"), json!([{"id": BOT_ID, "username": BOT_NAME, "bot": true}]))
        } else {
            (text.to_string(), json!([]))
        };
        let channel_type = if self.rest().threads.contains_key(channel) { 11 } else { 0 };
        json!({
            "id": id, "channel_id": channel, "guild_id": "81384788765712384", "channel_type": channel_type, "type": 0,
            "content": content, "author": {"id": user, "username": format!("user{user}")},
            "member": {"nick": null, "roles": []}, "mentions": mentions, "attachments": [],
        })
    }

    /// A reply (without ping) to bot message `to` in guild channel `channel`.
    pub fn reply_to_bot(&self, channel: &str, user: &str, text: &str, to: &str) -> String {
        let id = self.snowflake();
        self.dispatch_message(json!({
            "id": id, "channel_id": channel, "guild_id": "81384788765712384", "channel_type": 0, "type": 19,
            "content": text, "author": {"id": user, "username": format!("user{user}")}, "mentions": [],
            "attachments": [], "message_reference": {"message_id": to, "channel_id": channel},
            "referenced_message": {"id": to, "content": "earlier", "author": {"id": BOT_ID, "username": BOT_NAME, "bot": true}},
        }));
        id
    }

    /// A message from another bot, or from ourselves (`author` = [`BOT_ID`]).
    pub fn bot_message(&self, channel: &str, author: &str, text: &str) -> String {
        let id = self.snowflake();
        self.dispatch_message(json!({
            "id": id, "channel_id": channel, "channel_type": 1, "type": 0, "content": text,
            "author": {"id": author, "username": "somebot", "bot": true}, "mentions": [], "attachments": [],
        }));
        id
    }

    /// A click on button `custom_id` by `user` in `channel`; returns the interaction id.
    pub fn click(&self, channel: &str, user: &str, custom_id: &str, guild: bool) -> String {
        let id = self.snowflake();
        let token = format!("itoken-{id}");
        self.rest().interactions.insert(id.clone(), token.clone());
        let mut d = json!({"id": id, "application_id": "1", "type": 3, "token": token, "channel_id": channel,
                           "data": {"custom_id": custom_id, "component_type": 2}, "message": {"id": "1"}});
        let user = json!({"id": user, "username": format!("user{user}")});
        if guild {
            d["guild_id"] = json!("81384788765712384");
            d["member"] = json!({"user": user, "nick": null});
        } else {
            d["user"] = user;
        }
        self.dispatch("INTERACTION_CREATE", d);
        id
    }

    /// Queue a dispatch for the current session (and keep it for replay on Resume).
    pub fn dispatch(&self, name: &str, d: Value) {
        let mut g = self.gw();
        g.seq += 1;
        let (seq, session) = (g.seq, g.sessions.len() as u64);
        g.events.push((seq, session, name.to_string(), d));
    }

    fn dispatch_message(&self, d: Value) {
        let channel = d["channel_id"].as_str().unwrap().to_string();
        self.rest().history.entry(channel).or_default().push(d.clone());
        self.dispatch("MESSAGE_CREATE", d);
    }

    /// Handshake paths of the gateway connections so far.
    pub fn connections(&self) -> Vec<String> {
        self.gw().connections.clone()
    }

    pub fn identifies(&self) -> Vec<Value> {
        self.gw().identifies.clone()
    }

    pub fn resumes(&self) -> Vec<Value> {
        self.gw().resumes.clone()
    }

    /// (connection number, `d`) of every heartbeat.
    pub fn heartbeats(&self) -> Vec<(u64, Option<u64>)> {
        self.gw().heartbeats.clone()
    }

    pub fn client_closes(&self) -> Vec<u16> {
        self.gw().client_closes.clone()
    }

    /// Files the bot sent, in order.
    pub fn uploads(&self) -> Vec<Upload> {
        self.rest().uploads.clone()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.rest().calls.clone()
    }

    /// Bodies of the messages the bot posted to `channel`, in order.
    pub fn posted(&self, channel: &str) -> Vec<Value> {
        let suffix = format!("/channels/{channel}/messages");
        self.calls().into_iter().filter(|c| c.method == "POST" && c.path.ends_with(&suffix)).map(|c| c.body).collect()
    }

    /// Wait until the bot posted a message to `channel` whose content satisfies `want`.
    pub fn wait_post(&self, channel: &str, within: Duration, want: impl Fn(&str) -> bool) -> Option<Value> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(b) = self.posted(channel).into_iter().find(|b| want(b["content"].as_str().unwrap_or(""))) {
                return Some(b);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn violations(&self) -> u32 {
        self.rest().violations
    }

    pub fn dm_channel(user: &str) -> String {
        dm_channel(user)
    }

    fn gw(&self) -> std::sync::MutexGuard<'_, Gateway> {
        self.shared.gateway.lock().unwrap()
    }

    fn rest(&self) -> std::sync::MutexGuard<'_, Rest> {
        self.shared.rest.lock().unwrap()
    }
}

fn dm_channel(user: &str) -> String {
    format!("1000{user}")
}

fn json_reply(status: u16, body: Value) -> Reply {
    Reply::Json(status, body.to_string())
}

fn handle_rest(shared: &Shared, req: Request) -> Reply {
    // An upload carries the message's JSON in `payload_json` and the file in `files[0]`.
    let form = super::http::parse_form(&req);
    let upload = form.as_ref().and_then(|f| f.file.clone());
    let body: Value = match &form {
        Some(form) => form.fields.get("payload_json").and_then(|j| serde_json::from_str(j).ok()).unwrap_or(Value::Null),
        None => serde_json::from_slice(&req.body).unwrap_or(Value::Null),
    };
    if let Some(name) = req.path.strip_prefix("/cdn/") {
        let name = name.split('?').next().unwrap_or_default();
        return match shared.rest.lock().unwrap().files.get(name) {
            Some(content) => Reply::Full(200, Vec::new(), content.clone()),
            None => json_reply(404, json!({"message": "not found"})),
        };
    }
    let Some(path) = req.path.strip_prefix("/api/v10") else {
        return json_reply(404, json!({"message": "404: Not Found", "code": 0}));
    };
    let path = path.to_string();
    let mut rest = shared.rest.lock().unwrap();
    rest.calls.push(Call { method: req.method.clone(), path: path.clone(), body: body.clone() });
    if req.header("authorization") != Some(&format!("Bot {TOKEN}")) {
        return json_reply(401, json!({"message": "401: Unauthorized", "code": 0}));
    }
    if let Some(i) = rest.throttles.iter().position(|(prefix, _, _)| path.starts_with(prefix.as_str())) {
        let (_, retry_after, global) = rest.throttles.remove(i);
        let mut headers = vec![("Retry-After".to_string(), format!("{}", retry_after.ceil() as u64))];
        if global {
            headers.push(("X-RateLimit-Global".to_string(), "true".to_string()));
        }
        return Reply::Full(
            429,
            headers,
            json!({"message": "You are being rate limited.", "retry_after": retry_after, "global": global}).to_string(),
        );
    }
    let query = path.split_once('?').map(|(_, q)| q.to_string()).unwrap_or_default();
    let segments: Vec<&str> = path.split('?').next().unwrap().split('/').filter(|s| !s.is_empty()).collect();
    match (req.method.as_str(), segments.as_slice()) {
        ("GET", ["gateway", "bot"]) => json_reply(
            200,
            json!({"url": format!("ws://127.0.0.1:{}", shared.ws_port), "shards": 1,
                   "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 14_400_000, "max_concurrency": 1}}),
        ),
        ("POST", ["channels", channel, "messages"]) => {
            let channel = channel.to_string();
            let content = body["content"].as_str().unwrap_or("");
            if content.chars().count() > 2000 {
                return json_reply(
                    400,
                    json!({"message": "Invalid Form Body", "code": 50035,
                    "errors": {"content": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}]}}}),
                );
            }
            if let Some((field, file_name, content_type, bytes)) = &upload {
                let named = body["attachments"][0]["filename"].as_str() == Some(file_name.as_str());
                if field != "files[0]" || !named {
                    return json_reply(400, json!({"message": "Invalid Form Body", "code": 50035}));
                }
                rest.uploads.push(Upload {
                    channel: channel.clone(),
                    content: content.to_string(),
                    file_name: file_name.clone(),
                    content_type: content_type.clone(),
                    bytes: bytes.clone(),
                });
            }
            if content.is_empty() && body.get("components").is_none() && upload.is_none() {
                return json_reply(400, json!({"message": "Cannot send an empty message", "code": 50006}));
            }
            // The bucket: BUCKET_LIMIT sends per channel per window.
            let now = Instant::now();
            let (start, used) = rest.bucket.get(&channel).copied().unwrap_or((now, 0));
            let (start, used) = if now.duration_since(start) >= BUCKET_WINDOW { (now, 0) } else { (start, used) };
            let reset_after = BUCKET_WINDOW.saturating_sub(now.duration_since(start)).as_secs_f64();
            if used >= BUCKET_LIMIT {
                rest.violations += 1;
                return Reply::Full(
                    429,
                    vec![("Retry-After".into(), "1".into()), ("X-RateLimit-Bucket".into(), "fakebucket".into())],
                    json!({"message": "You are being rate limited.", "retry_after": reset_after, "global": false})
                        .to_string(),
                );
            }
            rest.bucket.insert(channel.clone(), (start, used + 1));
            let id = next_snowflake(shared);
            let message = json!({"id": id, "channel_id": channel, "content": content, "type": 0,
                                 "author": {"id": BOT_ID, "username": BOT_NAME, "bot": true},
                                 "components": body.get("components").cloned().unwrap_or(json!([]))});
            rest.history.entry(channel).or_default().push(message.clone());
            let headers = vec![
                ("X-RateLimit-Limit".to_string(), BUCKET_LIMIT.to_string()),
                ("X-RateLimit-Remaining".to_string(), (BUCKET_LIMIT - used - 1).to_string()),
                ("X-RateLimit-Reset-After".to_string(), format!("{reset_after:.3}")),
                ("X-RateLimit-Bucket".to_string(), "fakebucket".to_string()),
            ];
            Reply::Full(200, headers, message.to_string())
        }
        ("PATCH", ["channels", channel, "messages", id]) => {
            let content = body["content"].as_str().unwrap_or("").to_string();
            if content.chars().count() > 2000 {
                return json_reply(400, json!({"message": "Invalid Form Body", "code": 50035}));
            }
            let found = rest.history.get_mut(*channel).and_then(|h| h.iter_mut().find(|m| m["id"] == *id));
            match found {
                Some(m) if m["author"]["id"] == BOT_ID => {
                    m["content"] = json!(content);
                    m["components"] = body.get("components").cloned().unwrap_or(m["components"].clone());
                    json_reply(200, m.clone())
                }
                Some(_) => {
                    json_reply(403, json!({"message": "Cannot edit a message authored by another user", "code": 50005}))
                }
                None => json_reply(404, json!({"message": "Unknown Message", "code": 10008})),
            }
        }
        ("POST", ["channels", _, "typing"]) => Reply::Full(204, Vec::new(), String::new()),
        ("POST", ["interactions", id, token, "callback"]) => match rest.interactions.get(*id) {
            Some(known) if known == token => {
                rest.interactions.remove(*id);
                Reply::Full(204, Vec::new(), String::new())
            }
            Some(_) => json_reply(401, json!({"message": "Invalid interaction token", "code": 50027})),
            None => json_reply(404, json!({"message": "Unknown interaction", "code": 10062})),
        },
        ("GET", ["channels", channel, "messages"]) => {
            let after: u64 = query_value(&query, "after").and_then(|a| a.parse().ok()).unwrap_or(0);
            let limit: usize = query_value(&query, "limit").and_then(|a| a.parse().ok()).unwrap_or(50).min(100);
            let mut list: Vec<Value> = rest
                .history
                .get(*channel)
                .map(|h| {
                    h.iter().filter(|m| m["id"].as_str().unwrap().parse::<u64>().unwrap() > after).cloned().collect()
                })
                .unwrap_or_default();
            // As REST gives them: no `guild_id`, `channel_type` or `member`; newest first.
            for m in &mut list {
                if let Some(map) = m.as_object_mut() {
                    map.remove("guild_id");
                    map.remove("channel_type");
                    map.remove("member");
                }
            }
            list.reverse();
            list.truncate(limit);
            json_reply(200, json!(list))
        }
        ("GET", ["channels", channel]) => match rest.threads.get(*channel) {
            Some(parent) => json_reply(200, json!({"id": channel, "type": 11, "parent_id": parent})),
            None => json_reply(200, json!({"id": channel, "type": 0, "parent_id": null})),
        },
        _ => json_reply(404, json!({"message": "404: Not Found", "code": 0})),
    }
}

fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v.to_string()))
}

fn next_snowflake(shared: &Shared) -> String {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64 - 1_420_070_400_000;
    let n = shared.ids.fetch_add(1, Ordering::SeqCst) % 4096;
    ((ms << 22) | n).to_string()
}

/// One gateway connection: Hello, then client frames, test commands and new dispatches.
fn serve_gateway(tcp: TcpStream, shared: &Shared) {
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut path = String::new();
    #[allow(clippy::result_large_err)] // tungstenite's callback signature.
    let callback = |req: &tungstenite::handshake::server::Request, resp| {
        path = req.uri().to_string();
        Ok(resp)
    };
    let Ok(mut ws) = tungstenite::accept_hdr(tcp, callback) else { return };
    ws.get_mut().set_read_timeout(Some(Duration::from_millis(15))).unwrap();
    let (me, interval, silent) = {
        let mut g = shared.gateway.lock().unwrap();
        g.connections.push(path);
        g.current += 1;
        let silent = g.silent_connections > 0;
        g.silent_connections = g.silent_connections.saturating_sub(1);
        (g.current, g.heartbeat_interval_ms, silent)
    };
    // A silent connection never says Hello: the client, waiting for it, sends nothing until it
    // gives up and closes (recorded below like any close).
    if !silent && send(&mut ws, json!({"op": 10, "d": {"heartbeat_interval": interval}, "s": null, "t": null})).is_err()
    {
        return;
    }
    // Session number this connection serves and the last seq it delivered, once ready.
    let mut ready: Option<(u64, u64)> = None;
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
                if !client_frame(&mut ws, shared, me, &frame, &mut ready) {
                    return;
                }
            }
            Ok(Message::Close(frame)) => {
                if let Some(f) = frame {
                    shared.gateway.lock().unwrap().client_closes.push(u16::from(f.code));
                }
                let _ = ws.flush();
                return;
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
        // Test commands, for the newest connection only.
        let command = {
            let mut g = shared.gateway.lock().unwrap();
            if g.current == me { g.commands.pop_front() } else { None }
        };
        let sent = match command {
            None => Ok(()),
            Some(Command::Reconnect) => send(&mut ws, json!({"op": 7, "d": null})),
            Some(Command::InvalidSession(d)) => send(&mut ws, json!({"op": 9, "d": d})),
            Some(Command::RequestHeartbeat) => send(&mut ws, json!({"op": 1, "d": null})),
            Some(Command::Close(code, reason)) => {
                close(&mut ws, code, reason);
                continue;
            }
            Some(Command::Drop) => {
                let _ = ws.get_mut().shutdown(std::net::Shutdown::Both);
                return;
            }
        };
        if sent.is_err() {
            return;
        }
        if let Some((session, delivered)) = ready {
            let pending: Vec<(u64, String, Value)> = {
                let g = shared.gateway.lock().unwrap();
                g.events
                    .iter()
                    .filter(|(seq, s, _, _)| *seq > delivered && *s == session)
                    .map(|(seq, _, n, d)| (*seq, n.clone(), d.clone()))
                    .collect()
            };
            for (seq, name, d) in pending {
                if send(&mut ws, json!({"op": 0, "s": seq, "t": name, "d": d})).is_err() {
                    return;
                }
                ready = Some((session, seq));
            }
        }
    }
}

/// Handle one client frame; false when the connection is over.
fn client_frame(
    ws: &mut WebSocket<TcpStream>,
    shared: &Shared,
    me: u64,
    frame: &Value,
    ready: &mut Option<(u64, u64)>,
) -> bool {
    let d = &frame["d"];
    match frame["op"].as_u64() {
        Some(1) => {
            let withhold = {
                let mut g = shared.gateway.lock().unwrap();
                g.heartbeats.push((me, d.as_u64()));
                g.withhold_acks
            };
            withhold || send(ws, json!({"op": 11})).is_ok()
        }
        Some(2) => {
            let mut g = shared.gateway.lock().unwrap();
            g.identifies.push(d.clone());
            if d["token"] != TOKEN {
                drop(g);
                close(ws, 4004, "Authentication failed.");
                return true;
            }
            if g.refuse_intents {
                drop(g);
                close(ws, 4014, "Disallowed intent(s).");
                return true;
            }
            let session_id = format!("session-{}", g.sessions.len() + 1);
            g.sessions.push(session_id.clone());
            g.seq += 1;
            let seq = g.seq;
            let session = g.sessions.len() as u64;
            drop(g);
            *ready = Some((session, seq));
            send(
                ws,
                json!({"op": 0, "s": seq, "t": "READY", "d": {
                "v": 10, "user": {"id": BOT_ID, "username": BOT_NAME, "bot": true}, "guilds": [],
                "session_id": session_id, "resume_gateway_url": format!("ws://127.0.0.1:{}/resume", shared.ws_port),
                "application": {"id": "1", "flags": 0}}}),
            )
            .is_ok()
        }
        Some(6) => {
            let mut g = shared.gateway.lock().unwrap();
            g.resumes.push(d.clone());
            let session_id = d["session_id"].as_str().unwrap_or("");
            let index = g.sessions.iter().position(|s| s == session_id);
            match index {
                Some(i) if !g.dead_sessions.iter().any(|s| s == session_id) && d["token"] == TOKEN => {
                    let session = i as u64 + 1;
                    let from = d["seq"].as_u64().unwrap_or(0);
                    // Replay what the client missed, then RESUMED.
                    let missed: Vec<(u64, String, Value)> = g
                        .events
                        .iter()
                        .filter(|(seq, s, _, _)| *seq > from && *s == session)
                        .map(|(seq, _, n, d)| (*seq, n.clone(), d.clone()))
                        .collect();
                    g.seq += 1;
                    let resumed = g.seq;
                    g.events.push((resumed, session, "RESUMED".into(), json!({})));
                    drop(g);
                    let mut last = from;
                    for (seq, name, d) in missed {
                        if send(ws, json!({"op": 0, "s": seq, "t": name, "d": d})).is_err() {
                            return false;
                        }
                        last = seq;
                    }
                    *ready = Some((session, last));
                    true
                }
                _ => {
                    drop(g);
                    send(ws, json!({"op": 9, "d": false})).is_ok()
                }
            }
        }
        _ => true,
    }
}

fn send(ws: &mut WebSocket<TcpStream>, frame: Value) -> Result<(), tungstenite::Error> {
    ws.send(Message::text(frame.to_string()))
}

fn close(ws: &mut WebSocket<TcpStream>, code: u16, reason: &'static str) {
    let _ = ws.close(Some(CloseFrame { code: CloseCode::from(code), reason: reason.into() }));
    let _ = ws.flush();
}
