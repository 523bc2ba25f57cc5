//! The fuzz targets' entry points (see `fuzz/` and `docs/fuzzing.md`): one function per
//! target decodes arbitrary bytes the way tether decodes untrusted input, and panics when a
//! property fails, not only when the code under test panics. The regression inputs in
//! `fuzz/regressions/<target>/` replay through these same functions in every `cargo test`.
//! Not an API: hidden from the docs, changes with any commit.

pub mod checks;

use std::io::{Cursor, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::acp::connection::Connection;
use crate::acp::process::read_lines;
use crate::adapters::contain::contained_panics;
use crate::adapters::telegram::wire::{self, BotIdentity};
use crate::adapters::webchat;
use crate::config::{self, ParseContext};
use crate::event::{AgentRequest, PermissionOutcome};
use crate::net::httpd;
use crate::render::{self, TELEGRAM_RAW_LIMIT, TELEGRAM_TARGET, Units};
use crate::streamer::{BlockStreamConfig, BlockStreamer};
use checks::{
    balanced, content_without_fence_lines, fences_closed, fences_repairable, is_subsequence, non_ws,
    telegram_html_error, without_mentions,
};

/// A target: arbitrary bytes in, a panic when a property fails.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/<name>.rs` and regression folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("telegram_update", telegram_update),
    ("acp_lines", acp_lines),
    ("config", config),
    ("markdown", markdown),
    ("streamer", streamer),
    ("http_head", http_head),
    ("ws_frames", ws_frames),
];

/// The bot of the Telegram target.
const BOT_ID: i64 = 4242;
const BOT_USERNAME: &str = "tether_bot";

