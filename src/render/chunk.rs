//! Splitting answers into messages that fit a platform's length limit, counted the way the
//! platform counts, cutting at the gentlest break available and keeping code fences intact
//! (a fence cut in two is closed at the end of one chunk and reopened in the next).

use super::html::{is_joiner, split_html};
use std::cell::RefCell;

use super::markdown::{CutAt, FenceLines, FenceRegion, classify_cut, fence_regions, normalize_newlines};
use super::plain::plain_text;
use super::telegram::telegram_html;

/// How a platform measures message length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Units {
    /// UTF-16 code units (Telegram, JavaScript-based platforms).
    Utf16,
    /// Unicode scalar values.
    Chars,
    /// UTF-8 bytes.
    Bytes,
}

impl Units {
    pub fn of_char(self, c: char) -> usize {
        match self {
            Units::Utf16 => c.len_utf16(),
            Units::Chars => 1,
            Units::Bytes => c.len_utf8(),
        }
    }

    pub fn len(self, text: &str) -> usize {
        match self {
            Units::Utf16 => text.encode_utf16().count(),
            Units::Chars => text.chars().count(),
            Units::Bytes => text.len(),
        }
    }
}

/// Telegram's limit on a message's text after entity parsing.
pub const TELEGRAM_LIMIT: usize = 4096;

/// What [`telegram_chunks`] aims for: the limit with a margin for counting surprises.
pub const TELEGRAM_TARGET: usize = 4000;

/// Upper bound on one Telegram chunk's raw HTML, so escape-heavy text stays a sane request.
pub const TELEGRAM_RAW_LIMIT: usize = 16 * 1024;

/// Telegram messages for an answer: HTML pieces (send with `parse_mode: "HTML"`), each
/// well-formed, with at most [`TELEGRAM_TARGET`] UTF-16 units of visible text and at most
/// [`TELEGRAM_RAW_LIMIT`] bytes of markup. If Telegram refuses one, send
/// [`strip_tags`](super::strip_tags) of it without `parse_mode`.
pub fn telegram_chunks(markdown: &str) -> Vec<String> {
    split_html(&telegram_html(markdown), TELEGRAM_TARGET, TELEGRAM_RAW_LIMIT)
}

/// Plain-text messages: [`plain_text`], then chunked to `limit` `units`.
pub fn plain_chunks(markdown: &str, limit: usize, units: Units) -> Vec<String> {
    chunk_text(&plain_text(markdown), limit, units, false)
}

/// Splits Markdown into chunks of at most `limit` `units`, cutting at a blank line, else a
/// line end, a sentence end (`. ! ? 。！？`), a space, and only then anywhere between two
/// characters (never inside one, and not before a joiner or combining mark). A code fence cut
/// in two is closed at the end of the first chunk and reopened with its info string in the
/// next; the added fence lines count toward the limit. A fence left open by the text is
/// closed in the last chunk. A character wider than the whole limit goes alone in a chunk.
pub fn chunk_markdown(markdown: &str, limit: usize, units: Units) -> Vec<String> {
    chunk_text(&normalize_newlines(markdown), limit, units, true)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Break {
    Paragraph = 0,
    Line = 1,
    Sentence = 2,
    Word = 3,
}

#[derive(Debug, Clone, Copy)]
struct Cut {
    /// The chunk takes characters `[start, end)`.
    end: usize,
    /// The next chunk starts here; `[end, next)` is a dropped separator.
    next: usize,
    at: CutAt,
}

struct Text<'a> {
    text: &'a str,
    chars: Vec<char>,
    /// Byte offset of each character, plus the text length.
    bytes: Vec<usize>,
    /// Units before each character, plus the total.
    cum: Vec<usize>,
    /// The index of the first character of each character's line.
    line_start: Vec<usize>,
    regions: Vec<FenceRegion>,
    fence_lines: RefCell<FenceLines<'a>>,
}

