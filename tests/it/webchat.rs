//! `tether demo` end to end: the web chat over raw HTTP and WebSocket, the built-in agent
//! behind it, tether as a real process.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::Message;

use crate::support::{TempDir, run_tether, tether_bin};

/// `tether demo` on a free port; killed when dropped.
struct Demo {
    child: Child,
    addr: String,
    first_line: String,
}

impl Demo {
    fn start(home: &TempDir) -> Demo {
        let mut child = Command::new(tether_bin())
            .args(["demo", "--listen", "127.0.0.1:0", "--home"])
            .arg(home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let first_line = rx.recv_timeout(Duration::from_secs(20)).expect("tether demo printed nothing");
        let url_line = rx.recv_timeout(Duration::from_secs(20)).expect("tether demo printed no URL");
        let addr = url_line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("no URL in {url_line:?}"))
            .to_string();
        let admin_line = rx.recv_timeout(Duration::from_secs(20)).expect("tether demo printed no admin URL");
        assert!(admin_line.contains(&format!("http://{addr}/admin?admin_token=")), "{admin_line}");
        Demo { child, addr, first_line }
    }

    /// GET a path; returns (status line, headers, body).
    fn get(&self, path: &str) -> (String, String, String) {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.addr).unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        (status.to_string(), headers.to_string(), body.to_string())
    }

    fn socket(&self, sid_cookie: &str) -> tungstenite::WebSocket<TcpStream> {
        ws_connect(&self.addr, sid_cookie)
    }
}

/// A WebSocket to the web chat at `addr`, as the browser holding `sid_cookie`.
pub(crate) fn ws_connect(addr: &str, sid_cookie: &str) -> tungstenite::WebSocket<TcpStream> {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = tungstenite::http::Request::builder()
        .uri(format!("ws://{addr}/ws"))
        .header("Host", addr)
        .header("Origin", format!("http://{addr}"))
        .header("Cookie", sid_cookie)
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", tungstenite::handshake::client::generate_key())
        .body(())
        .unwrap();
    tungstenite::client(request, stream).unwrap().0
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn next_frame(ws: &mut tungstenite::WebSocket<TcpStream>, deadline: Instant) -> Option<Value> {
    while Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Text(text)) => return serde_json::from_str(text.as_str()).ok(),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
    None
}

#[test]
fn demo_serves_the_page_and_answers_with_the_built_in_agent() {
    let home = TempDir::new("demo");
    let demo = Demo::start(&home);
    assert!(demo.first_line.contains("built-in demo agent"), "{}", demo.first_line);

    let (status, headers, body) = demo.get("/");
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("<html") || body.contains("<!doctype") || body.contains("<!DOCTYPE"));
    let cookie = headers
        .lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: ").or_else(|| l.strip_prefix("set-cookie: ")))
        .and_then(|c| c.split(';').next())
        .expect("the page sets a browser id cookie")
        .to_string();

    let mut ws = demo.socket(&cookie);
    let deadline = Instant::now() + Duration::from_secs(20);
    let history = next_frame(&mut ws, deadline).expect("history frame");
    assert_eq!(history["type"], "history");
    ws.send(Message::text(json!({"type": "message", "text": "hello from the browser"}).to_string())).unwrap();

    let mut drafts = 0;
    let answer = loop {
        let frame = next_frame(&mut ws, deadline).expect("the answer did not arrive");
        match frame["type"].as_str() {
            Some("draft") => drafts += 1,
            Some("message") if frame["from"] == "agent" => break frame["text"].as_str().unwrap_or("").to_string(),
            _ => {}
        }
    };
    assert_eq!(answer, "echo: hello from the browser");
    // Drafts are coalesced (one per 100 ms at most): a short answer may show as one.
    assert!(drafts >= 1, "the answer streamed as drafts ({drafts})");

    // A reload gets the conversation back.
    let mut again = demo.socket(&cookie);
    let history = next_frame(&mut again, Instant::now() + Duration::from_secs(10)).expect("history");
    let texts: Vec<&str> = history["messages"].as_array().unwrap().iter().filter_map(|m| m["text"].as_str()).collect();
    assert!(texts.contains(&"hello from the browser") && texts.contains(&"echo: hello from the browser"), "{texts:?}");
}

