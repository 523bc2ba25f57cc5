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
use crate::acp::process::{Overlong, read_lines};
use crate::adapters::contained_panics;
use crate::adapters::dingtalk::{self, wire as dingtalk_wire};
use crate::adapters::discord::gateway::{self, Gateway, Input as GatewayInput};
use crate::adapters::discord::wire::{self as discord_wire, GatewayEvent, RestFailure};
use crate::adapters::telegram::wire::{self, BotIdentity};
use crate::adapters::webchat;
use crate::config::{self, ParseContext};
use crate::event::{AgentEvent, AgentRequest, PermissionOutcome};
use crate::net::httpd;
use crate::render::{self, TELEGRAM_RAW_LIMIT, TELEGRAM_TARGET, Units};
use crate::streamer::{BlockStreamConfig, BlockStreamer};
use crate::time_zone::TimeZone;
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
    ("weixin_update", weixin_update),
    ("dingtalk_frame", dingtalk_frame),
    ("plugin_input", plugin_input),
    ("time_zone", time_zone),
    ("discord_event", discord_event),
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
    read_lines(data, MAX, Overlong::Cut, |line| {
        lines.push(line.to_string());
        lines.len() < 500
    });
    let mut connection = Connection::default();
    let mut writes = connection.start().writes;
    // The same lines through the general path only: the text-chunk fast path must not change
    // what any line does.
    let mut general = Connection::default();
    general.start();
    for line in &lines {
        // Each invalid byte may become a 3-byte U+FFFD.
        assert!(line.len() <= 3 * MAX, "a line over the bound came through: {} bytes", line.len());
        let step = match line.strip_prefix('!') {
            Some(command) => {
                general.request(core_request(command));
                connection.request(core_request(command))
            }
            None => {
                let step = connection.receive(line);
                let trimmed = line.trim();
                if trimmed.is_empty() {
                    assert_eq!(step, Default::default(), "a blank line did something");
                } else if serde_json::from_str::<Value>(trimmed).is_err() {
                    // Fields the fast path skips may hold what a `Value` cannot (a number
                    // beyond f64, a lone surrogate, deep nesting): the general path drops such
                    // a line, the fast path still takes its text, and nothing else.
                    let only_text = step
                        .events
                        .iter()
                        .all(|event| matches!(event, AgentEvent::TextChunk { .. } | AgentEvent::Thought { .. }));
                    assert!(only_text && step.writes.is_empty(), "{line:?} gave {step:?}");
                    assert_eq!(general.receive_message(trimmed), Default::default(), "{line:?}");
                } else {
                    let expected = general.receive_message(trimmed);
                    assert_eq!(step, expected, "the text-chunk fast path and the general path differ on {line:?}");
                }
                step
            }
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
        "prompt" => AgentRequest::Prompt { session_id: first, text: rest, images: Vec::new() },
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
        platforms: crate::adapters::PLATFORMS,
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
        // The streamer reads `\r` as a line end, as the renderers do.
        let fed = &render::normalize_newlines(fed);
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
    let text = render::normalize_newlines(&text);
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
    let _ = request.is_same_origin();
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
    let Ok(frame) = webchat::ClientFrame::from_json(json) else { return };
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

/// WeChat (iLink): the bytes as an API reply and, when JSON, as a `getupdates` reply and a QR
/// status; as the text, file name, keys and ids of a user message; as an answer with
/// `[IMAGE:]` markers; as CDN ciphertext. No decoder panics (not even one `adapters::contain`
/// would catch); a message is a DM whose chat is its sender; at most
/// [`MAX_MEDIA_ITEMS`](crate::adapters::weixin::wire::MAX_MEDIA_ITEMS) files per message; saved
/// file names are one safe path component; marker paths are absolute; reply pieces fit the
/// limit; AES-128-ECB decrypts what it encrypted and refuses garbage without panicking.
pub fn weixin_update(data: &[u8]) {
    use crate::adapters::weixin::{crypto, media, wire};
    let panics = contained_panics();
    let text = String::from_utf8_lossy(data);
    let status = data.first().map_or(200, |b| if b % 2 == 0 { 200 } else { 400 + u16::from(*b) });
    if wire::parse_reply(status, &text).is_ok() {
        assert_eq!(status, 200, "only a 200 is a success");
    }
    let check_message = |raw: &Value| {
        let Some(message) =
            crate::adapters::contain(crate::adapters::Fingerprint::of(&[data]), || wire::parse_message(raw))
        else {
            return;
        };
        let Some(message) = message else { return };
        assert!(message.media.len() <= wire::MAX_MEDIA_ITEMS);
        assert!(!message.message_id.is_empty() && !message.from_user_id.is_empty());
        for item in &message.media {
            let _ = item.media.key();
            let _ = wire::download_url("https://cdn.example/c2c", &item.media);
        }
        let inbound = wire::to_inbound("fuzz", &message, Vec::new(), &[text.to_string()]);
        assert!(!inbound.is_group && inbound.chat_id == inbound.sender_id && inbound.sender_id == message.from_user_id);
    };
    if let Ok(reply) = serde_json::from_slice::<Value>(data) {
        let updates = wire::parse_updates(&reply);
        updates.messages.iter().for_each(check_message);
        let _ = wire::parse_qr_status(&reply);
        let _ = wire::parse_qr_code(&reply);
    }
    let message = json!({"message_type": 1, "from_user_id": text, "message_id": text, "context_token": text,
    "item_list": [
        {"type": 1, "text_item": {"text": text}, "ref_msg": {"title": text}},
        {"type": 2, "image_item": {"aeskey": text, "media": {"aes_key": text, "encrypt_query_param": text}}},
        {"type": 3, "voice_item": {"text": text}},
        {"type": 4, "file_item": {"file_name": text, "len": text, "media": {"aes_key": text, "full_url": text}}},
    ]});
    check_message(&message);
    let name = media::safe_file_name(&text);
    assert!(!name.is_empty() && name.chars().count() <= 100, "{name:?}");
    assert!(!name.contains(['/', '\\']) && !name.starts_with('.') && !name.chars().any(char::is_control), "{name:?}");
    let (kept, paths) = media::take_image_markers(&text);
    assert!(kept.len() <= text.len());
    assert!(paths.iter().all(|p| p.is_absolute()), "{paths:?}");
    for piece in wire::reply_texts(&text) {
        assert!(!piece.trim().is_empty() && piece.chars().count() <= wire::TEXT_LIMIT);
    }
    let _ = media::sniff_mime(data, crate::event::AttachmentKind::Image);
    let key = [0x2b; 16];
    let _ = crypto::decrypt(&key, data);
    assert_eq!(crypto::decrypt(&key, &crypto::encrypt(&key, data)).as_deref(), Ok(data));
    assert_eq!(contained_panics(), panics, "a decoder panicked (contained in production; a bug all the same)");
}

/// DingTalk: the bytes as a Stream frame, as a robot message's `data`, as the text of a group
/// message that mentions the robot, and as a file name and a reply. No decoder panics; a ping
/// is echoed with its own data and message id; mention stripping only removes a prefix;
/// titles are short and clean; what is saved takes a safe name; message ids are remembered
/// within their bound.
pub fn dingtalk_frame(data: &[u8]) {
    let panics = contained_panics();
    let text = String::from_utf8_lossy(data);
    if let Ok(frame) = dingtalk_wire::parse_frame(&text) {
        match frame {
            dingtalk_wire::Frame::Ping { message_id, data } => {
                let ack: Value = serde_json::from_str(&dingtalk_wire::ack(&message_id, &data))
                    .unwrap_or_else(|e| panic!("an ack is not JSON: {e}"));
                assert_eq!(ack["headers"]["messageId"].as_str(), Some(message_id.as_str()));
                assert_eq!(ack["data"].as_str(), Some(data.as_str()), "a ping is echoed as it came");
            }
            dingtalk_wire::Frame::Callback { data, .. } => {
                let _ = dingtalk_wire::parse_robot_message(&data, "fuzz");
            }
            _ => {}
        }
    }
    if let Ok(robot) = dingtalk_wire::parse_robot_message(&text, "fuzz") {
        assert!(robot.message.message_id.is_some(), "a robot message has an id");
        assert_eq!(robot.message.chat_id, robot.route.conversation_id);
        assert!(robot.message.is_group || robot.message.is_mentioned, "a DM is always addressed to us");
    }
    let group = json!({
        "conversationId": "cidG", "conversationType": "2", "msgId": "m", "senderStaffId": "s",
        "isInAtList": true, "msgtype": "text", "text": {"content": text},
        "quoteMessage": {"senderId": "x", "text": {"content": text}},
    });
    let robot = dingtalk_wire::parse_robot_message(&group.to_string(), "fuzz")
        .unwrap_or_else(|e| panic!("a well-formed message does not decode: {e}"));
    let got = &robot.message.text;
    assert_eq!(got, got.trim(), "the text is trimmed");
    assert!(text.contains(got.as_str()), "mention stripping removes a prefix only: {text:?} -> {got:?}");
    let title = dingtalk_wire::title_of(&text);
    assert!(!title.is_empty() && title.chars().count() <= 20 && !title.chars().any(char::is_control), "{title:?}");
    let piece = dingtalk_wire::titled(&title, &text);
    assert_eq!(dingtalk_wire::untitled(&piece), (title, text.as_ref()));
    let name = dingtalk::safe_file_name(&text);
    assert!(name.chars().count() <= 80 && !name.starts_with('.') && name != "..", "{name:?}");
    assert!(!name.contains('/') && !name.chars().any(char::is_control), "{name:?}");
    let mut dedup = dingtalk_wire::Dedup::new(8);
    for (n, id) in text.split(' ').enumerate() {
        let first = dedup.first_time(id, n as u64);
        assert!(!first || !dedup.first_time(id, n as u64), "an id is taken once");
    }
    assert!(dedup.remembered() <= 8);
    assert_eq!(contained_panics(), panics);
}

/// Discord: the bytes' lines as what the gateway link feeds the session machine (a frame, or
/// `open`, `drop`, `close N`, `wait`), and the bytes as a MESSAGE_CREATE or INTERACTION_CREATE
/// payload, as the content of a server message that mentions the bot, and as REST answers and
/// their rate-limit headers. See [`discord_gateway_script`] and [`discord_payloads`].
pub fn discord_event(data: &[u8]) {
    let panics = contained_panics();
    let text = String::from_utf8_lossy(data);
    discord_gateway_script(&text);
    discord_payloads(&text);
    assert_eq!(contained_panics(), panics);
}

/// The gateway machine, fed as the link feeds it (`Connected` only after a `Connect`, frames
/// and closes only on an open socket). An open socket always has a wake (a beat or the
/// handshake deadline: never deaf); a reconnect waits at most a minute and goes to the
/// identify URL or a resume URL a READY gave; beats and resumes claim no sequence not seen and
/// resume only sessions a READY gave; only a fatal close code parks, and a parked machine
/// does nothing.
fn discord_gateway_script(text: &str) {
    const URL: &str = "wss://gateway.fuzz/?v=10&encoding=json";
    let mut machine = Gateway::with_random(URL.into(), "fuzz", || 7);
    let mut now = Instant::now();
    let mut link = LinkModel { urls: vec![URL.to_string()], ..LinkModel::default() };
    link.take(&machine.start(), &machine);
    for line in text.lines().take(1000) {
        now += Duration::from_millis(250);
        let input = match line {
            "open" if link.connecting => GatewayInput::Connected,
            "drop" if link.open => GatewayInput::Closed { code: None, reason: String::new() },
            "wait" => {
                now += Duration::from_secs(20);
                GatewayInput::Tick
            }
            _ => match (line.strip_prefix("close ").and_then(|c| c.parse().ok()), discord_wire::decode_frame(line)) {
                (Some(code), _) if link.open => GatewayInput::Closed { code: Some(code), reason: "fuzz".into() },
                (None, Ok(frame)) if link.open => GatewayInput::Frame(frame),
                _ => GatewayInput::Tick,
            },
        };
        link.feed(&input);
        let fatal = matches!(&input, GatewayInput::Closed { code: Some(c), .. } if gateway::fatal(*c).is_some());
        let actions = machine.step(input, now);
        assert!(!link.parked || actions.is_empty(), "a parked machine acts: {actions:?}");
        let parks = actions.iter().any(|a| matches!(a, gateway::Action::Park { .. }));
        assert_eq!(parks, fatal, "parks only on a fatal close code");
        link.take(&actions, &machine);
    }
}

/// What `link::run` knows of the gateway's socket, and what the machine has been told, for
/// [`discord_gateway_script`].
#[derive(Default)]
struct LinkModel {
    /// A `Connect` is being carried out (the next `open` answers it).
    connecting: bool,
    open: bool,
    parked: bool,
    /// The highest sequence number a dispatch carried.
    max_seq: Option<u64>,
    /// Session ids and URLs the gateway gave (the identify URL first).
    sessions: Vec<String>,
    urls: Vec<String>,
}

impl LinkModel {
    /// An input about to reach the machine.
    fn feed(&mut self, input: &GatewayInput) {
        match input {
            GatewayInput::Connected => (self.connecting, self.open) = (false, true),
            GatewayInput::Closed { .. } => self.open = false,
            GatewayInput::Frame(GatewayEvent::Dispatch { seq, name, data }) => {
                self.max_seq = self.max_seq.max(*seq);
                if let (Some(ready), "READY") = (discord_wire::parse_ready(data), name.as_str()) {
                    self.sessions.push(ready.session_id);
                    self.urls.push(discord_wire::gateway_url(&ready.resume_gateway_url));
                }
            }
            _ => {}
        }
    }

    /// The machine's actions, carried out; then an open socket must have a wake.
    fn take(&mut self, actions: &[gateway::Action], machine: &Gateway) {
        let max_seq = self.max_seq;
        for action in actions {
            match action {
                gateway::Action::Connect { url, after } => {
                    assert!(*after <= Duration::from_secs(60), "a reconnect waits {after:?}");
                    assert!(self.urls.contains(url), "connects to {url:?}, which no one gave");
                    (self.connecting, self.open) = (true, false);
                }
                gateway::Action::Close { .. } => self.open = false,
                gateway::Action::Heartbeat { seq } => assert!(*seq <= max_seq, "beat {seq:?} > {max_seq:?}"),
                gateway::Action::Resume { session_id, seq } => {
                    assert!(self.sessions.contains(session_id), "resumes {session_id:?}, which no READY gave");
                    assert!(Some(*seq) <= max_seq, "resume at {seq} > {max_seq:?}");
                }
                gateway::Action::Park { .. } => (self.parked, self.open, self.connecting) = (true, false, false),
                gateway::Action::Identify | gateway::Action::Dispatch { .. } | gateway::Action::SessionLost => {}
            }
        }
        if self.open && !self.parked {
            assert!(machine.next_wake().is_some(), "an open socket without a wake: deaf");
        }
    }
}

/// The bot's id in the Discord payloads below.
const DISCORD_BOT: &str = "4242";

/// Discord's payloads and REST answers. No decoder panics; a message is never the bot's own,
/// a DM is addressed to us, its text is trimmed and not empty without attachments; the bot's
/// mentions are removed (also those a removal puts together) and nothing else but whitespace;
/// a button press's callback id splits back into its id and token; rate-limit waits are at
/// most an hour, and each HTTP status gets its class.
fn discord_payloads(text: &str) {
    if let Ok(d) = serde_json::from_str::<Value>(text) {
        if let Some(m) = discord_wire::parse_message(&d, "fuzz", DISCORD_BOT, &()) {
            let message = &m.message;
            assert_eq!(message.channel, "fuzz");
            assert_ne!(message.sender_id, DISCORD_BOT, "the bot's own message");
            assert!(message.is_group || message.is_mentioned, "a DM is always addressed to us");
            assert_eq!(message.text, message.text.trim());
            assert!(!message.text.is_empty() || !m.attachments.is_empty(), "nothing to handle");
            assert_eq!(message.thread_id.is_some(), m.in_thread == Some(true));
        }
        if let Some(press) = discord_wire::parse_button(&d, "fuzz") {
            let id = d["id"].as_str().unwrap_or_default();
            let token = d["token"].as_str().unwrap_or_default();
            assert_eq!(discord_wire::split_callback_id(&press.callback_id), Some((id, token)));
        }
    }
    let mentioned = json!({
        "id": "1", "channel_id": "2", "guild_id": "3", "channel_type": 0, "type": 0, "content": text,
        "author": {"id": "111", "username": "u"}, "mentions": [{"id": DISCORD_BOT}],
    });
    let ours = [format!("<@{DISCORD_BOT}>"), format!("<@!{DISCORD_BOT}>")];
    match discord_wire::parse_message(&mentioned, "fuzz", DISCORD_BOT, &()) {
        Some(m) => {
            let got = &m.message.text;
            assert!(m.message.is_mentioned && got == got.trim(), "{got:?}");
            assert!(!ours.iter().any(|t| got.contains(t.as_str())), "a mention is left: {text:?} -> {got:?}");
            assert!(is_subsequence(&non_ws(got), &non_ws(text)), "more than mentions removed: {text:?} -> {got:?}");
        }
        None => assert!(text.trim().is_empty() || text.contains("<@"), "a message with text was dropped: {text:?}"),
    }
    let headers = discord_wire::parse_rate_limit_headers(|name| {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::to_string))
    });
    let hour = Duration::from_secs(3600);
    assert!(headers.reset_after <= Some(hour) && headers.retry_after <= Some(hour), "{headers:?}");
    assert!(headers.bucket.as_ref().is_none_or(|b| !b.is_empty() && b.len() <= 128), "{headers:?}");
    for status in [200, 204, 400, 401, 403, 404, 429, 500, 503] {
        match discord_wire::parse_reply(status, text, &headers) {
            Ok(_) => assert!((200..300).contains(&status), "{status} taken as success"),
            Err(RestFailure::RateLimited(wait) | RestFailure::GlobalRateLimited(wait)) => {
                assert!(status == 429 && wait <= hour, "{status}: wait {wait:?}");
            }
            Err(RestFailure::Unauthorized(_)) => assert_eq!(status, 401),
            Err(RestFailure::Blocked(_)) => assert_eq!(status, 403),
            Err(RestFailure::Transient(_)) => assert!(!(300..500).contains(&status) || [400, 404].contains(&status)),
            Err(RestFailure::Rejected(_)) => {
                assert!((400..500).contains(&status) && ![401, 403, 429].contains(&status))
            }
        }
    }
    for word in text.split_whitespace().take(64) {
        let _ = (discord_wire::snowflake_ms(word), discord_wire::snowflake_newer(word, "1"));
    }
}