impl Text<'_> {
    fn units(&self, from: usize, to: usize) -> usize {
        self.cum[to] - self.cum[from]
    }

    fn slice(&self, from: usize, to: usize) -> &str {
        #[allow(clippy::string_slice)] // `bytes` holds the char boundaries of `text` (char_indices).
        &self.text[self.bytes[from]..self.bytes[to]]
    }

    /// Whether ending the chunk that starts at `start` at `end`, and starting the next at
    /// `next`, cuts a line so that either half reads as a fence line (see [`FenceLines`]).
    fn cuts_into_fence_line(&self, start: usize, end: usize, next: usize, at: CutAt) -> bool {
        // A cut whose next chunk starts right after a newline ends its line: nothing is cut.
        if !(end > 0 && next > 0 && next < self.chars.len() && self.chars[next - 1] != '\n') {
            return false;
        }
        let inside = match at {
            CutAt::InFence(i) => self.regions.get(i),
            _ => None,
        };
        let mut fence_lines = self.fence_lines.borrow_mut();
        // The chunk's last line, from the line's start or the chunk's, if later.
        let head = (self.bytes[self.line_start[end - 1].max(start)], self.bytes[end]);
        fence_lines.rest_from(self.bytes[next], inside) || fence_lines.part(head.0, head.1, inside)
    }

    fn classify(&self, end: usize, next: usize) -> CutAt {
        classify_cut(self.bytes[end], self.bytes[next], &self.regions)
    }
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn chunk_text(text: &str, limit: usize, units: Units, fence_aware: bool) -> Vec<String> {
    let text = text.trim_end();
    let chars: Vec<char> = text.chars().collect();
    let mut bytes: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
    bytes.push(text.len());
    let mut cum = Vec::with_capacity(chars.len() + 1);
    let mut total = 0;
    cum.push(0);
    for c in &chars {
        total += units.of_char(*c);
        cum.push(total);
    }
    let mut regions = if fence_aware { fence_regions(text, true) } else { Vec::new() };
    // A fence whose own marker lines eat most of the limit cannot be reopened usefully.
    regions.retain(|r| units.len(&r.reopen) + units.len(&r.close) + 2 <= limit / 2);
    let mut line_start = Vec::with_capacity(chars.len());
    let mut current = 0;
    for (i, c) in chars.iter().enumerate() {
        line_start.push(current);
        if *c == '\n' {
            current = i + 1;
        }
    }
    let t = Text { text, chars, bytes, cum, line_start, regions, fence_lines: RefCell::new(FenceLines::new(text)) };
    let n = t.chars.len();

    let mut chunks = Vec::new();
    let mut start = skip_newlines(&t.chars, 0);
    let mut prefix = String::new();
    while start < n {
        let prefix_units = units.len(&prefix);
        let tail = t.regions.last().filter(|r| r.after_close == usize::MAX).map(|r| r.close.as_str());
        let tail_units = tail.map_or(0, |close| 1 + units.len(close));
        if prefix_units + t.units(start, n) + tail_units <= limit {
            let mut chunk = prefix.clone();
            chunk.push_str(t.slice(start, n));
            if let Some(close) = tail {
                chunk.push('\n');
                chunk.push_str(close);
            }
            push_chunk(&mut chunks, chunk);
            break;
        }
        let budget = limit.saturating_sub(prefix_units);
        // The furthest end that fits, ignoring any closing fence line.
        let fitting = t.cum[start..].partition_point(|&c| c - t.cum[start] <= budget);
        let hard = (start + fitting.saturating_sub(1)).clamp(start + 1, n);
        let cut = choose_cut(&t, start, hard, budget, limit, prefix_units, units);
        let mut chunk = prefix.clone();
        match cut.at {
            CutAt::InFence(i) => {
                let region = &t.regions[i];
                chunk.push_str(t.slice(start, cut.end));
                chunk.push('\n');
                chunk.push_str(&region.close);
                prefix = format!("{}\n", region.reopen);
            }
            CutAt::Outside | CutAt::Invalid => {
                chunk.push_str(t.slice(start, cut.end).trim_end());
                prefix.clear();
            }
        }
        push_chunk(&mut chunks, chunk);
        start = if prefix.is_empty() { skip_newlines(&t.chars, cut.next) } else { cut.next };
    }
    chunks
}

fn push_chunk(chunks: &mut Vec<String>, chunk: String) {
    if chunk.chars().any(|c| !c.is_whitespace()) {
        chunks.push(chunk);
    }
}

fn skip_newlines(chars: &[char], mut i: usize) -> usize {
    // Whole blank lines only: the indentation of the first real line is kept.
    let mut j = i;
    while j < chars.len() && (chars[j] == '\n' || is_blank(chars[j])) {
        if chars[j] == '\n' {
            i = j + 1;
        }
        j += 1;
    }
    if j == chars.len() { j } else { i }
}

