//! Properties the fuzz targets check (and the render tests share): Telegram HTML as strict as
//! the Bot API, fences closed, no text lost or duplicated, a reference mention stripper.

use crate::render::{FenceOpen, fence_regions};

/// The tags our Telegram renderer may emit.
const ALLOWED: [&str; 8] = ["b", "i", "s", "u", "code", "pre", "a", "blockquote"];

/// Why `html` is not Telegram HTML we may send, or `None` when it is: only our tags, closed in
/// order; `a` only as `a href="…"`, `code` only bare or as `code class="language-…"`; the Bot
/// API's nesting rules (no tag inside `code`, only `code` inside `pre`, no `blockquote` inside
/// `blockquote`); every `&` starts `&lt;` `&gt;` `&amp;` or `&quot;`; no stray `<` or `>`.
pub fn telegram_html_error(html: &str) -> Option<String> {
    let mut open: Vec<&str> = Vec::new();
    let mut rest = html;
    while let Some(c) = rest.chars().next() {
        let at = html.len() - rest.len();
        match c {
            '<' => {
                let Some((tag, after)) = rest.get(1..).and_then(|r| r.split_once('>')) else {
                    return Some(format!("unclosed `<` at byte {at}"));
                };
                if let Some(name) = tag.strip_prefix('/') {
                    if open.pop() != Some(name) {
                        return Some(format!("unexpected </{name}> at byte {at}"));
                    }
                } else {
                    let name = tag.split(' ').next().unwrap_or_default();
                    let Some(known) = ALLOWED.iter().copied().find(|t| *t == name) else {
                        return Some(format!("tag <{name}> at byte {at}"));
                    };
                    if tag != name && !attributes_ok(name, tag) {
                        return Some(format!("attributes of <{tag}> at byte {at}"));
                    }
                    match open.last().copied() {
                        Some("code") => return Some(format!("<{name}> inside <code> at byte {at}")),
                        Some("pre") if name != "code" => return Some(format!("<{name}> inside <pre> at byte {at}")),
                        _ => {}
                    }
                    if name == "blockquote" && open.contains(&"blockquote") {
                        return Some(format!("nested <blockquote> at byte {at}"));
                    }
                    open.push(known);
                }
                rest = after;
            }
            '&' => {
                let Some(entity) = ["&lt;", "&gt;", "&amp;", "&quot;"].into_iter().find(|e| rest.starts_with(e)) else {
                    return Some(format!("bare `&` at byte {at}"));
                };
                rest = rest.get(entity.len()..).unwrap_or_default();
            }
            '>' => return Some(format!("stray `>` at byte {at}")),
            _ => rest = rest.get(c.len_utf8()..).unwrap_or_default(),
        }
    }
    open.last().map(|tag| format!("<{tag}> never closed"))
}

fn attributes_ok(name: &str, tag: &str) -> bool {
    let quoted = |prefix: &str| {
        tag.strip_prefix(prefix).and_then(|v| v.strip_suffix('"')).is_some_and(|value| !value.contains('"'))
    };
    match name {
        "a" => quoted("a href=\""),
        "code" => quoted("code class=\"language-"),
        _ => false,
    }
}

/// Whether `html` is Telegram HTML we may send (see [`telegram_html_error`]).
pub fn balanced(html: &str) -> bool {
    telegram_html_error(html).is_none()
}

/// The text without any whitespace: what must survive chunking exactly once.
pub fn non_ws(text: &str) -> String {
    text.chars().filter(|c| !c.is_whitespace()).collect()
}

/// Non-whitespace text with fence marker lines removed (the chunkers add some).
pub fn content_without_fence_lines(text: &str) -> String {
    let mut fence: Option<FenceOpen> = None;
    let mut kept = String::new();
    for line in text.split('\n') {
        match &fence {
            Some(open) if open.is_closed_by(line) => fence = None,
            Some(_) => kept.push_str(line),
            None => match FenceOpen::parse(line) {
                Some(open) => fence = Some(open),
                None => kept.push_str(line),
            },
        }
    }
    non_ws(&kept)
}

/// Every fence opened in `chunk` is closed in it.
pub fn fences_closed(chunk: &str) -> bool {
    fence_regions(chunk, true).iter().all(|r| r.after_close != usize::MAX)
}

