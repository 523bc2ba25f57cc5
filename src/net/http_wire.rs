//! The HTTP/1.1 client's wire format, pure: URLs, request heads, response heads, body framing
//! (Content-Length, chunked with trailers, read-to-close) with a size limit, and whether the
//! connection may carry another request. `net::http` does the sockets.

use std::fmt::Write as _;

/// The largest response head (status line and headers) accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Header lines accepted in one response head.
const MAX_HEADERS: usize = 96;
/// A chunk-size line with its extensions.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// All trailer lines of a chunked body together.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Where a request goes, from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    /// The host as the resolver and TLS want it: an IPv6 literal without brackets.
    pub host: String,
    pub port: u16,
    /// The request target: path and query, never empty, no fragment.
    pub path: String,
}

impl Target {
    /// The `Host` header's value: the port only when it is not the scheme's default.
    pub fn authority(&self) -> String {
        let mut authority = String::with_capacity(self.host.len() + 8);
        self.push_authority(&mut authority);
        authority
    }

    /// [`Target::authority`] at the end of `out`.
    fn push_authority(&self, out: &mut String) {
        let bracketed = self.host.contains(':');
        if bracketed {
            out.push('[');
        }
        out.push_str(&self.host);
        if bracketed {
            out.push(']');
        }
        if self.port != if self.tls { 443 } else { 80 } {
            out.push(':');
            out.push_str(&self.port.to_string());
        }
    }

    /// Whether `other` is the same origin (scheme, host, port): a connection can serve both.
    pub fn same_origin(&self, other: &Target) -> bool {
        self.tls == other.tls && self.port == other.port && self.host.eq_ignore_ascii_case(&other.host)
    }
}

/// Parse an absolute `http://` or `https://` URL. Spaces and bytes beyond ASCII in the path
/// are percent-encoded; control characters are refused (they would break the request line).
/// Errors never repeat the URL: it may carry a token.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let (tls, rest) = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (true, rest),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (false, rest),
        _ => return Err("the URL is not http:// or https://".to_string()),
    };
    // By bytes: a search for any of several chars goes char by char, a cost on every call.
    let end = rest.bytes().position(|b| matches!(b, b'/' | b'?' | b'#')).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at_checked(end).ok_or("bad URL")?;
    if authority.contains('@') {
        return Err("user names in URLs are not supported".to_string());
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or("the URL's IPv6 host has no closing ]")?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or("bad text after the URL's IPv6 host")?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() || host.bytes().any(|b| b <= b' ' || b >= 0x7f || b"/\\[]".contains(&b)) {
        return Err("the URL has no valid host".to_string());
    }
    let port = match port {
        None | Some("") => {
            if tls {
                443
            } else {
                80
            }
        }
        Some(digits) => match digits.parse::<u16>() {
            Ok(port) if port != 0 && digits.bytes().all(|b| b.is_ascii_digit()) => port,
            _ => return Err("the URL's port is not a number from 1 to 65535".to_string()),
        },
    };
    let tail = tail.split_once('#').map_or(tail, |(before, _)| before);
    let mut path = String::with_capacity(tail.len() + 1);
    if !tail.starts_with('/') {
        path.push('/');
    }
    // The usual path needs no encoding: taken whole.
    if tail.bytes().all(|b| b > b' ' && b < 0x7f) {
        path.push_str(tail);
        return Ok(Target { tls, host: host.to_ascii_lowercase(), port, path });
    }
    for byte in tail.bytes() {
        match byte {
            0..=0x1f | 0x7f => return Err("the URL has a control character".to_string()),
            b' ' | 0x80..=0xff => {
                let _ = write!(path, "%{byte:02X}");
            }
            _ => path.push(char::from(byte)),
        }
    }
    Ok(Target { tls, host: host.to_ascii_lowercase(), port, path })
}

/// Where `location` (a `Location` header) points from `base`: an absolute URL, or a path on
/// the same origin. Relative paths without a leading slash are not followed.
pub fn redirect_target(base: &Target, location: &str) -> Option<Target> {
    if location.starts_with("//") {
        return parse_url(&format!("{}:{location}", if base.tls { "https" } else { "http" })).ok();
    }
    if location.starts_with('/') {
        let url = format!("{}://{}{location}", if base.tls { "https" } else { "http" }, base.authority());
        return parse_url(&url).ok();
    }
    parse_url(location).ok()
}