/// Picks where the chunk starting at `start` ends; `hard` is the furthest end that fits.
fn choose_cut(
    t: &Text,
    start: usize,
    hard: usize,
    budget: usize,
    limit: usize,
    prefix_units: usize,
    units: Units,
) -> Cut {
    let fits = |end: usize, at: CutAt| -> bool {
        let suffix = match at {
            CutAt::InFence(i) => 1 + units.len(&t.regions[i].close),
            _ => 0,
        };
        prefix_units + t.units(start, end) + suffix <= limit
    };
    // Per break kind: the last cut that leaves the chunk at least a quarter full, and the
    // last one at all.
    let mut far: [Option<Cut>; 4] = [None; 4];
    let mut any: [Option<Cut>; 4] = [None; 4];
    let mut consider = |kind: Break, end: usize, next: usize| {
        if end <= start || end > hard {
            return;
        }
        let at = t.classify(end, next);
        if at == CutAt::Invalid || !fits(end, at) || t.cuts_into_fence_line(start, end, next, at) {
            return;
        }
        // A blank line inside code is only a line break.
        let kind = if kind == Break::Paragraph && matches!(at, CutAt::InFence(_)) { Break::Line } else { kind };
        let cut = Cut { end, next, at };
        let slot = kind as usize;
        if any[slot].is_none() {
            any[slot] = Some(cut);
        }
        if far[slot].is_none() && t.units(start, end) * 4 >= budget {
            far[slot] = Some(cut);
        }
    };
    let chars = &t.chars;
    let mut q = hard.min(chars.len() - 1);
    while q > start {
        let c = chars[q];
        if c == '\n' || is_blank(c) {
            // The whole whitespace run around q is one separator.
            let mut a = q;
            while a > start && (chars[a - 1] == '\n' || is_blank(chars[a - 1])) {
                a -= 1;
            }
            let mut b = q + 1;
            while b < chars.len() && (chars[b] == '\n' || is_blank(chars[b])) {
                b += 1;
            }
            let newlines: Vec<usize> = (a..b).filter(|&k| chars[k] == '\n').collect();
            match newlines.as_slice() {
                [] => {
                    let ends_sentence = a > start && matches!(chars[a - 1], '.' | '!' | '?');
                    let kind = if ends_sentence { Break::Sentence } else { Break::Word };
                    consider(kind, a, b);
                    if a > start && matches!(chars[a - 1], '。' | '！' | '？') {
                        consider(Break::Sentence, a, b);
                    }
                }
                [only] => {
                    consider(Break::Line, a, only + 1);
                    // Inside code, also the exact newline (keeps trailing spaces).
                    consider(Break::Line, *only, only + 1);
                }
                [first, .., last] => {
                    consider(Break::Paragraph, a, last + 1);
                    consider(Break::Line, *first, first + 1);
                }
            }
            q = a.saturating_sub(1);
            if a == 0 {
                break;
            }
            continue;
        }
        if matches!(c, '。' | '！' | '？') && q < hard {
            consider(Break::Sentence, q + 1, q + 1);
        }
        q -= 1;
    }
    // Structural breaks (blank line, line end) even if early, before mid-line ones.
    let order = [far[0], far[1], any[0], any[1], far[2], far[3], any[2], any[3]];
    if let Some(cut) = order.iter().flatten().next() {
        return *cut;
    }
    // Hard cut: between characters, not before a joiner, at a valid fence position.
    for end in (start + 1..=hard).rev() {
        let joins = end < chars.len() && (is_joiner(chars[end]) || chars[end - 1] == '\u{200D}');
        if joins && end > start + 1 {
            continue;
        }
        let at = t.classify(end, end);
        if at != CutAt::Invalid && fits(end, at) && !t.cuts_into_fence_line(start, end, end, at) {
            return Cut { end, next: end, at };
        }
    }
    // Nothing valid (a tiny limit against a fence): cut raw, dropping fence repair.
    Cut { end: hard, next: hard, at: CutAt::Outside }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mid_line_cut_never_starts_a_chunk_with_a_fence() {
        // Found by the markdown fuzz target: a cut just before a mid-line "```x" made the next
        // message open a code block the text never had.
        let text = format!("{} ```x yy {}~~~~z", "a".repeat(45), "b ".repeat(20));
        for limit in 40..70 {
            for chunk in chunk_markdown(&text, limit, Units::Chars) {
                let first = chunk.lines().next().unwrap_or_default();
                assert!(crate::render::FenceOpen::parse(first).is_none(), "{limit}: {chunk:?}");
            }
        }
        // Nor end a chunk with half a line that reads as a fence ("````a``b" is none; "````a" is).
        let text = format!("intro\n````abc``def {} ````abc``{}", "w ".repeat(40), "d".repeat(100));
        for limit in 5..80 {
            for chunk in chunk_markdown(&text, limit, Units::Chars) {
                assert!(crate::fuzzing::checks::fences_closed(&chunk), "{limit}: {chunk:?}");
            }
        }
    }

    #[test]
    fn units_count() {
        for (text, utf16, chars, bytes) in
            [("abc", 3, 3, 3), ("é", 1, 1, 2), ("😀", 2, 1, 4), ("中", 1, 1, 3), ("", 0, 0, 0)]
        {
            assert_eq!(Units::Utf16.len(text), utf16);
            assert_eq!(Units::Chars.len(text), chars);
            assert_eq!(Units::Bytes.len(text), bytes);
        }
    }

    #[test]
    fn golden_chunks() {
        let cases: &[(&str, usize, Units, &[&str])] = &[
            ("short", 100, Units::Chars, &["short"]),
            ("", 100, Units::Chars, &[]),
            ("\n\n  \n", 100, Units::Chars, &[]),
            ("para one\n\npara two", 12, Units::Chars, &["para one", "para two"]),
            ("line one\nline two", 12, Units::Chars, &["line one", "line two"]),
            ("One. Two three.", 10, Units::Chars, &["One.", "Two three."]),
            ("一句。二句。三句", 4, Units::Chars, &["一句。", "二句。", "三句"]),
            ("alpha beta gamma", 11, Units::Chars, &["alpha beta", "gamma"]),
            ("abcdefghij", 4, Units::Chars, &["abcd", "efgh", "ij"]),
            ("😀😀😀", 4, Units::Utf16, &["😀😀", "😀"]),
            ("😀😀😀", 5, Units::Bytes, &["😀", "😀", "😀"]),
            ("ééé", 4, Units::Bytes, &["éé", "é"]),
            ("👍🏽👍🏽", 6, Units::Utf16, &["👍🏽", "👍🏽"]),
            ("- a\n  - nested b", 12, Units::Chars, &["- a", "  - nested b"]),
            (
                "intro\n\n```rust\nlet a = 1;\nlet b = 2;\n```\nend",
                24,
                Units::Chars,
                &["intro", "```rust\nlet a = 1;\n```", "```rust\nlet b = 2;\n```", "end"],
            ),
            (
                "````md\n```\ninner one\n```\ninner two\n````",
                30,
                Units::Chars,
                &["````md\n```\ninner one\n```\n````", "````md\ninner two\n````"],
            ),
            // Too small to reopen a fence usefully: plain cuts, no repair.
            ("```\nabcdef\n```", 6, Units::Chars, &["```", "abcdef", "```"]),
            // An unclosed fence is closed in the last chunk too.
            ("```\nabc\ndef\nghi", 16, Units::Chars, &["```\nabc\ndef\n```", "```\nghi\n```"]),
            ("text\r\n\r\nmore", 6, Units::Chars, &["text", "more"]),
        ];
        for (md, limit, units, want) in cases {
            assert_eq!(chunk_markdown(md, *limit, *units), *want, "{md:?} at {limit} {units:?}");
        }
    }

    #[test]
    fn plain_chunks_do_not_treat_backticks_as_fences() {
        let md = "````\n```\ncode\n```\n````";
        assert_eq!(plain_chunks(md, 5, Units::Chars), vec!["```", "code", "```"]);
    }

    #[test]
    fn prefers_a_late_break_over_an_early_paragraph() {
        // The only blank line is near the start: a line break later on makes fuller chunks.
        let md = format!("hi\n\n{}\n{}", "x".repeat(30), "y".repeat(30));
        assert_eq!(chunk_markdown(&md, 40, Units::Chars), vec![format!("hi\n\n{}", "x".repeat(30)), "y".repeat(30)]);
    }

    #[test]
    fn a_huge_line_of_backticks_or_tildes_is_chunked_quickly() {
        // Every candidate cut measured the whole run again: 100 KB of backticks took 28 s in a
        // release build; now 29 ms. The bound only stops a return to quadratic time hanging CI.
        for (open, fill) in [("```\n", '`'), ("x ", '~'), ("", '`'), ("```\n", ' ')] {
            let text = format!("{open}a {}", fill.to_string().repeat(300_000));
            let started = std::time::Instant::now();
            let chunks = chunk_markdown(&text, 4096, Units::Utf16);
            let elapsed = started.elapsed();
            assert!(elapsed < std::time::Duration::from_secs(15), "{open:?} {fill:?}: {elapsed:?}");
            assert!(chunks.iter().all(|chunk| Units::Utf16.len(chunk) <= 4096), "{open:?} {fill:?}");
        }
    }
}