/// Telegram: the bytes as a `getUpdates` result, and as the text of a DM, a group mention,
/// a photo caption and a button press. No update may panic its decoder (even contained), the
/// offset covers every update id, and `strip_mention` removes our mentions and nothing else.
pub fn telegram_update(data: &[u8]) {
    let bot = BotIdentity { id: BOT_ID, username: BOT_USERNAME.into() };
    let panics = contained_panics();
    let text = String::from_utf8_lossy(data);
    let status = data.first().map_or(200, |b| if b % 2 == 0 { 200 } else { 400 + u16::from(*b) });
    if wire::parse_reply(status, &text).is_ok() {
        assert_eq!(status, 200, "only a 200 is a success");
    }
    if let Ok(result) = serde_json::from_slice::<Value>(data) {
        let (last, messages) = wire::parse_updates(&result, "fuzz", &bot);
        let updates = result.as_array().map(Vec::as_slice).unwrap_or_default();
        let highest = updates.iter().filter_map(|u| u.get("update_id").and_then(Value::as_i64)).max();
        assert_eq!(last, highest, "the offset must move past every update");
        assert!(messages.len() <= updates.len());
        let presses = wire::parse_button_presses(&result, "fuzz");
        assert!(presses.len() <= updates.len());
    }
    let units = text.encode_utf16().count();
    let offset = data.first().map_or(0, |b| usize::from(*b)) % (units + 1);
    let from = json!({"id": 999, "is_bot": false, "first_name": text});
    let entities = json!([
        {"type": "mention", "offset": offset, "length": BOT_USERNAME.len() + 1},
        {"type": "bot_command", "offset": 0, "length": units.min(64)},
        {"type": "text_mention", "offset": 0, "length": 1, "user": {"id": BOT_ID}},
    ]);
    let result = json!([
        {"update_id": 1, "message": {"message_id": 1, "chat": {"id": 999, "type": "private"}, "from": from, "text": text}},
        {"update_id": 2, "message": {"message_id": 2, "chat": {"id": -5, "type": "supergroup"}, "from": from,
            "text": text, "entities": entities}},
        {"update_id": 3, "message": {"message_id": 3, "chat": {"id": -5, "type": "group"}, "from": from,
            "photo": [], "caption": text, "caption_entities": entities, "reply_to_message": {"text": text}}},
        {"update_id": 4, "callback_query": {"id": text, "from": from, "data": text,
            "message": {"message_id": 9, "chat": {"id": -5, "type": "supergroup"}}}},
    ]);
    let (last, messages) = wire::parse_updates(&result, "fuzz", &bot);
    assert_eq!(last, Some(4));
    assert_eq!(messages.len(), 3, "a DM, a group text and a caption");
    let expected = non_ws(&without_mentions(&text, BOT_USERNAME));
    for message in &messages {
        assert_eq!(message.text, message.text.trim(), "stripped text is trimmed");
        assert_eq!(non_ws(&message.text), expected, "mentions of us go, nothing else: {text:?} -> {:?}", message.text);
    }
    assert!(messages[0].is_mentioned && messages[1].is_mentioned && messages[2].is_mentioned);
    assert_eq!(wire::parse_button_presses(&result, "fuzz").len(), 1);
    // The same batch as Telegram's reply, with half an emoji (a lone surrogate: valid JSON that
    // serde_json refuses) in the first text: still one batch, nothing skipped.
    let body = json!({"ok": true, "result": result}).to_string().replacen(r#""text":""#, r#""text":"\ud83d"#, 1);
    let Ok(reply) = wire::parse_reply(200, &body) else { panic!("a lone surrogate made the batch undecodable") };
    assert_eq!(wire::parse_updates(&reply, "fuzz", &bot).1.len(), 3);
    assert_eq!(contained_panics(), panics, "a decoder panicked (contained in production; a bug all the same)");
}

/// The ACP line decoder: the bytes as the agent's stdout, split into bounded lines, each fed
/// to [`Connection::receive`]; a line starting with `!` is a core request instead (`!new`,
/// `!load ID`, `!prompt ID TEXT`, `!cancel ID`, `!allow N OPTION`, `!deny N`). Every line
/// written back is one JSON-RPC 2.0 message on one line.
pub fn acp_lines(data: &[u8]) {
    const MAX: usize = 4096;
    let mut lines = Vec::new();
    read_lines(data, MAX, |line| {
        lines.push(line);
        lines.len() < 500
    });
    let mut connection = Connection::default();
    let mut writes = connection.start().writes;
    for line in &lines {
        // Each invalid byte may become a 3-byte U+FFFD.
        assert!(line.len() <= 3 * MAX, "a line over the bound came through: {} bytes", line.len());
        let step = match line.strip_prefix('!') {
            Some(command) => connection.request(core_request(command)),
            None => connection.receive(line),
        };
        writes.extend(step.writes);
    }
    for write in writes {
        assert!(!write.contains('\n'), "a write spans lines: {write:?}");
        let Ok(message) = serde_json::from_str::<Value>(&write) else { panic!("a write is not JSON: {write:?}") };
        assert_eq!(message["jsonrpc"], "2.0", "{write}");
        assert!(message.get("method").is_some() || message.get("id").is_some(), "{write}");
    }
}

fn core_request(command: &str) -> AgentRequest {
    let mut words = command.splitn(3, ' ');
    let verb = words.next().unwrap_or_default();
    let first = words.next().unwrap_or_default().to_string();
    let rest = words.next().unwrap_or_default().to_string();
    let cwd = Path::new("/fuzz").to_path_buf();
    match verb {
        "load" => AgentRequest::LoadSession { key: "k".into(), session_id: first, cwd, model: Some(rest) },
        "prompt" => AgentRequest::Prompt { session_id: first, text: rest },
        "cancel" => AgentRequest::Cancel { session_id: first },
        "allow" | "deny" => AgentRequest::AnswerPermission {
            request: first.parse().unwrap_or(0),
            outcome: if verb == "allow" { PermissionOutcome::Selected(rest) } else { PermissionOutcome::Cancelled },
        },
        _ => AgentRequest::NewSession { key: first, cwd, model: (!rest.is_empty()).then_some(rest) },
    }
}

/// The config parser: any text is either a config or an error that names the file; parsing
/// is deterministic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let env = |name: &str| name.starts_with("FUZZ").then(|| format!("value of {name}"));
    let cx = ParseContext {
        path: Path::new("/fuzz/config.json"),
        cwd: Path::new("/fuzz"),
        home: Some(Path::new("/home/fuzz")),
        env: &env,
    };
    let first = config::parse(text, &cx);
    if let Err(error) = &first {
        assert!(!error.message.is_empty());
        assert!(error.to_string().starts_with("/fuzz/config.json: "), "{error}");
    }
    assert_eq!(config::parse(text, &cx), first, "parsing twice gave two answers");
}