/// A request's body as the head describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyInfo<'a> {
    pub len: usize,
    /// Sent unless the caller's headers name a `Content-Type`.
    pub content_type: Option<&'a str>,
}

/// The request head: request line, `Host`, `User-Agent`, `Accept: */*` (unless given), the
/// caller's headers, `Content-Type` and `Content-Length` for a body. The caller's `Host`,
/// `Content-Length`, `Transfer-Encoding` and `Connection` are ours to set and skipped. A name
/// that is not a token or a value with CR, LF or NUL is refused (header injection).
pub fn request_head(
    method: &str,
    target: &Target,
    user_agent: &str,
    headers: &[(&str, &str)],
    body: Option<BodyInfo<'_>>,
) -> Result<Vec<u8>, String> {
    // Pieces pushed, not `write!`: the formatting machinery cost more than the copying, on
    // every request.
    let mut head = String::with_capacity(256 + target.path.len());
    for piece in [method, " ", &target.path, " HTTP/1.1\r\nHost: "] {
        head.push_str(piece);
    }
    target.push_authority(&mut head);
    for piece in ["\r\nUser-Agent: ", user_agent, "\r\n"] {
        head.push_str(piece);
    }
    let given = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if !given("accept") {
        head.push_str("Accept: */*\r\n");
    }
    for (name, value) in headers {
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(format!("header name {name:?} is not a valid token"));
        }
        if value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
            return Err(format!("header {name} has a line break in its value"));
        }
        let ours = ["host", "content-length", "transfer-encoding", "connection", "user-agent"];
        if ours.iter().any(|o| name.eq_ignore_ascii_case(o)) {
            continue;
        }
        for piece in [*name, ": ", *value, "\r\n"] {
            head.push_str(piece);
        }
    }
    if let Some(body) = body {
        if let Some(kind) = body.content_type.filter(|_| !given("content-type")) {
            for piece in ["Content-Type: ", kind, "\r\n"] {
                head.push_str(piece);
            }
        }
        for piece in ["Content-Length: ", &body.len.to_string(), "\r\n"] {
            head.push_str(piece);
        }
    }
    head.push_str("\r\n");
    Ok(head.into_bytes())
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A bad or unacceptable response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The body is larger than the caller's limit (bytes).
    TooLarge(u64),
    /// The response breaks HTTP/1.1 (what is wrong, without the data).
    Malformed(String),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::TooLarge(limit) => write!(f, "the reply is larger than the {limit}-byte limit"),
            WireError::Malformed(why) => write!(f, "bad HTTP reply: {why}"),
        }
    }
}

fn malformed(why: &str) -> WireError {
    WireError::Malformed(why.to_string())
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// An HTTP/1.0 reply: its connection is never reused.
    pub http10: bool,
    pub headers: Headers,
    /// Bytes the head took in the buffer.
    pub len: usize,
}

/// A response's headers, names lowercased, values trimmed; values that are not UTF-8 are left
/// out. Their text is kept end to end in one string, with where each name and value ends: two
/// allocations for a whole head, where a pair of strings per header cost two each (Telegram
/// answers with nine headers, and a message takes two or three calls).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    text: String,
    /// For each header, where its name ends and where its value ends in `text`.
    ends: Vec<(usize, usize)>,
}

impl Headers {
    fn with_capacity(bytes: usize, headers: usize) -> Headers {
        Headers { text: String::with_capacity(bytes), ends: Vec::with_capacity(headers) }
    }

    fn push(&mut self, name: &str, value: &str) {
        let start = self.text.len();
        self.text.push_str(name);
        if let Some(pushed) = self.text.get_mut(start..) {
            pushed.make_ascii_lowercase();
        }
        let name_end = self.text.len();
        self.text.push_str(value.trim());
        self.ends.push((name_end, self.text.len()));
    }

    /// Each header as (lowercased name, value), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut start = 0;
        self.ends.iter().map(move |&(name_end, value_end)| {
            let name = self.text.get(start..name_end).unwrap_or_default();
            let value = self.text.get(name_end..value_end).unwrap_or_default();
            start = value_end;
            (name, value)
        })
    }

    /// The values of every header called `name` (any case), in order.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// The first value of the header `name` (any case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// The comma-separated tokens of every `name` header, trimmed, in order.
    fn tokens<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.values(name).flat_map(|v| v.split(',')).map(str::trim)
    }
}

