//! A loopback WeChat iLink bot API and its media CDN, strict where the real one is:
//! - login: `get_bot_qrcode` (GET or POST) and a scripted `get_qrcode_status` sequence
//!   (`wait`, `scaned`, `confirmed`, `expired`, `scaned_but_redirect` to a loopback prefix,
//!   `need_verifycode`), `baseurl` pointing back at the fake;
//! - every API POST needs `iLink-App-Id`, `iLink-App-ClientVersion`, `AuthorizationType`,
//!   base64 `X-WECHAT-UIN` and the bearer token, else `-14 session timeout` (Qwen #2908);
//! - `getupdates` holds (500 ms by default), returns only messages after the cursor, with an
//!   opaque cursor; every injected message carries a fresh `context_token`;
//! - `sendmessage` wants the latest token of the user and at most ten sends per user message,
//!   else `ret -2`; accepted sends are recorded (uploaded media decrypted);
//! - `getconfig`/`sendtyping`; `getuploadurl` and CDN `/upload` (ciphertext checked against
//!   the announced key, size and MD5) answering `x-encrypted-param`; CDN `/download` serving
//!   AES-128-ECB ciphertext with keys written in each of the three encodings;
//! - faults on demand: -14 for every call, any status or body for the next call, dropped
//!   connections.
//!
//! The cipher here uses the `aes` crate directly, not tether's code, so a bug there cannot
//! hide behind the same bug here.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use aes::Aes128;
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use crate::support::http::{Reply, Request, Server};

pub const TOKEN: &str = "ilink-bot-token-1";
pub const BOT_ID: &str = "b0f5860fdecb@im.bot";
pub const OWNER: &str = "o9cq80owner@im.wechat";
/// Where a `scaned_but_redirect` sends the login poll (a path prefix on the same fake).
pub const REDIRECT_PREFIX: &str = "/redirected";
/// The prefix of the API base a confirmed login names (so a client using the login host
/// instead is caught).
pub const API_PREFIX: &str = "/api2";

/// How a media key is written in an injected message (reference §2.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyForm {
    /// `image_item.aeskey` hex.
    Hex,
    /// `media.aes_key` base64 of the 16 raw bytes.
    Base64Raw,
    /// `media.aes_key` base64 of the 32 hex characters.
    Base64Hex,
}

/// A call the fake received.
#[derive(Debug, Clone)]
pub struct Call {
    /// The endpoint, e.g. `getupdates` or `cdn/upload`.
    pub endpoint: String,
    /// The path before `ilink/bot/` (the base prefix the client used).
    pub prefix: String,
    pub body: Value,
    pub headers: Vec<(String, String)>,
}

/// A message the fake accepted.
#[derive(Debug, Clone)]
pub struct Sent {
    pub to: String,
    pub context_token: String,
    /// The text of a text item.
    pub text: Option<String>,
    /// The decrypted bytes of an image or file item, with its item type (2 image, 4 file).
    pub media: Option<(u64, Vec<u8>)>,
    pub file_name: Option<String>,
}

/// A fault for the next call of an endpoint.
#[derive(Debug, Clone)]
pub enum Fault {
    Status(u16, Value),
    /// HTTP 200 with an empty body (seen from `sendmessage`; means success).
    Empty,
    Drop,
}

impl Fault {
    pub fn session_timeout() -> Fault {
        Fault::Status(200, json!({"ret": -14, "errcode": -14, "errmsg": "session timeout"}))
    }
    pub fn busy() -> Fault {
        Fault::Status(200, json!({"ret": -1, "errcode": -1, "errmsg": "system busy"}))
    }
    pub fn bad_gateway() -> Fault {
        Fault::Status(502, json!({"errmsg": "bad gateway"}))
    }
}

struct UserContext {
    token: String,
    sends: u32,
}