/// Two knob bytes, then the text.
fn knobs(data: &[u8]) -> (usize, usize, String) {
    let k0 = data.first().map_or(0, |b| usize::from(*b));
    let k1 = data.get(1).map_or(0, |b| usize::from(*b));
    (k0, k1, String::from_utf8_lossy(data.get(2..).unwrap_or_default()).into_owned())
}

/// The Markdown converters and chunkers: Telegram HTML is strict-valid; every chunk fits its
/// limit, is not blank and closes its fences; no text is lost or duplicated across chunks.
pub fn markdown(data: &[u8]) {
    let (k0, k1, text) = knobs(data);
    let md = text.trim_end();
    let html = render::telegram_html(md);
    if let Some(error) = telegram_html_error(&html) {
        panic!("telegram_html made invalid HTML ({error}): {md:?} -> {html:?}");
    }
    let visible = |chunk: &str| render::strip_tags(chunk).encode_utf16().count();
    let chunks = render::telegram_chunks(md);
    for chunk in &chunks {
        assert!(balanced(chunk), "{:?} in {chunk:?}", telegram_html_error(chunk));
        assert!(visible(chunk) <= TELEGRAM_TARGET && chunk.len() <= TELEGRAM_RAW_LIMIT);
        assert!(!render::strip_tags(chunk).trim().is_empty(), "blank chunk");
    }
    let joined: String = chunks.iter().map(|c| render::strip_tags(c)).collect();
    assert_eq!(non_ws(&joined), non_ws(&render::strip_tags(&html)), "telegram_chunks lost or repeated text");

    let (limit, raw_limit) = (10 + k0 % 300, 200 + k1 * 3);
    let pieces = render::split_html(&html, limit, raw_limit);
    for piece in &pieces {
        assert!(balanced(piece), "{:?} in {piece:?}", telegram_html_error(piece));
        assert!(visible(piece) <= limit, "{limit}: {piece:?}");
        // "Where possible": a piece always takes one visible character, whatever its tags
        // weigh (a link whose href alone is over the raw limit).
        let one_char = render::strip_tags(piece).chars().count() <= 1;
        assert!(piece.len() <= raw_limit || one_char, "{raw_limit}: {piece:?}");
    }
    let joined: String = pieces.iter().map(|c| render::strip_tags(c)).collect();
    assert_eq!(non_ws(&joined), non_ws(&render::strip_tags(&html)), "split_html lost or repeated text");

    let units = [Units::Chars, Units::Utf16, Units::Bytes][k0 % 3];
    let limit = 40 + k1 * 8;
    let chunks = render::chunk_markdown(md, limit, units);
    // The chunker reads `\r` as a line end, as Markdown does.
    let lines = render::normalize_newlines(md);
    let repairable = fences_repairable(&lines, limit, |s| units.len(s));
    for chunk in &chunks {
        assert!(units.len(chunk) <= limit, "{units:?} {limit}: {chunk:?}");
        assert!(!chunk.trim().is_empty(), "blank chunk");
        assert!(fences_closed(chunk) || !repairable, "open fence in {chunk:?}");
    }
    if repairable {
        assert_eq!(
            content_without_fence_lines(&chunks.join("\n")),
            content_without_fence_lines(&lines),
            "chunk_markdown lost or repeated text at {limit} {units:?}: {chunks:?}"
        );
    } else {
        // A fence cut like plain text changes which lines read as fence lines: only check
        // that nothing was lost (repaired fences elsewhere still add their marker lines).
        assert!(is_subsequence(&non_ws(md), &non_ws(&chunks.concat())), "chunk_markdown lost text: {chunks:?}");
    }
    let plain = render::plain_chunks(md, limit, units);
    for chunk in &plain {
        assert!(units.len(chunk) <= limit, "{units:?} {limit}: {chunk:?}");
    }
    assert_eq!(non_ws(&plain.concat()), non_ws(&render::plain_text(md)), "plain_chunks lost or repeated text");
}