/// Whether every fence of `source` can be reopened within `limit`: the chunkers give up fence
/// repair (and cut such a fence like plain text) when its marker lines would take more than
/// half the limit (`reopen + close + 2 > limit / 2`), e.g. an opener line with a huge info
/// string. Only sources without such a fence promise closed fences in every chunk.
///
/// Likewise a run of backticks or tildes of half the limit or more (no cut can keep both halves
/// of its line from reading as a fence line), and a line whose fence marker, with everything
/// after it, is too long to reopen: the chunkers cut those like plain text too.
pub fn fences_repairable(source: &str, limit: usize, len: impl Fn(&str) -> usize) -> bool {
    let mut run = (' ', 0usize);
    let mut longest = 0;
    for c in source.chars() {
        run = if c == run.0 { (c, run.1 + 1) } else { (c, 1) };
        if matches!(c, '`' | '~') {
            longest = longest.max(run.1);
        }
    }
    // A line whose tail, from its first fence marker and the indentation before it, is too
    // long to reopen: a cut anywhere in that tail can leave a half that reads as a fence line
    // (the streamer sees a prefix of the line before the rest), and a cut before it leaves a
    // remainder too long for a block. A line that starts like a fence is the whole-line case.
    // Trailing whitespace counts: the streamer cuts the line before it knows nothing follows.
    let long_marker_line = source.lines().any(|line| len(marker_tail(line)) + 3 + 2 > limit / 2);
    longest < limit / 2
        && !long_marker_line
        && fence_regions(source, true).iter().all(|r| len(&r.reopen) + len(&r.close) + 2 <= limit / 2)
}

/// The end of `line` from its first "```" or "~~~", with the spaces and tabs before it ("" if
/// it has none).
fn marker_tail(line: &str) -> &str {
    let first = [line.find("```"), line.find("~~~")].into_iter().flatten().min();
    let Some(head) = first.and_then(|at| line.get(..at)) else { return "" };
    let indented = head.trim_end_matches([' ', '\t']).len();
    line.get(indented..).unwrap_or_default()
}

/// Whether `inner`'s characters all appear in `outer`, in order (nothing of `inner` lost).
pub fn is_subsequence(inner: &str, outer: &str) -> bool {
    let mut outer = outer.chars();
    inner.chars().all(|c| outer.any(|o| o == c))
}

/// A reference for `strip_mention`, on chars rather than bytes: `text` without each
/// `@username` (ASCII case-insensitive) that no username character (`A-Za-z0-9_`) follows.
pub fn without_mentions(text: &str, username: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let handle: Vec<char> = format!("@{username}").chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let end = i + handle.len();
        let found = chars.get(i..end).is_some_and(|s| s.iter().zip(&handle).all(|(a, b)| a.eq_ignore_ascii_case(b)));
        let continued = chars.get(end).is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_');
        if found && !continued {
            i = end;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Standard base64 with padding (to check a decoder by round trip).
pub fn encode_base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for group in bytes.chunks(3) {
        let n = group.iter().enumerate().fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for k in 0..4 {
            if k <= group.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * k) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_html_check_rejects_what_telegram_rejects() {
        let bad = [
            "<b>x",
            "<b><i>x</b></i>",
            "</b>",
            "<br>",
            "a & b",
            "a > b",
            "<a href=\"x\"y\">t</a>",
            "<code><b>x</b></code>",
            "<pre><i>x</i></pre>",
            "<blockquote><b><blockquote>x</blockquote></b></blockquote>",
            "<b class=\"x\">t</b>",
            "x <",
        ];
        for html in bad {
            assert!(!balanced(html), "{html:?}");
        }
        let good = [
            "",
            "<b>x</b>",
            "<a href=\"https://x?a=&quot;\">t</a> &amp; &lt;",
            "<pre><code class=\"language-rust\">a &lt; b</code></pre>",
            "<blockquote><b>q</b></blockquote> ẞ",
        ];
        for html in good {
            assert_eq!(telegram_html_error(html), None, "{html:?}");
        }
    }

    #[test]
    fn reference_mention_stripper() {
        assert_eq!(without_mentions("Ⱥ@Bot éẞ @bot_ @bot", "bot"), "Ⱥ éẞ @bot_ ");
        assert_eq!(without_mentions("@", "bot"), "@");
    }

    #[test]
    fn marker_tail_starts_at_the_indentation_of_the_first_fence_marker() {
        let table = [
            ("no fence here", ""),
            ("```sh", "```sh"),
            ("  ~~~", "  ~~~"),
            ("echo   ```` x", "   ```` x"),
            ("a ~~~ b ``` c", " ~~~ b ``` c"),
            ("é\t```", "\t```"),
            ("``", ""),
        ];
        for (line, tail) in table {
            assert_eq!(marker_tail(line), tail, "{line:?}");
        }
        assert!(!fences_repairable(&format!("```\necho{}{}\n```\n", " ".repeat(100), "`".repeat(47)), 136, str::len));
        assert!(fences_repairable(&format!("```\necho{}{}\n```\n", " ".repeat(10), "`".repeat(10)), 136, str::len));
    }

    #[test]
    fn base64_encoder() {
        assert_eq!(encode_base64(b""), "");
        assert_eq!(encode_base64(b"f"), "Zg==");
        assert_eq!(encode_base64(b"fo"), "Zm8=");
        assert_eq!(encode_base64(b"foobar"), "Zm9vYmFy");
    }
}