#[allow(dead_code)] // `stored` is kept for debugging a failing test.
struct Upload {
    filekey: String,
    key: [u8; 16],
    rawsize: u64,
    md5: String,
    /// Set once the ciphertext arrived: the download parameter and the plaintext.
    stored: Option<(String, Vec<u8>)>,
}

#[derive(Default)]
struct State {
    /// Login statuses to answer, in order; `wait` when empty.
    login_script: VecDeque<Value>,
    qr_codes: u32,
    /// Messages by position; the cursor names how many a client has seen.
    messages: Vec<Value>,
    next_id: u64,
    contexts: HashMap<String, UserContext>,
    /// The token the API accepts now (changed by a new login).
    token: String,
    /// When set, every API call answers -14.
    expired: bool,
    hold: Duration,
    faults: Vec<(String, Fault)>,
    sent: Vec<Sent>,
    /// CDN objects by download parameter: ciphertext.
    cdn: HashMap<String, Vec<u8>>,
    uploads: HashMap<String, Upload>,
    typing: Vec<(String, u64)>,
    /// Wakes held polls.
    wake: u64,
}

pub struct FakeIlink {
    server: Server,
    state: Arc<(Mutex<State>, Condvar)>,
    history: Arc<Mutex<Vec<Call>>>,
}

impl FakeIlink {
    pub fn start() -> FakeIlink {
        let state = Arc::new((
            Mutex::new(State {
                token: TOKEN.to_string(),
                hold: Duration::from_millis(500),
                next_id: 1 << 60,
                ..Default::default()
            }),
            Condvar::new(),
        ));
        let history = Arc::new(Mutex::new(Vec::new()));
        let (handler_state, handler_history) = (state.clone(), history.clone());
        let url = Arc::new(Mutex::new(String::new()));
        let handler_url = url.clone();
        let server = Server::start(move |req| {
            let base = handler_url.lock().unwrap().clone();
            handle(&handler_state, &handler_history, &base, req)
        });
        *url.lock().unwrap() = server.url();
        FakeIlink { server, state, history }
    }

    /// The login (and default API) base.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The CDN base.
    pub fn cdn_url(&self) -> String {
        format!("{}/c2c", self.server.url())
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let (lock, cvar) = &*self.state;
        let result = f(&mut lock.lock().unwrap());
        cvar.notify_all();
        result
    }

    /// The statuses the next `get_qrcode_status` calls answer, in order: `wait`, `scaned`,
    /// `expired`, `redirect` (to [`REDIRECT_PREFIX`]), `need_verifycode`, `confirmed`.
    pub fn script_login(&self, statuses: &[&str]) {
        let url = self.url();
        let replies: Vec<Value> = statuses
            .iter()
            .map(|s| match *s {
                "redirect" => {
                    json!({"status": "scaned_but_redirect", "redirect_host": format!("{url}{REDIRECT_PREFIX}")})
                }
                "confirmed" => json!({"status": "confirmed", "bot_token": TOKEN, "ilink_bot_id": BOT_ID,
                                      "baseurl": format!("{url}{API_PREFIX}"), "ilink_user_id": OWNER}),
                other => json!({"status": other}),
            })
            .collect();
        self.with(|st| st.login_script = replies.into());
    }

    /// How many QR codes were handed out.
    pub fn qr_codes(&self) -> u32 {
        self.with(|st| st.qr_codes)
    }

    /// From now on every API call answers -14 (`true`), or is served again (`false`).
    pub fn expire_session(&self, expired: bool) {
        self.with(|st| {
            st.expired = expired;
            st.wake += 1;
        });
    }

    /// Answer the next call of `endpoint` (e.g. `sendmessage`) with `fault`.
    pub fn fail_next(&self, endpoint: &str, fault: Fault) {
        self.with(|st| st.faults.push((endpoint.to_string(), fault)));
    }

    pub fn pending_faults(&self) -> usize {
        self.with(|st| st.faults.len())
    }

