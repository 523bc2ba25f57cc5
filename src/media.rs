//! Media shared by every platform, pure: the `[IMAGE: /abs/path]` and `[FILE: /abs/path]`
//! markers an agent writes to send a file (found outside code), image types sniffed from
//! their first bytes, base64 for ACP image blocks, safe file names for what people send, and
//! the `maxMediaBytes` / `mediaRetention` channel keys. The file I/O lives in
//! `adapters::uploads`; each platform uploads and downloads in its own folder.

use std::time::Duration;

use serde_json::Value;

use crate::config::{ConfigError, PlatformKeys};
use crate::vec_map::VecMap;

/// Largest file taken in or sent out, unless the channel's `maxMediaBytes` says otherwise
/// (the Bot API's own download limit).
pub const DEFAULT_MAX_BYTES: u64 = 20 * 1024 * 1024;
/// How long received files are kept, unless the channel's `mediaRetention` says otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// The channel keys of a platform that takes media (list them in the platform's `keys`).
pub const KEY_MAX_BYTES: &str = "maxMediaBytes";
pub const KEY_RETENTION: &str = "mediaRetention";
/// Longest sanitized file name, in characters.
const NAME_MAX_CHARS: usize = 100;

/// A channel's media limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaLimits {
    pub max_bytes: u64,
    pub retention: Duration,
}

impl Default for MediaLimits {
    fn default() -> MediaLimits {
        MediaLimits { max_bytes: DEFAULT_MAX_BYTES, retention: DEFAULT_RETENTION }
    }
}

impl MediaLimits {
    /// Read `maxMediaBytes` (a positive integer) and `mediaRetention` (seconds, or "30m",
    /// "24h", "7d") for a platform's `parse`; returns the values set, to keep in its settings.
    pub fn parse(keys: &PlatformKeys<'_>) -> Result<Vec<(&'static str, Value)>, ConfigError> {
        let mut values = Vec::new();
        if let Some(max) = keys.positive_integer(KEY_MAX_BYTES)? {
            values.push((KEY_MAX_BYTES, Value::from(max)));
        }
        if let Some(retention) = keys.duration(KEY_RETENTION)? {
            values.push((KEY_RETENTION, Value::from(retention.as_secs())));
        }
        Ok(values)
    }

    /// The limits a platform's `parse` kept (see [`MediaLimits::parse`]); defaults otherwise.
    pub fn from_settings(values: &VecMap<&'static str, Value>) -> MediaLimits {
        let max_bytes = values.get(KEY_MAX_BYTES).and_then(Value::as_u64).unwrap_or(DEFAULT_MAX_BYTES);
        let retention =
            values.get(KEY_RETENTION).and_then(Value::as_u64).map_or(DEFAULT_RETENTION, Duration::from_secs);
        MediaLimits { max_bytes, retention }
    }
}

/// How an outbound file is shown: as a picture, or as a file to download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Image,
    Document,
}

/// One `[IMAGE: …]` / `[FILE: …]` marker of an answer, with the path as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub kind: FileKind,
    pub path: String,
}

/// Split an answer into its text without the markers and the markers, in order. Markers
/// inside fenced code blocks or inline code stay as they are (an answer may explain the
/// syntax); a line left empty by its markers goes away.
pub fn take_markers(text: &str) -> (String, Vec<Marker>) {
    if !may_hold_markers(text) {
        return (text.to_string(), Vec::new());
    }
    take_markers_from(text)
}

/// [`take_markers`] of an owned answer: one without markers (most) is handed back as it
/// is, not copied (a 2 MB answer would be, twice).
pub fn take_markers_owned(text: String) -> (String, Vec<Marker>) {
    if !may_hold_markers(&text) {
        return (text, Vec::new());
    }
    take_markers_from(&text)
}

/// Whether `text` has the start of a marker anywhere (markers are case-sensitive).
pub(crate) fn may_hold_markers(text: &str) -> bool {
    text.contains("[IMAGE:") || text.contains("[FILE:")
}

fn take_markers_from(text: &str) -> (String, Vec<Marker>) {
    let code = code_ranges(text);
    let mut out = String::with_capacity(text.len());
    let mut markers = Vec::new();
    let mut line_had_marker = false;
    let mut line_start_in_out = 0;
    let mut rest_from = 0; // Start of text not yet copied; always a char boundary.
    let mut iter = text.char_indices().peekable();
    while let Some((at, c)) = iter.next() {
        if c == '\n' {
            out.push_str(text.get(rest_from..at).unwrap_or_default());
            rest_from = at;
            if line_had_marker && out.get(line_start_in_out..).is_some_and(|l| l.trim().is_empty()) {
                out.truncate(line_start_in_out);
                rest_from = at + 1; // Drop the newline too.
                line_had_marker = false;
                line_start_in_out = out.len();
                continue;
            }
            line_had_marker = false;
            line_start_in_out = out.len() + 1;
            continue;
        }
        if c != '[' || code.iter().any(|r| r.contains(&at)) {
            continue;
        }
        let Some((marker, len)) = marker_at(text.get(at..).unwrap_or_default()) else { continue };
        out.push_str(text.get(rest_from..at).unwrap_or_default());
        markers.push(marker);
        line_had_marker = true;
        rest_from = at + len;
        while iter.peek().is_some_and(|(i, _)| *i < rest_from) {
            iter.next();
        }
    }
    if markers.is_empty() {
        // Nothing taken: the text stays exactly as written (indentation, line-end spaces).
        return (text.to_string(), markers);
    }
    out.push_str(text.get(rest_from..).unwrap_or_default());
    if line_had_marker && out.get(line_start_in_out..).is_some_and(|l| l.trim().is_empty()) {
        out.truncate(line_start_in_out);
    }
    // Spaces a marker left at the ends of lines go too.
    let out = out.lines().map(str::trim_end).collect::<Vec<_>>().join("\n");
    (out.trim().to_string(), markers)
}