/// The response head at the start of `buf`; `None` while it is incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, WireError> {
    if buf.is_empty() {
        return Ok(None);
    }
    // Uninitialized slots: nothing to clear for each reply.
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut response, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Err(WireError::Malformed(format!("the head is over {MAX_HEAD_BYTES} bytes")));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(WireError::Malformed(format!("over {MAX_HEADERS} header lines")));
        }
        Err(e) => return Err(WireError::Malformed(format!("{e}"))),
    };
    if len > MAX_HEAD_BYTES {
        return Err(WireError::Malformed(format!("the head is over {MAX_HEAD_BYTES} bytes")));
    }
    let status = response.code.ok_or_else(|| malformed("no status"))?;
    let http10 = response.version == Some(0);
    let mut headers = Headers::with_capacity(len, response.headers.len());
    for header in response.headers.iter() {
        if let Ok(value) = std::str::from_utf8(header.value) {
            headers.push(header.name, value);
        }
    }
    Ok(Some(Head { status, http10, headers, len }))
}

/// How a response's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the server closes the connection.
    UntilClose,
}

/// The framing of the body after `head` (to a request other than HEAD), RFC 9112 §6.3.
pub fn framing(head: &Head) -> Result<Framing, WireError> {
    if head.status < 200 || head.status == 204 || head.status == 304 {
        return Ok(Framing::Empty);
    }
    if let Some(last) = head.headers.tokens("transfer-encoding").last() {
        // Chunked must be the last coding; anything else is read to the close.
        return Ok(if last.eq_ignore_ascii_case("chunked") { Framing::Chunked } else { Framing::UntilClose });
    }
    let mut lengths = head.headers.tokens("content-length");
    let Some(first) = lengths.next() else { return Ok(Framing::UntilClose) };
    if lengths.any(|l| l != first) {
        return Err(malformed("conflicting Content-Length values"));
    }
    match first.parse::<u64>() {
        Ok(n) if first.bytes().all(|b| b.is_ascii_digit()) => Ok(Framing::Length(n)),
        _ => Err(malformed("Content-Length is not a number")),
    }
}