    /// Queue a message from `from` with these items; returns its context token.
    pub fn push(&self, from: &str, items: Value) -> String {
        self.with(|st| {
            st.next_id += 1;
            let n = st.next_id;
            let token = format!("ctx-{}-{n}", from.split('@').next().unwrap_or(from));
            st.contexts.insert(from.to_string(), UserContext { token: token.clone(), sends: 0 });
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
            st.messages.push(json!({
                "seq": st.messages.len() + 1, "message_id": n, "from_user_id": from, "to_user_id": BOT_ID,
                "client_id": format!("c{n}"), "create_time_ms": now, "session_id": "s", "group_id": null,
                "message_type": 1, "message_state": 2, "context_token": token, "item_list": items,
            }));
            token
        })
    }

    pub fn push_text(&self, from: &str, text: &str) -> String {
        self.push(from, json!([{"type": 1, "text_item": {"text": text}}]))
    }

    /// Queue a raw message object as is (no context token bookkeeping).
    pub fn push_raw(&self, message: Value) {
        self.with(|st| st.messages.push(message));
    }

    /// Put `plain` on the CDN encrypted with a new key; the item's `media` object with the key
    /// written as `form`, and the hex key for `image_item.aeskey` when `form` is Hex.
    pub fn put_media(&self, plain: &[u8], form: KeyForm) -> (Value, Option<String>) {
        let mut key = [0u8; 16];
        getrandom::fill(&mut key).unwrap();
        let param = self.with(|st| {
            st.next_id += 1;
            let param = format!("dl/{}+=", st.next_id);
            st.cdn.insert(param.clone(), encrypt(&key, plain));
            param
        });
        let hex = hex(&key);
        match form {
            KeyForm::Hex => (json!({"encrypt_query_param": param, "encrypt_type": 1}), Some(hex)),
            KeyForm::Base64Raw => {
                (json!({"encrypt_query_param": param, "aes_key": B64.encode(key), "encrypt_type": 1}), None)
            }
            KeyForm::Base64Hex => {
                (json!({"encrypt_query_param": param, "aes_key": B64.encode(&hex), "encrypt_type": 1}), None)
            }
        }
    }

    /// Every message accepted so far, in order.
    pub fn sent(&self) -> Vec<Sent> {
        self.with(|st| st.sent.clone())
    }

    /// The texts accepted for `to`, in order.
    pub fn texts_to(&self, to: &str) -> Vec<String> {
        self.sent().into_iter().filter(|s| s.to == to).filter_map(|s| s.text).collect()
    }

    /// Wait until at least `n` texts went to `to` (at most `within`); all of them so far.
    pub fn wait_texts_to(&self, to: &str, n: usize, within: Duration) -> Vec<String> {
        crate::support::wait_until(within, || self.texts_to(to).len() >= n);
        self.texts_to(to)
    }

    /// Wait until the accepted messages satisfy `done` (at most `within`); them.
    pub fn wait_sent(&self, within: Duration, mut done: impl FnMut(&[Sent]) -> bool) -> Vec<Sent> {
        crate::support::wait_until(within, || done(&self.sent()));
        self.sent()
    }

    /// `sendtyping` calls: (user, status 1 show / 2 cancel).
    pub fn typing(&self) -> Vec<(String, u64)> {
        self.with(|st| st.typing.clone())
    }

    /// Every call of `endpoint` so far.
    pub fn calls_of(&self, endpoint: &str) -> Vec<Call> {
        self.history.lock().unwrap().iter().filter(|c| c.endpoint == endpoint).cloned().collect()
    }
}

fn encrypt(key: &[u8; 16], plain: &[u8]) -> Vec<u8> {
    let cipher = Aes128::new(GenericArray::from_slice(key));
    let pad = 16 - plain.len() % 16;
    let mut out = plain.to_vec();
    out.extend(std::iter::repeat_n(pad as u8, pad));
    for block in out.chunks_exact_mut(16) {
        cipher.encrypt_block(GenericArray::from_mut_slice(block));
    }
    out
}