#[test]
fn demo_refuses_a_public_address_without_a_token() {
    let home = TempDir::new("demo-public");
    let out = run_tether(&["demo", "--listen", "0.0.0.0:0"], home.path());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("token"), "{err}");
}

#[test]
fn permission_questions_have_buttons_in_the_web_chat() {
    let home = TempDir::new("demo-perm");
    let demo = Demo::start(&home);
    let (_, headers, _) = demo.get("/");
    let cookie = headers
        .lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: ").or_else(|| l.strip_prefix("set-cookie: ")))
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_string();
    let mut ws = demo.socket(&cookie);
    let deadline = Instant::now() + Duration::from_secs(20);
    next_frame(&mut ws, deadline).expect("history");
    ws.send(Message::text(json!({"type": "message", "text": "permission please"}).to_string())).unwrap();
    let question = loop {
        let frame = next_frame(&mut ws, deadline).expect("the question did not arrive");
        // The demo also shows its tool calls as lines (no buttons): the question has some.
        if frame["type"] == "message" && frame["buttons"].as_array().is_some_and(|b| !b.is_empty()) {
            break frame;
        }
    };
    assert!(question["text"].as_str().unwrap_or_default().contains("Permission needed"), "{question}");
    let data = question["buttons"][0]["data"].as_str().unwrap().to_string();
    assert_eq!(data, "perm:1:once");
    ws.send(Message::text(json!({"type": "button", "data": data}).to_string())).unwrap();
    let (mut edited, mut granted) = (false, false);
    while !(edited && granted) {
        let frame = next_frame(&mut ws, deadline).expect("no edit or answer");
        match frame["type"].as_str() {
            Some("edit") => {
                edited |= frame["id"] == question["id"] && frame["text"].as_str().unwrap_or("").contains("approved")
            }
            Some("message") => granted |= frame["text"] == "permission granted: proceed_once",
            _ => {}
        }
    }
}

/// A raw HTTP request to `addr`; returns (status code, body).
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with(addr, method, path, body, "")
}

/// [`http`] as the operator: with the admin token of `home`.
fn admin_http(home: &TempDir, addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let token = std::fs::read_to_string(home.path().join("admin-token")).expect("an admin token in the home");
    http_with(addr, method, path, body, &format!("Authorization: Bearer {}\r\n", token.trim()))
}