/// Whether the connection may carry another request once this body has been read whole.
pub fn reusable(head: &Head, framing: Framing) -> bool {
    let both = head.headers.get("transfer-encoding").is_some() && head.headers.get("content-length").is_some();
    !head.http10
        && framing != Framing::UntilClose
        && !both
        && !head.headers.tokens("connection").any(|t| t.eq_ignore_ascii_case("close"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Chunk {
    /// Reading a size line; its bytes so far (up to [`MAX_CHUNK_LINE`]).
    Size(Vec<u8>),
    /// Data bytes left in the chunk.
    Data(u64),
    /// The CRLF after a chunk's data; whether the CR was seen.
    DataEnd(bool),
    /// Trailer lines: bytes of the current line, bytes of all of them.
    Trailers { line: usize, total: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

/// Decodes a body as its bytes arrive, refusing more than a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyDecoder {
    state: State,
    limit: u64,
    got: u64,
}

impl BodyDecoder {
    /// A decoder for `framing`; a declared length over `limit` is refused at once.
    pub fn new(framing: Framing, limit: u64) -> Result<BodyDecoder, WireError> {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) if n > limit => return Err(WireError::TooLarge(limit)),
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunk::Size(Vec::new())),
            Framing::UntilClose => State::UntilClose,
        };
        Ok(BodyDecoder { state, limit, got: 0 })
    }

    /// Whether the whole body has been read.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Take body bytes from `input` into `out`; returns how many bytes of `input` were used
    /// (fewer than all only once the body is done: the rest is not part of it).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, WireError> {
        let mut used = 0;
        while used < input.len() && !self.done() {
            let rest = input.get(used..).unwrap_or_default();
            used += match &mut self.state {
                State::Done => 0,
                State::Length(left) => {
                    let left = *left;
                    let take = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    self.keep(rest.get(..take).unwrap_or_default(), out)?;
                    let left = left - take as u64;
                    self.state = if left == 0 { State::Done } else { State::Length(left) };
                    take
                }
                State::UntilClose => {
                    self.keep(rest, out)?;
                    rest.len()
                }
                State::Chunked(_) => self.feed_chunked(rest, out)?,
            };
        }
        Ok(used)
    }

    /// One step of chunked decoding: the bytes of `input` it used.
    fn feed_chunked(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, WireError> {
        let State::Chunked(chunk) = &mut self.state else { return Ok(0) };
        match chunk {
            Chunk::Size(line) => {
                let Some(newline) = input.iter().position(|&b| b == b'\n') else {
                    if line.len() + input.len() > MAX_CHUNK_LINE {
                        return Err(malformed("chunk-size line too long"));
                    }
                    line.extend_from_slice(input);
                    return Ok(input.len());
                };
                if line.len() + newline > MAX_CHUNK_LINE {
                    return Err(malformed("chunk-size line too long"));
                }
                line.extend_from_slice(input.get(..newline).unwrap_or_default());
                let size = chunk_size(line)?;
                *chunk = if size == 0 { Chunk::Trailers { line: 0, total: 0 } } else { Chunk::Data(size) };
                Ok(newline + 1)
            }
            Chunk::Data(left) => {
                let take = input.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= take as u64;
                if *left == 0 {
                    *chunk = Chunk::DataEnd(false);
                }
                self.keep(input.get(..take).unwrap_or_default(), out)?;
                Ok(take)
            }
            Chunk::DataEnd(seen_cr) => {
                match input.first() {
                    Some(b'\r') if !*seen_cr => *seen_cr = true,
                    Some(b'\n') => *chunk = Chunk::Size(Vec::new()),
                    _ => return Err(malformed("chunk data not followed by CRLF")),
                }
                Ok(1)
            }
            Chunk::Trailers { line, total } => {
                let mut used = 0;
                for &byte in input {
                    used += 1;
                    *total += 1;
                    if *total > MAX_TRAILER_BYTES {
                        return Err(malformed("trailers too long"));
                    }
                    match byte {
                        b'\n' if *line == 0 => {
                            self.state = State::Done;
                            return Ok(used);
                        }
                        b'\n' => *line = 0,
                        b'\r' => {}
                        _ => *line += 1,
                    }
                }
                Ok(used)
            }
        }
    }

    fn keep(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        self.got += bytes.len() as u64;
        if self.got > self.limit {
            return Err(WireError::TooLarge(self.limit));
        }
        out.extend_from_slice(bytes);
        Ok(())
    }

    /// The server closed the connection: fine only for a body read to the close.
    pub fn end_of_stream(&mut self) -> Result<(), WireError> {
        match self.state {
            State::Done => Ok(()),
            State::UntilClose => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(malformed("the connection closed in the middle of the body")),
        }
    }
}

/// The size on a chunk-size line (hex, then optional `;extensions`, then optional CR).
fn chunk_size(line: &[u8]) -> Result<u64, WireError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    let digits = digits.trim_ascii();
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(malformed("bad chunk size"));
    }
    let text = std::str::from_utf8(digits).map_err(|_| malformed("bad chunk size"))?;
    u64::from_str_radix(text, 16).map_err(|_| malformed("bad chunk size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Target {
        parse_url(url).unwrap()
    }

    #[test]
    fn urls_parse_into_targets() {
        let cases: &[(&str, bool, &str, u16, &str)] = &[
            ("https://api.telegram.org/bot1:x/getMe", true, "api.telegram.org", 443, "/bot1:x/getMe"),
            ("http://127.0.0.1:8081/bot/getUpdates", false, "127.0.0.1", 8081, "/bot/getUpdates"),
            ("HTTPS://Example.COM", true, "example.com", 443, "/"),
            ("http://h?x=1", false, "h", 80, "/?x=1"),
            ("http://h/p#frag", false, "h", 80, "/p"),
            ("http://[::1]:9/a?b", false, "::1", 9, "/a?b"),
            ("https://[2001:db8::1]/", true, "2001:db8::1", 443, "/"),
            ("http://h:/x", false, "h", 80, "/x"),
            ("http://h/a b/é", false, "h", 80, "/a%20b/%C3%A9"),
        ];
        for (url, tls, host, port, path) in cases {
            let t = target(url);
            assert_eq!((t.tls, t.host.as_str(), t.port, t.path.as_str()), (*tls, *host, *port, *path), "{url}");
        }
        for bad in [
            "ftp://h/",
            "h/x",
            "http:///x",
            "http://h:0/",
            "http://h:99999/",
            "http://h:+80/",
            "http://u:p@h/",
            "http://[::1/",
            "http://[::1]x/",
            "http://h/a\nb",
            "http://h\\x/",
        ] {
            assert!(parse_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn authority_names_the_port_only_when_it_is_not_the_default() {
        assert_eq!(target("https://h/").authority(), "h");
        assert_eq!(target("https://h:8443/").authority(), "h:8443");
        assert_eq!(target("http://h:443/").authority(), "h:443");
        assert_eq!(target("http://[::1]:8080/").authority(), "[::1]:8080");
    }

    #[test]
    fn redirects_resolve_against_the_base() {
        let base = target("https://cdn.example/a/b?sig=1");
        let cases: &[(&str, Option<&str>)] = &[
            ("https://other.example/x", Some("https://other.example/x")),
            ("/moved?y", Some("https://cdn.example/moved?y")),
            ("//elsewhere:8443/z", Some("https://elsewhere:8443/z")),
            ("relative/path", None),
            ("", None),
        ];
        for (location, want) in cases {
            assert_eq!(redirect_target(&base, location), want.map(target), "{location}");
        }
    }

    #[test]
    fn request_heads_carry_ours_and_the_callers_headers() {
        let t = target("http://127.0.0.1:8081/bot/sendMessage?x=1");
        let json = Some(BodyInfo { len: 12, content_type: Some("application/json") });
        let head = request_head("POST", &t, "tether/0", &[("X-Token", "abc")], json).unwrap();
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "POST /bot/sendMessage?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8081\r\nUser-Agent: tether/0\r\nAccept: */*\r\n\
             X-Token: abc\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n"
        );
        // The caller's Accept and Content-Type win; framing headers are ours.
        let headers = [("accept", "application/json"), ("Content-Type", "image/png"), ("Content-Length", "99")];
        let head = request_head("PATCH", &t, "ua", &headers, json).unwrap();
        let text = String::from_utf8(head).unwrap();
        assert!(!text.contains("*/*") && !text.contains("99") && !text.contains("application/json\r\nContent-Length"));
        assert!(text.ends_with("accept: application/json\r\nContent-Type: image/png\r\nContent-Length: 12\r\n\r\n"));
        // No body: no Content-Length.
        let head = String::from_utf8(request_head("GET", &target("https://h/"), "ua", &[], None).unwrap()).unwrap();
        assert_eq!(head, "GET / HTTP/1.1\r\nHost: h\r\nUser-Agent: ua\r\nAccept: */*\r\n\r\n");
        // Injection is refused.
        assert!(request_head("GET", &t, "ua", &[("X", "a\r\nEvil: 1")], None).is_err());
        assert!(request_head("GET", &t, "ua", &[("Bad Name", "v")], None).is_err());
        assert!(request_head("GET", &t, "ua", &[("", "v")], None).is_err());
    }

    #[test]
    fn heads_parse_and_frame() {
        use Framing::*;
        // (response head, status, framing, reusable)
        let cases: &[(&str, u16, Result<Framing, ()>, bool)] = &[
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", 200, Ok(Length(5)), true),
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 200, Ok(Length(5)), true),
            ("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", 200, Ok(Length(5)), true),
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 200, Err(()), false),
            ("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", 200, Err(()), false),
            ("HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n", 200, Err(()), false),
            ("HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n", 200, Err(()), false),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 200, Ok(Chunked), true),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n", 200, Ok(Chunked), true),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 200, Ok(UntilClose), false),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 200, Ok(Chunked), false),
            ("HTTP/1.1 200 OK\r\n\r\n", 200, Ok(UntilClose), false),
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n", 200, Ok(Length(5)), false),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: Keep-Alive, Close\r\n\r\n",
                200,
                Ok(Length(5)),
                false,
            ),
            ("HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n", 200, Ok(Length(5)), false),
            ("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", 204, Ok(Empty), true),
            ("HTTP/1.1 304 Not Modified\r\n\r\n", 304, Ok(Empty), true),
            ("HTTP/1.1 100 Continue\r\n\r\n", 100, Ok(Empty), true),
            ("HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 0\r\n\r\n", 429, Ok(Length(0)), true),
        ];
        for (text, status, want, reuse) in cases {
            let head = parse_head(text.as_bytes()).unwrap().unwrap();
            assert_eq!(head.status, *status, "{text}");
            assert_eq!(head.len, text.len(), "{text}");
            let got = framing(&head);
            assert_eq!(got.clone().map_err(|_| ()), *want, "{text}");
            if let Ok(f) = got {
                assert_eq!(reusable(&head, f), *reuse, "{text}");
            }
        }
    }

    #[test]
    fn heads_keep_lowercased_names_and_need_the_blank_line() {
        let text = b"HTTP/1.1 200 OK\r\nX-Encrypted-Param: abc \r\nBin: \xff\r\n\r\nbody";
        let head = parse_head(text).unwrap().unwrap();
        assert_eq!(head.headers.iter().collect::<Vec<_>>(), [("x-encrypted-param", "abc")]);
        assert_eq!(head.len, text.len() - 4);
        for cut in 0..text.len() - 4 {
            assert_eq!(parse_head(&text[..cut]).unwrap(), None, "cut at {cut}");
        }
        // Several, looked up in any case, in order; a name repeated keeps each value.
        let text = b"HTTP/1.1 200 OK\r\nA: 1\r\nRetry-After:  7\r\na: 2, 3\r\n\r\n";
        let head = parse_head(text).unwrap().unwrap();
        assert_eq!(head.headers.iter().collect::<Vec<_>>(), [("a", "1"), ("retry-after", "7"), ("a", "2, 3")]);
        assert_eq!((head.headers.get("RETRY-after"), head.headers.get("b")), (Some("7"), None));
        assert_eq!(head.headers.values("A").collect::<Vec<_>>(), ["1", "2, 3"]);
        assert_eq!(head.headers.tokens("a").collect::<Vec<_>>(), ["1", "2", "3"]);
    }

    #[test]
    fn bad_and_oversized_heads_are_refused() {
        assert!(parse_head(b"HTTP/1.1 abc OK\r\n\r\n").is_err());
        assert!(parse_head(b"SMTP ready\r\n\r\n").is_err());
        // Incomplete past the limit: refused rather than buffered forever.
        let mut long = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        long.resize(MAX_HEAD_BYTES + 10, b'a');
        assert!(parse_head(&long).is_err());
        // Complete but over the limit.
        long.extend_from_slice(b"\r\n\r\n");
        assert!(parse_head(&long).is_err());
        let mut many = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("X-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert!(parse_head(many.as_bytes()).is_err());
    }

    /// The body and the bytes after it, or the error.
    type Decoded = Result<(Vec<u8>, Vec<u8>), WireError>;

    /// Decode `pieces` in order; the body, the bytes left over, or the error.
    fn decode(framing: Framing, limit: u64, pieces: &[&[u8]], eof: bool) -> Result<(Vec<u8>, Vec<u8>), WireError> {
        let mut decoder = BodyDecoder::new(framing, limit)?;
        let mut out = Vec::new();
        let mut rest = Vec::new();
        for piece in pieces {
            if decoder.done() {
                rest.extend_from_slice(piece);
                continue;
            }
            let used = decoder.feed(piece, &mut out)?;
            rest.extend_from_slice(&piece[used..]);
        }
        if eof {
            decoder.end_of_stream()?;
        }
        assert!(decoder.done(), "not done");
        Ok((out, rest))
    }

    /// Every way of splitting `whole` in two gives the same result as one piece.
    fn decode_split(framing: Framing, limit: u64, whole: &[u8], eof: bool) -> Result<(Vec<u8>, Vec<u8>), WireError> {
        let one = decode(framing, limit, &[whole], eof);
        for cut in 0..=whole.len() {
            let (a, b) = whole.split_at(cut);
            assert_eq!(decode(framing, limit, &[a, b], eof), one, "split at {cut}");
        }
        let bytes: Vec<&[u8]> = whole.chunks(1).collect();
        assert_eq!(decode(framing, limit, &bytes, eof), one, "byte by byte");
        one
    }

    #[test]
    fn bodies_decode_the_same_however_they_are_split() {
        use Framing::*;
        let ok = |body: &str, rest: &str| Ok((body.as_bytes().to_vec(), rest.as_bytes().to_vec()));
        let cases: &[(Framing, &str, bool, Decoded)] = &[
            (Length(5), "hello", false, ok("hello", "")),
            (Length(5), "helloEXTRA", false, ok("hello", "EXTRA")),
            (Length(0), "", false, ok("", "")),
            (Empty, "", false, ok("", "")),
            (UntilClose, "all of it", true, ok("all of it", "")),
            (Chunked, "5\r\nhello\r\n0\r\n\r\n", false, ok("hello", "")),
            (Chunked, "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nNEXT", false, ok("hello world", "NEXT")),
            (Chunked, "5;name=value;x\r\nhello\r\n0;end\r\n\r\n", false, ok("hello", "")),
            (Chunked, "A \r\n0123456789\r\n0\r\n\r\n", false, ok("0123456789", "")),
            (Chunked, "5\nhello\n0\n\n", false, ok("hello", "")),
            (Chunked, "5\r\nhello\r\n0\r\nExpires: never\r\nX-Sum: 1\r\n\r\n", false, ok("hello", "")),
            (Chunked, "0000000000000005\r\nhello\r\n0\r\n\r\n", false, Err(malformed("bad chunk size"))),
            (Chunked, "zz\r\nhello\r\n0\r\n\r\n", false, Err(malformed("bad chunk size"))),
            (Chunked, "\r\nhello\r\n0\r\n\r\n", false, Err(malformed("bad chunk size"))),
            (Chunked, "-5\r\nhello\r\n0\r\n\r\n", false, Err(malformed("bad chunk size"))),
            (Chunked, "5\r\nhelloX\r\n0\r\n\r\n", false, Err(malformed("chunk data not followed by CRLF"))),
            (Chunked, "5\r\nhello\r\r\n0\r\n\r\n", false, Err(malformed("chunk data not followed by CRLF"))),
        ];
        for (framing, whole, eof, want) in cases {
            assert_eq!(&decode_split(*framing, 1024, whole.as_bytes(), *eof), want, "{framing:?} {whole:?}");
        }
    }

    #[test]
    fn bodies_cut_short_are_errors() {
        let cut = Err(malformed("the connection closed in the middle of the body"));
        assert_eq!(decode(Framing::Length(5), 1024, &[b"hel"], true), cut);
        assert_eq!(decode(Framing::Chunked, 1024, &[b"5\r\nhel"], true), cut);
        assert_eq!(decode(Framing::Chunked, 1024, &[b"5\r\nhello\r\n0\r\n"], true), cut);
    }

    #[test]
    fn limits_bound_every_part_of_a_body() {
        const MIB16: u64 = 16 * 1024 * 1024;
        // A declared length over the limit is refused before reading; exactly the limit is fine.
        assert_eq!(BodyDecoder::new(Framing::Length(MIB16 + 1), MIB16), Err(WireError::TooLarge(MIB16)));
        assert!(BodyDecoder::new(Framing::Length(MIB16), MIB16).is_ok());
        let big = vec![b'x'; 4096];
        for framing in [Framing::UntilClose, Framing::Chunked] {
            let mut decoder = BodyDecoder::new(framing, 10_000).unwrap();
            let mut out = Vec::new();
            if framing == Framing::Chunked {
                decoder.feed(b"FFFFFF\r\n", &mut out).unwrap();
            }
            decoder.feed(&big, &mut out).unwrap();
            decoder.feed(&big, &mut out).unwrap();
            assert_eq!(decoder.feed(&big, &mut out), Err(WireError::TooLarge(10_000)), "{framing:?}");
            assert!(out.len() <= 10_000);
        }
        // Chunks of a body over the limit in total.
        let mut decoder = BodyDecoder::new(Framing::Chunked, 8).unwrap();
        let mut out = Vec::new();
        assert_eq!(decoder.feed(b"5\r\nhello\r\n5\r\nworld\r\n", &mut out), Err(WireError::TooLarge(8)));
        // A size line or trailers that never end.
        let mut decoder = BodyDecoder::new(Framing::Chunked, 8).unwrap();
        let endless = vec![b'0'; MAX_CHUNK_LINE + 1];
        assert!(decoder.feed(&endless, &mut out).is_err());
        let mut decoder = BodyDecoder::new(Framing::Chunked, 8).unwrap();
        let mut long_ext = b"5;".to_vec();
        long_ext.extend(std::iter::repeat_n(b'e', MAX_CHUNK_LINE));
        long_ext.extend_from_slice(b"\r\n");
        assert!(decoder.feed(&long_ext, &mut out).is_err());
        let mut decoder = BodyDecoder::new(Framing::Chunked, 8).unwrap();
        decoder.feed(b"0\r\n", &mut out).unwrap();
        let trailer = b"X: y\r\n".repeat(MAX_TRAILER_BYTES / 6 + 1);
        assert!(decoder.feed(&trailer, &mut out).is_err());
    }
}