/// A marker at the start of `s` and its length in bytes.
fn marker_at(s: &str) -> Option<(Marker, usize)> {
    let (kind, rest) = if let Some(rest) = s.strip_prefix("[IMAGE:") {
        (FileKind::Image, rest)
    } else if let Some(rest) = s.strip_prefix("[FILE:") {
        (FileKind::Document, rest)
    } else {
        return None;
    };
    let end = rest.find(['\n', ']'])?;
    if rest.get(end..)?.starts_with('\n') {
        return None;
    }
    let path = rest.get(..end)?.trim();
    if path.is_empty() {
        return None;
    }
    Some((Marker { kind, path: path.to_string() }, s.len() - rest.len() + end + 1))
}

/// Byte ranges of fenced blocks and inline code spans.
fn code_ranges(text: &str) -> Vec<std::ops::Range<usize>> {
    let fences: Vec<std::ops::Range<usize>> = crate::render::fence_regions(text, true)
        .into_iter()
        .map(|r| r.open_start..r.after_close.min(text.len()).max(r.content_end))
        .collect();
    let mut ranges = fences.clone();
    // Inline code: a run of n backticks up to the next run of exactly n (CommonMark).
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes.get(i) != Some(&b'`') || fences.iter().any(|r| r.contains(&i)) {
            i += 1;
            continue;
        }
        let run = bytes.get(i..).map_or(0, |b| b.iter().take_while(|&&b| b == b'`').count());
        let mut j = i + run;
        let mut closed = None;
        while j < bytes.len() {
            if bytes.get(j) == Some(&b'`') {
                let other = bytes.get(j..).map_or(0, |b| b.iter().take_while(|&&b| b == b'`').count());
                if other == run {
                    closed = Some(j + other);
                    break;
                }
                j += other;
            } else {
                j += 1;
            }
        }
        match closed {
            Some(end) => {
                ranges.push(i..end);
                i = end;
            }
            None => i += run,
        }
    }
    ranges
}

/// The image type of `bytes` by their first bytes (PNG, JPEG, GIF, WebP); `None` for the rest.
pub fn sniff_image(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        Some("image/webp")
    } else {
        None
    }
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A name fit for a file of ours: letters, digits, `.`, `-`, `_` kept (any script), every
/// other character (separators, controls, spaces) becomes `_`; no leading dots; at most
/// [`NAME_MAX_CHARS`] characters; `fallback` when nothing is left.
pub fn safe_file_name(name: &str, fallback: &str) -> String {
    let cleaned: String = name
        .chars()
        .filter(
            |c| !matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}'),
        )
        .map(|c| if c.is_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .take(NAME_MAX_CHARS)
        .collect();
    let cleaned = cleaned.trim_start_matches('.');
    if cleaned.trim_matches(['_', '.']).is_empty() { fallback.to_string() } else { cleaned.to_string() }
}