/// [`http`] with extra header lines (each ending in CRLF).
fn http_with(addr: &str, method: &str, path: &str, body: &str, headers: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

#[test]
fn the_admin_page_approves_pairing_and_clears_sessions() {
    use crate::support::fake_telegram::{FakeTelegram, TOKEN};
    use crate::support::{Service, demo_agent, wait_until};

    let fake = FakeTelegram::start();
    let home = TempDir::new("admin");
    home.write_config(&json!({
        "agent": demo_agent(),
        "channels": {
            "phone": {"type": "telegram", "token": TOKEN, "apiBase": fake.url(), "senderPolicy": "pairing"},
            "web": {"type": "webchat", "listen": "127.0.0.1:0", "senderPolicy": "open"},
        }
    }));
    let service = Service::start(&home, &[]);
    assert!(service.wait_for_log("web chat on http://", Duration::from_secs(20)), "{}", service.log());
    let log = service.log();
    let addr = log.split("web chat on http://").nth(1).and_then(|r| r.split('/').next()).unwrap().to_string();

    // Listening is the web chat's health: never reported unhealthy at start.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!service.log().contains("web: channel is unhealthy"), "{}", service.log());
    let (status, page) = admin_http(&home, &addr, "GET", "/admin", "");
    assert_eq!(status, 200);
    assert!(page.contains("tether admin"));

    fake.send_dm(555, "let me in");
    let reply = fake.next_text_to(555, Duration::from_secs(20)).unwrap_or_default();
    let code = reply.split("Your pairing code is: ").nth(1).map(|r| r[..8].to_string()).expect("a code");
    let state = || serde_json::from_str::<Value>(&admin_http(&home, &addr, "GET", "/admin/api/state", "").1).unwrap();
    assert_eq!(state()["pairing"][0]["pending"][0]["senderId"], "555", "{}", state());
    assert!(!state().to_string().contains(&code), "the page never shows codes: {}", state());

    let approve = json!({"action": "approve", "channel": "phone", "code": code}).to_string();
    let (status, body) = admin_http(&home, &addr, "POST", "/admin/api/action", &approve);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Approved"), "{body}");
    let paired = fake.next_text_to(555, Duration::from_secs(20)).unwrap_or_default();
    assert!(paired.contains("paired"), "{paired}");
    assert_eq!(state()["pairing"][0]["approved"], json!(["555"]));
    let (status, _) = admin_http(&home, &addr, "POST", "/admin/api/action", &approve);
    assert_eq!(status, 409, "the code is used up");

    // A conversation shows as a session, and clearing it tells the chat.
    fake.send_dm(555, "hello");
    assert_eq!(fake.next_text_to(555, Duration::from_secs(20)).as_deref(), Some("echo: hello"));
    assert!(
        wait_until(Duration::from_secs(10), || state()["sessions"].as_array().is_some_and(|s| s.len() == 1)),
        "{}",
        state()
    );
    let key = state()["sessions"][0]["key"].as_str().unwrap().to_string();
    let clear = json!({"action": "clear_session", "key": key}).to_string();
    assert_eq!(admin_http(&home, &addr, "POST", "/admin/api/action", &clear).0, 200);
    let notice = fake.next_text_to(555, Duration::from_secs(20)).unwrap_or_default();
    assert!(notice.contains("operator cleared"), "{notice}");
    assert!(
        wait_until(Duration::from_secs(10), || state()["sessions"].as_array().is_some_and(|s| s.is_empty())),
        "{}",
        state()
    );
    let channels = state()["channels"].clone();
    assert!(channels.as_array().unwrap().iter().any(|c| c["name"] == "phone" && c["connected"] == true), "{channels}");
}

/// The admin page is not the chat: a chat client (loopback, or holding the chat's token) can
/// neither read nor act; only the admin token of the home can.
#[test]
fn admin_actions_need_the_admin_token_not_the_chat_token_or_loopback() {
    use crate::support::fake_telegram::{FakeTelegram, TOKEN};
    use crate::support::{Service, demo_agent};

    let fake = FakeTelegram::start();
    let home = TempDir::new("admin-token");
    home.write_config(&json!({
        "agent": demo_agent(),
        "channels": {
            "phone": {"type": "telegram", "token": TOKEN, "apiBase": fake.url(), "senderPolicy": "pairing"},
            "web": {"type": "webchat", "listen": "127.0.0.1:0", "senderPolicy": "open", "token": "chat-secret-1234"},
        }
    }));
    let service = Service::start(&home, &[]);
    assert!(service.wait_for_log("web chat on http://", Duration::from_secs(20)), "{}", service.log());
    let log = service.log();
    let addr = log.split("web chat on http://").nth(1).and_then(|r| r.split('/').next()).unwrap().to_string();
    let token = std::fs::read_to_string(home.path().join("admin-token")).unwrap().trim().to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.path().join("admin-token")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    fake.send_dm(777, "let me in");
    let reply = fake.next_text_to(777, Duration::from_secs(20)).unwrap_or_default();
    let code = reply.split("Your pairing code is: ").nth(1).map(|r| r[..8].to_string()).expect("a code");
    let approve = json!({"action": "approve", "channel": "phone", "code": code}).to_string();
    let chat_bearer = "Authorization: Bearer chat-secret-1234\r\n";
    let chat_cookie = format!(
        "Cookie: tether_token={}\r\n",
        "chat-secret-1234".bytes().map(|b| format!("{b:02x}")).collect::<String>()
    );
    for headers in ["", chat_bearer, chat_cookie.as_str()] {
        for (method, path, body) in
            [("GET", "/admin", ""), ("GET", "/admin/api/state", ""), ("POST", "/admin/api/action", approve.as_str())]
        {
            let (status, text) = http_with(&addr, method, path, body, headers);
            assert_eq!(status, 401, "{method} {path} with {headers:?}: {text}");
            assert!(!text.contains(&code), "{text}");
        }
    }
    // Nobody was approved by those.
    let allowed = std::fs::read_to_string(home.path().join("phone-allowlist.json")).unwrap_or_default();
    assert!(!allowed.contains("777"), "{allowed}");

    // The URL with the admin token sets its cookie and sends to the fixed admin path.
    let (status, _) = http(&addr, "GET", &format!("/admin?admin_token={token}"), "");
    assert_eq!(status, 303);
    let (status, body) = admin_http(&home, &addr, "POST", "/admin/api/action", &approve);
    assert_eq!(status, 200, "{body}");
    assert!(fake.next_text_to(777, Duration::from_secs(20)).unwrap_or_default().contains("paired"));

    // `tether admin-url` prints the same address with the token.
    let out = crate::support::run_tether(&["admin-url"], home.path());
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains(&format!("/admin?admin_token={token}")), "{printed}");
}