/// The block streamer: deltas of knob-chosen sizes at knob-chosen times; every block fits
/// `max_chars`, closes its fences (unless the source left one open at the end), and the
/// blocks hold the text exactly once.
pub fn streamer(data: &[u8]) {
    let (k0, k1, text) = knobs(data);
    let (min, max) = (20 + k0 % 100, 120 + k1);
    // Half the inputs without idle flushes, so the stricter checks below run on them.
    let idle = Duration::from_millis(if k1 % 2 == 1 { 50 } else { 0 });
    let mut streamer = BlockStreamer::new(BlockStreamConfig { min_chars: min, max_chars: max, idle });
    let t0 = Instant::now();
    let chars: Vec<char> = text.chars().collect();
    // Each block, and whether it starts mid-line in the text: after an idle flush (§6.2 sends
    // the whole buffer, unfinished line included) the next block may.
    let mut blocks: Vec<(String, bool)> = Vec::new();
    let mut fed = String::new();
    let starts_mid_line = |fed: &str, streamer: &BlockStreamer| {
        // A buffer that is not a suffix of the text so far starts with a reopened fence line.
        let buffered = streamer.buffered();
        let start = fed.len().saturating_sub(buffered.len());
        fed.ends_with(buffered) && start > 0 && !fed.get(..start).is_some_and(|before| before.ends_with('\n'))
    };
    let mut keep = |mid_line: bool, emitted: Vec<String>| {
        for (k, block) in emitted.into_iter().enumerate() {
            blocks.push((block, k == 0 && mid_line));
        }
    };
    let (mut pos, mut clock, mut seed) = (0, 0u64, (k0 * 256 + k1) as u64 | 1);
    while pos < chars.len() {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let take = 1 + (seed >> 33) as usize % 40;
        let delta: String = chars.iter().skip(pos).take(take).collect();
        pos += take;
        clock += (seed >> 50) % 80;
        let now = t0 + Duration::from_millis(clock);
        keep(starts_mid_line(&fed, &streamer), streamer.poll(now));
        keep(starts_mid_line(&fed, &streamer), streamer.push(&delta, now));
        fed.push_str(&delta);
    }
    keep(starts_mid_line(&fed, &streamer), streamer.finish());
    let unclosed_source = !fences_closed(&text);
    let repairable = fences_repairable(&text, max, |s| s.encode_utf16().count());
    // After an idle flush that ends mid-line (§6.2 sends the whole buffer), the next block
    // starts mid-line: the streamer then reads that first fragment as no fence line (it is
    // none in the text), while the block, shown from a line start, may open a fence there. From
    // that block on, only sizes and no-loss are checked: the fences are right as the streamer
    // reads the text, not necessarily as a reader of each block would.
    let mut in_step = true;
    for (k, (block, mid_line)) in blocks.iter().enumerate() {
        assert!(block.encode_utf16().count() <= max, "block over {max}: {block:?}");
        assert!(!block.trim().is_empty(), "blank block");
        in_step &= !*mid_line;
        if repairable && in_step && !(k + 1 == blocks.len() && unclosed_source) {
            assert!(fences_closed(block), "open fence in {block:?}");
        }
    }
    let blocks: Vec<String> = blocks.into_iter().map(|(block, _)| block).collect();
    let repairable = repairable && in_step;
    if repairable {
        assert_eq!(
            content_without_fence_lines(&blocks.join("\n")),
            content_without_fence_lines(&text),
            "the streamer lost or repeated text: {blocks:?}"
        );
    } else {
        assert!(is_subsequence(&non_ws(&text), &non_ws(&blocks.concat())), "the streamer lost text: {blocks:?}");
    }
}