/// Exec adapters and webhooks: the bytes as what an adapter writes on its stdout (lines
/// through the bounded reader, each decoded), and as a webhook request's body (signed, then
/// replayed) and as a prompt template. No decoder panics; lines stay within their bound and
/// hold no newline; a message belongs to the exec channel, never carries the webhook mark,
/// and its ids are bounded; a signed body is accepted once and its replay refused; the
/// payload is cut within its bound; templates fill without panicking.
pub fn plugin_input(data: &[u8]) {
    use crate::adapters::exec::protocol::{self, FromAdapter, Line, LineReader};
    use crate::adapters::webhook::intake::{self, Auth, Delivery, Intake, Refusal, Source};
    let panics = contained_panics();
    let mut reader = LineReader::new(std::io::BufReader::with_capacity(16, data), 64);
    let mut seen = 0usize;
    while let Ok(Some(line)) = reader.next_line() {
        seen += 1;
        assert!(seen <= data.len() + 1, "more lines than bytes");
        let Line::Text(bytes) = line else { continue };
        assert!(bytes.len() <= 64 && !bytes.contains(&b'\n'), "{bytes:?}");
    }
    if let Ok(FromAdapter::Message(m)) = protocol::decode(data, "fuzz") {
        assert_eq!(m.channel, "fuzz");
        assert!(m.webhook.is_none(), "an adapter can never mark a message as a webhook event");
        for id in
            [Some(&m.chat_id), Some(&m.sender_id), m.message_id.as_ref(), m.thread_id.as_ref()].into_iter().flatten()
        {
            assert!(id.chars().count() <= 256, "{id:?}");
        }
        assert!(!m.chat_id.is_empty() && !m.sender_id.is_empty());
        assert!(m.attachments.iter().all(|a| a.path.is_absolute()));
    }
    let text = String::from_utf8_lossy(data);
    let _ = intake::fill(&text, "src", "ev", &text);
    let payload = intake::payload_text(data);
    assert!(payload.chars().count() <= intake::MAX_PAYLOAD_CHARS + 80, "the payload is cut");
    let source = Source {
        name: "ci".into(),
        secret: "fuzz-secret-0123456789".into(),
        auth: Auth::HmacSha256,
        target: crate::event::ChatRef { channel: "phone".into(), chat_id: "1".into(), thread_id: None },
        template: text.to_string(),
        session: "ci".into(),
    };
    let mut intake = Intake::new(vec![source]);
    let signature = intake::sign("fuzz-secret-0123456789", None, data);
    let header = |name: &str| match name {
        intake::SIGNATURE_HEADER => Some(signature.clone()),
        "X-GitHub-Event" => Some(text.to_string()),
        _ => None,
    };
    let delivery = Delivery { source: "ci", header: &header, body: data };
    let now = Instant::now();
    let message =
        intake.judge(&delivery, 1_767_000_000, now).unwrap_or_else(|e| panic!("a signed body is refused: {e:?}"));
    assert_eq!((message.channel.as_str(), message.webhook.as_deref()), ("phone", Some("ci")));
    assert_eq!(intake.judge(&delivery, 1_767_000_000, now).map(|_| ()), Err(Refusal::Replayed));
    assert_eq!(contained_panics(), panics);
}