/// A byte count as people read it ("512 bytes", "1.5 MB").
pub fn size_text(bytes: u64) -> String {
    const MB: u64 = 1024 * 1024;
    if bytes >= MB {
        let tenths = bytes.saturating_mul(10) / MB;
        if tenths.is_multiple_of(10) {
            format!("{} MB", tenths / 10)
        } else {
            format!("{}.{} MB", tenths / 10, tenths % 10)
        }
    } else if bytes >= 1024 {
        format!("{} KB", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(path: &str) -> Marker {
        Marker { kind: FileKind::Image, path: path.into() }
    }

    fn file(path: &str) -> Marker {
        Marker { kind: FileKind::Document, path: path.into() }
    }

    #[test]
    fn markers_are_taken_outside_code() {
        let cases: Vec<(&str, &str, Vec<Marker>)> = vec![
            ("no markers", "no markers", vec![]),
            ("    indented code  \nline  \n", "    indented code  \nline  \n", vec![]),
            ("Here it is:\n[IMAGE: /w/plot.png]\nDone.", "Here it is:\nDone.", vec![image("/w/plot.png")]),
            ("see [FILE: /w/a b.txt] now", "see  now", vec![file("/w/a b.txt")]),
            ("[IMAGE: /a.png][IMAGE: /b.png]", "", vec![image("/a.png"), image("/b.png")]),
            ("two\n[FILE: /x]\n[IMAGE:/y.gif]\nend", "two\nend", vec![file("/x"), image("/y.gif")]),
            // In code: an explanation, not a request.
            ("Write `[IMAGE: /p.png]` to send", "Write `[IMAGE: /p.png]` to send", vec![]),
            (
                "```\n[FILE: /etc/passwd]\n```\n[FILE: /w/r.txt]",
                "```\n[FILE: /etc/passwd]\n```",
                vec![file("/w/r.txt")],
            ),
            ("``a ` [FILE: /in]`` [FILE: /out]", "``a ` [FILE: /in]``", vec![file("/out")]),
            // Unclosed backtick: plain text, the marker counts.
            ("a ` [FILE: /f]", "a `", vec![file("/f")]),
            // Not markers: no path, broken across lines, other words, lowercase.
            ("[IMAGE: ]", "[IMAGE: ]", vec![]),
            ("[IMAGE: /a\n.png]", "[IMAGE: /a\n.png]", vec![]),
            ("[PICTURE: /a.png] [image: /b.png]", "[PICTURE: /a.png] [image: /b.png]", vec![]),
            ("[FILE: relative.txt]", "", vec![file("relative.txt")]),
            ("é[FILE: /é.txt]ü", "éü", vec![file("/é.txt")]),
        ];
        for (text, rest, markers) in cases {
            assert_eq!(take_markers(text), (rest.to_string(), markers), "{text:?}");
        }
    }

    /// Generated answers: never a panic; a marker comes out only where one was written, with
    /// its path; without markers the text is untouched, with them it shrinks.
    #[test]
    fn markers_hold_on_generated_text() {
        let pieces = [
            "[IMAGE: /a.png]",
            "[FILE: /b c.txt]",
            "[IMAGE:",
            "]",
            "`",
            "``",
            "```\n",
            "~~~\n",
            "\n",
            " ",
            "é",
            "😀",
            "x",
            "[",
            "[FILE: ",
            "/p",
            "\u{202E}",
        ];
        let mut rng = crate::render::tests::Rng::new(20);
        for _ in 0..3000 {
            let text: String = (0..rng.below(24)).map(|_| rng.pick(&pieces)).collect();
            let (rest, markers) = take_markers(&text);
            assert_eq!(take_markers_owned(text.clone()), (rest.clone(), markers.clone()), "{text:?}");
            let written = text.matches("[IMAGE:").count() + text.matches("[FILE:").count();
            assert!(markers.len() <= written, "{text:?}");
            for m in &markers {
                assert!(m.path == "/a.png" || m.path == "/b c.txt" || text.contains(&m.path), "{text:?} {m:?}");
            }
            if markers.is_empty() {
                assert_eq!(rest, text);
            } else {
                assert!(rest.len() < text.len(), "{text:?}");
            }
        }
    }

    #[test]
    fn images_are_sniffed_by_their_first_bytes() {
        let cases: Vec<(&[u8], Option<&str>)> = vec![
            (b"\x89PNG\r\n\x1a\n\0\0", Some("image/png")),
            (&[0xFF, 0xD8, 0xFF, 0xE0], Some("image/jpeg")),
            (b"GIF89a..", Some("image/gif")),
            (b"RIFF\0\0\0\0WEBPVP8 ", Some("image/webp")),
            (b"RIFF\0\0\0\0WAVE", None),
            (b"%PDF-1.7", None),
            (b"", None),
        ];
        for (bytes, mime) in cases {
            assert_eq!(sniff_image(bytes), mime, "{bytes:?}");
        }
    }

    #[test]
    fn base64_table() {
        for (bytes, text) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"\xff\xfe", "//4="),
        ] {
            assert_eq!(base64(bytes), text);
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(crate::adapters::webchat::decode_base64(&base64(&all)).unwrap(), all);
    }

    #[test]
    fn file_names_are_made_safe() {
        let long = "a".repeat(300);
        let cases: Vec<(&str, &str)> = vec![
            ("shot.png", "shot.png"),
            ("../../etc/passwd", "_.._etc_passwd"),
            ("..", "file"),
            (".hidden", "hidden"),
            ("a b/c\\d", "a_b_c_d"),
            ("nul\0bell\u{7}\n.txt", "nul_bell__.txt"),
            ("evil\u{202E}gnp.exe", "evilgnp.exe"),
            ("фото.jpg", "фото.jpg"),
            ("", "file"),
            ("///", "file"),
        ];
        for (name, safe) in cases {
            assert_eq!(safe_file_name(name, "file"), safe, "{name:?}");
        }
        assert_eq!(safe_file_name(&long, "file").chars().count(), NAME_MAX_CHARS);
    }

    #[test]
    fn sizes_read_well() {
        for (n, text) in [(0, "0 bytes"), (2048, "2 KB"), (20 * 1024 * 1024, "20 MB"), (1536 * 1024, "1.5 MB")] {
            assert_eq!(size_text(n), text);
        }
    }
}