/// 200 slow unauthenticated connections from one address (IPv4 loopback) while the token
/// holder comes from another (IPv6 loopback, the listener is dual-stack): the token holder is
/// still served, and the refusals cost one log line, not hundreds.
#[test]
fn slow_strangers_do_not_lock_out_the_token_holder() {
    use crate::support::{Service, demo_agent};
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        return; // No IPv6 loopback on this machine: two client addresses cannot be made.
    }
    let home = TempDir::new("slow-strangers");
    home.write_config(&json!({
        "agent": demo_agent(),
        "channels": {"web": {"type": "webchat", "listen": "[::]:0", "senderPolicy": "open", "token": "holder-secret-99"}}
    }));
    let service = Service::start(&home, &[]);
    assert!(service.wait_for_log("web chat on http://", Duration::from_secs(20)), "{}", service.log());
    let log = service.log();
    let port: u16 = log
        .split("web chat on http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|hostport| hostport.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {log}"));
    let mut slow = Vec::new();
    for _ in 0..200 {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n");
            slow.push(s);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let holder = format!("[::1]:{port}");
    let (status, body) = http_with(&holder, "GET", "/healthz", "", "Authorization: Bearer holder-secret-99\r\n");
    assert_eq!(status, 200, "the token holder was locked out: {body}");
    drop(slow);
    let refused: Vec<String> = service.log().lines().filter(|l| l.contains("refused")).map(String::from).collect();
    assert!(refused.len() <= 1, "{} refusal lines: {refused:?}", refused.len());
}