/// The web chat's HTTP request head: parsed or refused with a 4xx/5xx; what is parsed has no
/// line breaks in it; the access rules never redirect off this server.
pub fn http_head(data: &[u8]) {
    let head = httpd::find_head_end(data).and_then(|end| data.get(..end)).unwrap_or(data);
    let request = match httpd::parse_head(head) {
        Ok(request) => request,
        Err((status, reason)) => {
            assert!(matches!(status, 400 | 431 | 501 | 505), "{status} {reason}");
            return;
        }
    };
    assert!(!request.method.is_empty() && request.method.bytes().all(|b| b.is_ascii_uppercase()));
    assert!(request.path.starts_with('/') && request.path.bytes().all(|b| b.is_ascii_graphic()));
    for (name, value) in &request.headers {
        assert!(!name.is_empty() && !name.contains([':', '\r', '\n']) && !value.contains(['\r', '\n']));
        assert!(request.header(name).is_some());
    }
    assert!(httpd::content_length(&request).is_ok(), "parse_head accepted a bad Content-Length");
    let _ = (request.cookie("tether_token"), request.query_param("token"), httpd::percent_decode(&request.path));
    if let Ok(response) = httpd::websocket_upgrade(&request) {
        assert_eq!((response.status, request.method.as_str()), (101, "GET"));
    }
    let _ = webchat::is_same_origin(&request);
    for token in [None, Some("fuzz-token")] {
        if let webchat::Access::Answer(response) = webchat::check_access(&request, token) {
            for (name, value) in response.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("location")) {
                // Browsers read `\` as `/` in http(s) URLs: `/\host` leaves the server too.
                let normalized = value.replace('\\', "/");
                assert!(
                    normalized.starts_with('/') && !normalized.starts_with("//"),
                    "{name}: {value} leaves the server"
                );
            }
        }
    }
}

/// A socket in memory: reads the fuzz bytes, swallows writes.
struct Pipe(Cursor<Vec<u8>>);

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The web chat's WebSocket frames (tungstenite with our limits) and the JSON client frames
/// in them; also the bytes themselves as one client frame.
pub fn ws_frames(data: &[u8]) {
    let mut socket = tungstenite::WebSocket::from_raw_socket(
        Pipe(Cursor::new(data.to_vec())),
        tungstenite::protocol::Role::Server,
        Some(webchat::socket_config()),
    );
    for _ in 0..64 {
        match socket.read() {
            Ok(message) => {
                assert!(message.len() <= webchat::MAX_WS_MESSAGE);
                if let tungstenite::Message::Text(text) = message {
                    client_frame(text.as_str());
                }
            }
            Err(_) => break,
        }
    }
    client_frame(&String::from_utf8_lossy(data));
}

fn client_frame(json: &str) {
    let Ok(frame) = serde_json::from_str::<webchat::ClientFrame>(json) else { return };
    let webchat::ClientFrame::Message { file: Some(file), .. } = frame else { return };
    let name = webchat::sanitize_file_name(&file.name);
    assert!(!name.is_empty() && name.len() <= 100 && !name.starts_with('.'), "{name:?}");
    assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)), "{name:?}");
    let mime = webchat::sanitize_mime(&file.mime);
    assert!(
        mime == "application/octet-stream" || (mime.contains('/') && mime == mime.to_ascii_lowercase()),
        "{mime:?}"
    );
    if let Some(bytes) = webchat::decode_base64(&file.data) {
        assert!(bytes.len() <= file.data.len() / 4 * 3 + 3);
        assert_eq!(webchat::decode_base64(&checks::encode_base64(&bytes)).as_deref(), Some(bytes.as_slice()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every input kept in `fuzz/regressions/<target>/` and `fuzz/seeds/<target>/` passes its
    /// target: the findings of past fuzzing runs stay fixed, without cargo-fuzz.
    #[test]
    fn regression_and_seed_inputs_pass() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut replayed = 0;
        for (name, target) in TARGETS {
            for kind in ["regressions", "seeds"] {
                let Ok(entries) = std::fs::read_dir(root.join(kind).join(name)) else { continue };
                let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
                paths.sort();
                for path in paths.iter().filter(|p| p.is_file()) {
                    let data = std::fs::read(path).unwrap();
                    let outcome = std::panic::catch_unwind(|| target(&data));
                    assert!(outcome.is_ok(), "{} fails target {name}", path.display());
                    replayed += 1;
                }
            }
        }
        assert!(replayed >= TARGETS.len(), "only {replayed} inputs under {}", root.display());
    }

    #[test]
    fn targets_take_empty_and_small_inputs() {
        for (_, target) in TARGETS {
            for data in [&b""[..], b"\x00", b"\xff\xfe", "Ⱥ@tether_bot éẞ".as_bytes(), b"{}", b"[]"] {
                target(data);
            }
        }
    }
}