/// Time zones: the bytes as a TZif file and as a POSIX TZ string (`TZ` and the disk are
/// untrusted-ish). Neither parser panics; a zone that parses has, at every instant, an offset
/// within RFC 8536's bounds and an abbreviation, and the instant of the local time it shows
/// resolves to that instant or an earlier one (a fold's first time) showing the same time.
pub fn time_zone(data: &[u8]) {
    let mut zones = Vec::new();
    zones.extend(TimeZone::tzif(None, data).ok());
    if let Ok(text) = std::str::from_utf8(data) {
        zones.extend(TimeZone::posix(text).ok());
    }
    // Fixed instants (the extremes are clamped), and some from the input, within ±2^48 s.
    let mut instants = vec![i64::MIN, i64::MAX, 0, -1, 1_783_000_000, 1_792_800_000, -2_208_988_800, 253_402_300_799];
    instants.extend(data.chunks(8).take(32).map(|chunk| {
        let mut bytes = [0u8; 8];
        bytes.iter_mut().zip(chunk).for_each(|(b, c)| *b = *c);
        i64::from_le_bytes(bytes) % (1 << 48)
    }));
    for zone in zones {
        for at in &instants {
            let (offset, abbreviation) = zone.offset_at(*at);
            assert!((-89_999..=93_599).contains(&offset), "offset {offset} at {at}");
            assert!(!abbreviation.is_empty() && abbreviation.len() <= 32, "abbreviation {abbreviation:?} at {at}");
            let (local, _) = zone.local_at(*at);
            if at.unsigned_abs() > 1 << 48 {
                continue;
            }
            let first = zone.first_instant(local);
            assert!(first.is_some_and(|first| first <= *at), "{local:?} shown at {at} resolves to {first:?}");
            let shown = first.map(|first| zone.local_at(first).0);
            assert_eq!(shown, Some(local), "{local:?} shown at {at} resolves to {first:?}");
        }
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