/// A 502 whose body echoes the bot token: the token reaches neither the log, nor
/// status.json, nor `tether status`, nor the admin page's state.
#[test]
fn an_upstream_error_echoing_the_token_is_redacted_everywhere() {
    use crate::support::fake_telegram::{FakeTelegram, Fault, TOKEN};
    use crate::support::{Service, demo_agent, read_status, wait_until};

    let fake = FakeTelegram::start();
    let home = TempDir::new("redact");
    home.write_config(&json!({
        "agent": demo_agent(),
        "channels": {
            "phone": {"type": "telegram", "token": TOKEN, "apiBase": fake.url(), "allowedUsers": ["111"]},
            "web": {"type": "webchat", "listen": "127.0.0.1:0", "senderPolicy": "open"},
        }
    }));
    let echo = json!({"ok": false, "error_code": 502, "description": format!("Bad Gateway: no upstream for /bot{TOKEN}/getUpdates")});
    fake.fail_all("getUpdates", Some(Fault::Status(502, echo)));
    let service = Service::start(&home, &[]);
    assert!(service.wait_for_log("web chat on http://", Duration::from_secs(20)), "{}", service.log());
    let log = service.log();
    let addr = log.split("web chat on http://").nth(1).and_then(|r| r.split('/').next()).unwrap().to_string();
    assert!(
        wait_until(Duration::from_secs(20), || read_status(home.path())
            .is_some_and(|s| s.to_string().contains("no upstream for"))),
        "the error never reached status.json: {:?}\nlog:\n{}",
        read_status(home.path()),
        service.log()
    );
    let secret_half = TOKEN.split_once(':').unwrap().1;
    let status_json = read_status(home.path()).unwrap().to_string();
    let status_text =
        String::from_utf8_lossy(&crate::support::run_tether(&["status"], home.path()).stdout).into_owned();
    let admin_state = admin_http(&home, &addr, "GET", "/admin/api/state", "").1;
    assert!(admin_state.contains("no upstream for"), "{admin_state}");
    for (place, text) in [
        ("log", service.log()),
        ("status.json", status_json),
        ("tether status", status_text),
        ("admin state", admin_state),
    ] {
        assert!(!text.contains(TOKEN) && !text.contains(secret_half), "the token is in the {place}:\n{text}");
    }
    fake.fail_all("getUpdates", None);
}

/// The resident-memory high-water mark of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// A fast-streaming agent: 40,000 one-character chunks as fast as it can write them. The page
/// gets a few coalesced drafts and the whole answer; tether's peak memory stays small.
#[test]
fn forty_thousand_chunks_make_few_drafts_and_little_memory() {
    use crate::support::{Service, demo_agent};
    let home = TempDir::new("flood");
    home.write_config(&json!({
        "agent": demo_agent(),
        "channels": {"web": {"type": "webchat", "listen": "127.0.0.1:0", "senderPolicy": "open"}}
    }));
    let service = Service::start(&home, &[]);
    assert!(service.wait_for_log("web chat on http://", Duration::from_secs(20)), "{}", service.log());
    let log = service.log();
    let addr = log.split("web chat on http://").nth(1).and_then(|r| r.split('/').next()).unwrap().to_string();
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut page = String::new();
    stream.read_to_string(&mut page).unwrap();
    let cookie = page
        .lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("a browser cookie")
        .to_string();
    let mut ws = ws_connect(&addr, &cookie);
    let deadline = Instant::now() + Duration::from_secs(60);
    next_frame(&mut ws, deadline).expect("history");
    let idle_kib = peak_rss_kib(service.pid());
    let started = Instant::now();
    ws.send(Message::text(json!({"type": "message", "text": "flood"}).to_string())).unwrap();
    let mut drafts = 0;
    let answer = loop {
        let frame = next_frame(&mut ws, deadline).expect("the answer did not arrive");
        match frame["type"].as_str() {
            Some("draft") => drafts += 1,
            Some("message") if frame["from"] == "agent" => break frame["text"].as_str().unwrap_or("").to_string(),
            _ => {}
        }
    };
    let took = started.elapsed();
    let peak_kib = peak_rss_kib(service.pid());
    eprintln!(
        "flood: 40,000 chunks in {took:?}: {drafts} drafts; tether peak RSS {peak_kib} KiB (before the turn {idle_kib} KiB)"
    );
    assert_eq!(answer.chars().filter(|c| *c == 'x').count(), 39_500, "the whole answer arrived");
    assert!(drafts as f64 <= took.as_secs_f64() * 10.0 + 5.0, "{drafts} drafts in {took:?}");
    assert!(peak_kib < 100 * 1024, "peak RSS {peak_kib} KiB");
}
