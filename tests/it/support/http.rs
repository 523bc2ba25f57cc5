//! A tiny HTTP/1.1 server for fakes: keep-alive, Content-Length bodies, one thread per
//! connection, and a handler that may answer, stall, drop the socket or send garbage.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The value of header `name` (any case), if sent.
    #[allow(dead_code)] // Not every fake reads headers.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// What the handler wants done with a request.
pub enum Reply {
    Json(u16, String),
    /// A status, extra headers and a JSON body (empty for none, e.g. 204).
    #[allow(dead_code)] // Used by the Discord fake.
    Full(u16, Vec<(String, String)>, String),
    /// A status, its headers (no JSON content type added) and a binary body (the iLink CDN).
    #[allow(dead_code)] // Used by the iLink fake.
    Bytes(u16, Vec<(String, String)>, Vec<u8>),
    /// Close the connection without answering.
    Drop,
}

pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Server {
    pub fn start(handler: impl Fn(Request) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        let stop2 = stop.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let handler = handler.clone();
                thread::spawn(move || serve(stream, &*handler));
            }
        });
        Server { addr, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve(stream: TcpStream, handler: &dyn Fn(Request) -> Reply) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(path)) = (parts.next(), parts.next()) else { return };
        let method = method.to_string();
        let path = path.to_string();
        let mut length = 0;
        let mut headers = Vec::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let json = vec![("Content-Type".to_string(), "application/json".to_string())];
        let (status, extra, body) = match handler(Request { method, path, headers, body }) {
            Reply::Json(status, text) => (status, json, text.into_bytes()),
            Reply::Full(status, extra, text) => (status, [json, extra].concat(), text.into_bytes()),
            Reply::Bytes(status, extra, body) => (status, extra, body),
            Reply::Drop => return,
        };
        let extra: String = extra.iter().map(|(n, v)| format!("{n}: {v}\r\n")).collect();
        let head = format!("HTTP/1.1 {status} X\r\n{extra}Content-Length: {}\r\n\r\n", body.len());
        if writer.write_all(head.as_bytes()).and_then(|()| writer.write_all(&body)).is_err() {
            return;
        }
    }
}

/// A `multipart/form-data` body: its text fields and its (one) file.
#[allow(dead_code)] // Only the fakes that take uploads read forms.
pub struct Form {
    pub fields: std::collections::HashMap<String, String>,
    /// Field name, file name, content type, bytes.
    pub file: Option<(String, String, String, Vec<u8>)>,
}

/// Parse a `multipart/form-data` request body; `None` when it is not one or is malformed.
#[allow(dead_code)] // Only the fakes that take uploads read forms.
pub fn parse_form(req: &Request) -> Option<Form> {
    let content_type = req.headers.iter().find(|(n, _)| n == "content-type").map(|(_, v)| v.clone())?;
    let boundary = content_type.strip_prefix("multipart/form-data; boundary=")?;
    let delimiter = format!("--{boundary}");
    let body = &req.body;
    let find =
        |from: usize, needle: &[u8]| body[from..].windows(needle.len()).position(|w| w == needle).map(|p| p + from);
    let mut fields = std::collections::HashMap::new();
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
    Some(Form { fields, file })
}