fn decrypt(key: &[u8; 16], data: &[u8]) -> Option<Vec<u8>> {
    if data.is_empty() || !data.len().is_multiple_of(16) {
        return None;
    }
    let cipher = Aes128::new(GenericArray::from_slice(key));
    let mut out = data.to_vec();
    for block in out.chunks_exact_mut(16) {
        cipher.decrypt_block(GenericArray::from_mut_slice(block));
    }
    let pad = *out.last()? as usize;
    if pad == 0 || pad > 16 || out[out.len() - pad..].iter().any(|b| *b as usize != pad) {
        return None;
    }
    out.truncate(out.len() - pad);
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

fn query(path: &str, name: &str) -> Option<String> {
    let (_, q) = path.split_once('?')?;
    q.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn ok(value: Value) -> Reply {
    Reply::Json(200, value.to_string())
}

fn session_timeout() -> Reply {
    ok(json!({"ret": -14, "errcode": -14, "errmsg": "session timeout"}))
}

fn handle(state: &Arc<(Mutex<State>, Condvar)>, history: &Mutex<Vec<Call>>, base: &str, req: Request) -> Reply {
    let path_only = req.path.split('?').next().unwrap_or("").to_string();
    let (prefix, endpoint) = if let Some(at) = path_only.find("/ilink/bot/") {
        (path_only[..at].to_string(), path_only[at + "/ilink/bot/".len()..].to_string())
    } else if let Some(rest) = path_only.strip_prefix("/c2c/") {
        (String::new(), format!("cdn/{rest}"))
    } else {
        return Reply::Json(404, json!({"errmsg": "not found"}).to_string());
    };
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    history.lock().unwrap().push(Call {
        endpoint: endpoint.clone(),
        prefix: prefix.clone(),
        body: if endpoint.starts_with("cdn/") { Value::Null } else { body.clone() },
        headers: req.headers.clone(),
    });
    let fault = {
        let mut st = state.0.lock().unwrap();
        st.faults.iter().position(|(e, _)| *e == endpoint).map(|i| st.faults.remove(i).1)
    };
    match fault {
        Some(Fault::Status(code, body)) => return Reply::Json(code, body.to_string()),
        Some(Fault::Empty) => return Reply::Bytes(200, Vec::new(), Vec::new()),
        Some(Fault::Drop) => return Reply::Drop,
        None => {}
    }
    match endpoint.as_str() {
        "get_bot_qrcode" => {
            let mut st = state.0.lock().unwrap();
            st.qr_codes += 1;
            let n = st.qr_codes;
            ok(
                json!({"qrcode": format!("qr-{n}"), "qrcode_img_content": format!("https://liteapp.weixin.qq.com/q/fake{n}?qrcode=qr-{n}&bot_type=3")}),
            )
        }
        "get_qrcode_status" => {
            let mut st = state.0.lock().unwrap();
            let current = format!("qr-{}", st.qr_codes);
            if query(&req.path, "qrcode").as_deref() != Some(current.as_str()) {
                return ok(json!({"status": "expired"}));
            }
            let mut next = st.login_script.pop_front().unwrap_or_else(|| json!({"status": "wait"}));
            // A confirmation names the API base the client must use from now on.
            if next["status"] == "confirmed" {
                next["baseurl"] = json!(format!("{base}{API_PREFIX}"));
            }
            ok(next)
        }
        _ if endpoint.starts_with("cdn/") => cdn(state, &endpoint, &req),
        _ => api(state, &endpoint, &req, &body),
    }
}

/// The header checks of every API POST: what the real server answers without them.
fn authorized(st: &State, req: &Request) -> bool {
    let uin_ok = req.header("x-wechat-uin").is_some_and(|v| B64.decode(v).is_ok_and(|b| !b.is_empty()));
    req.method == "POST"
        && req.header("ilink-app-id") == Some("bot")
        && req.header("ilink-app-clientversion").is_some_and(|v| v.parse::<u32>().is_ok_and(|n| n > 0))
        && req.header("authorizationtype") == Some("ilink_bot_token")
        && req.header("authorization") == Some(format!("Bearer {}", st.token).as_str())
        && req.header("content-type") == Some("application/json")
        && uin_ok
        && !st.expired
}

fn api(state: &Arc<(Mutex<State>, Condvar)>, endpoint: &str, req: &Request, body: &Value) -> Reply {
    let (lock, cvar) = &**state;
    let mut st = lock.lock().unwrap();
    if !authorized(&st, req) {
        return session_timeout();
    }
    if body["base_info"]["channel_version"].as_str().is_none() {
        return ok(json!({"ret": -1, "errmsg": "base_info missing"}));
    }
    match endpoint {
        "getupdates" => {
            let cursor = body["get_updates_buf"].as_str().unwrap_or("");
            let seen: usize = cursor.strip_prefix("Y3Vy").and_then(|n| n.parse().ok()).unwrap_or(0);
            let wake = st.wake;
            let deadline = Instant::now() + st.hold;
            loop {
                if st.expired {
                    return session_timeout();
                }
                if st.messages.len() > seen || st.wake != wake {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                st = cvar.wait_timeout(st, left).unwrap().0;
            }
            let batch: Vec<Value> = st.messages.iter().skip(seen).take(10).cloned().collect();
            let next = seen + batch.len();
            ok(json!({"ret": 0, "msgs": batch, "get_updates_buf": format!("Y3Vy{next}"),
                      "longpolling_timeout_ms": st.hold.as_millis() as u64}))
        }
        "sendmessage" => {
            let msg = &body["msg"];
            let to = msg["to_user_id"].as_str().unwrap_or("").to_string();
            let token = msg["context_token"].as_str().unwrap_or("").to_string();
            let valid = st.contexts.get(&to).is_some_and(|c| c.token == token && c.sends < 10);
            if !valid || msg["message_type"] != 2 || msg["client_id"].as_str().is_none_or(str::is_empty) {
                return ok(json!({"ret": -2}));
            }
            let items = msg["item_list"].as_array().cloned().unwrap_or_default();
            if items.len() != 1 {
                return ok(json!({"ret": -1, "errmsg": "one item per message"}));
            }
            let item = &items[0];
            let kind = item["type"].as_u64().unwrap_or(0);
            let mut sent = Sent { to: to.clone(), context_token: token, text: None, media: None, file_name: None };
            match kind {
                1 => match item["text_item"]["text"].as_str() {
                    Some(text) if !text.is_empty() => sent.text = Some(text.to_string()),
                    _ => return ok(json!({"ret": -1, "errmsg": "empty text"})),
                },
                2 | 4 => {
                    let holder = if kind == 2 { &item["image_item"] } else { &item["file_item"] };
                    let media = &holder["media"];
                    let param = media["encrypt_query_param"].as_str().unwrap_or("");
                    let key = media["aes_key"].as_str().and_then(|k| B64.decode(k).ok());
                    // Tencent's form: base64 of the hex key (Qwen's raw form also accepted).
                    let key: Option<[u8; 16]> = key.and_then(|k| match k.len() {
                        32 => unhex(std::str::from_utf8(&k).ok()?)?.try_into().ok(),
                        16 => k.try_into().ok(),
                        _ => None,
                    });
                    let plain = key.and_then(|k| st.cdn.get(param).and_then(|c| decrypt(&k, c)));
                    let Some(plain) = plain else {
                        return ok(json!({"ret": -1, "errmsg": "media not found or key wrong"}));
                    };
                    sent.media = Some((kind, plain));
                    sent.file_name = holder["file_name"].as_str().map(str::to_string);
                }
                _ => return ok(json!({"ret": -1, "errmsg": "unsupported item"})),
            }
            if let Some(c) = st.contexts.get_mut(&to) {
                c.sends += 1;
            }
            st.sent.push(sent);
            ok(json!({"ret": 0}))
        }
        "getconfig" => {
            let user = body["ilink_user_id"].as_str().unwrap_or("");
            let token = body["context_token"].as_str().unwrap_or("");
            if st.contexts.get(user).is_none_or(|c| c.token != token) {
                return ok(json!({"ret": -2}));
            }
            ok(json!({"ret": 0, "typing_ticket": B64.encode(format!("ticket-{user}"))}))
        }
        "sendtyping" => {
            let user = body["ilink_user_id"].as_str().unwrap_or("").to_string();
            if body["typing_ticket"].as_str() != Some(B64.encode(format!("ticket-{user}")).as_str()) {
                return ok(json!({"ret": -1, "errmsg": "bad ticket"}));
            }
            let status = body["status"].as_u64().unwrap_or(0);
            st.typing.push((user, status));
            ok(json!({"ret": 0}))
        }
        "getuploadurl" => {
            let (Some(filekey), Some(aeskey), Some(rawsize), Some(md5)) = (
                body["filekey"].as_str(),
                body["aeskey"].as_str().and_then(unhex).and_then(|k| <[u8; 16]>::try_from(k).ok()),
                body["rawsize"].as_u64(),
                body["rawfilemd5"].as_str(),
            ) else {
                return ok(json!({"ret": -1, "errmsg": "bad getuploadurl"}));
            };
            if body["filesize"].as_u64() != Some((rawsize / 16 + 1) * 16) {
                return ok(json!({"ret": -1, "errmsg": "filesize is not the padded size"}));
            }
            st.next_id += 1;
            let param = format!("up/{}", st.next_id);
            let upload =
                Upload { filekey: filekey.to_string(), key: aeskey, rawsize, md5: md5.to_string(), stored: None };
            st.uploads.insert(param.clone(), upload);
            ok(json!({"ret": 0, "upload_param": param}))
        }
        "msg/notifystart" | "msg/notifystop" => ok(json!({"ret": 0})),
        _ => Reply::Json(404, json!({"errmsg": "unknown endpoint"}).to_string()),
    }
}

fn cdn(state: &Arc<(Mutex<State>, Condvar)>, endpoint: &str, req: &Request) -> Reply {
    let mut st = state.0.lock().unwrap();
    let param = query(&req.path, "encrypted_query_param").unwrap_or_default();
    match endpoint {
        "cdn/download" if req.method == "GET" => match st.cdn.get(&param) {
            Some(cipher) => {
                Reply::Bytes(200, vec![("Content-Type".into(), "application/octet-stream".into())], cipher.clone())
            }
            None => Reply::Bytes(404, vec![("x-error-message".into(), "no such object".into())], Vec::new()),
        },
        "cdn/upload" if req.method == "POST" => {
            let filekey = query(&req.path, "filekey").unwrap_or_default();
            let Some(upload) = st.uploads.get(&param) else {
                return Reply::Bytes(400, vec![("x-error-message".into(), "unknown upload_param".into())], Vec::new());
            };
            if upload.filekey != filekey {
                return Reply::Bytes(400, vec![("x-error-message".into(), "filekey mismatch".into())], Vec::new());
            }
            let Some(plain) = decrypt(&upload.key, &req.body) else {
                return Reply::Bytes(400, vec![("x-error-message".into(), "cannot decrypt".into())], Vec::new());
            };
            if plain.len() as u64 != upload.rawsize || hex(&md5::Md5::digest(&plain)) != upload.md5 {
                return Reply::Bytes(400, vec![("x-error-message".into(), "size or md5 mismatch".into())], Vec::new());
            }
            let download = format!("dl-{param}");
            st.cdn.insert(download.clone(), req.body.clone());
            if let Some(upload) = st.uploads.get_mut(&param) {
                upload.stored = Some((download.clone(), plain));
            }
            Reply::Bytes(200, vec![("x-encrypted-param".into(), download)], Vec::new())
        }
        _ => Reply::Bytes(405, Vec::new(), Vec::new()),
    }
}

use md5::Digest;
