//! Block streaming (reference spec §6.2, `blockStreaming: "on"`): turns the agent's stream of
//! text deltas into a few complete messages as the answer grows. Pure and clock-free: the
//! caller passes `now`, asks [`BlockStreamer::next_deadline`] when to call
//! [`BlockStreamer::poll`], and sends what comes back.
//!
//! The thresholds are Qwen's, to the letter, with one fix: a code fence is never split by a
//! paragraph or idle flush, and when `max_chars` forces a cut inside one, the fence is closed
//! at the cut and reopened (with its info string) in what remains, so every block renders.

use std::time::{Duration, Instant};

use crate::render::{CutAt, FenceLines, FenceRegion, classify_cut, fence_regions, normalize_newlines};

/// `minChars`, `maxChars` and `idleMs` of §6.2. Lengths are UTF-16 code units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockStreamConfig {
    pub min_chars: usize,
    pub max_chars: usize,
    /// No idle flush when zero.
    pub idle: Duration,
}

impl Default for BlockStreamConfig {
    fn default() -> Self {
        BlockStreamConfig { min_chars: 400, max_chars: 1000, idle: Duration::from_millis(1500) }
    }
}

/// One turn's aggregator. Blocks it returns are trimmed and never empty.
#[derive(Debug, Clone)]
pub struct BlockStreamer {
    config: BlockStreamConfig,
    buf: String,
    /// Whether `buf` starts at the start of a line (a mid-line start is not a fence line).
    starts_line: bool,
    /// Whether the last delta ended with `\r`: a `\n` starting the next one ends the same line.
    after_cr: bool,
    deadline: Option<Instant>,
}

/// Bytes of buffer behind a forced cut, per `max_chars` (see [`BlockStreamer::push`]):
/// eight windows of four-byte characters.
const LOOKAHEAD_PER_CHAR: usize = 32;

fn u16_len(text: &str) -> usize {
    text.encode_utf16().count()
}

/// The largest char boundary `b` with `u16_len(&text[..b]) <= units`.
fn u16_boundary(text: &str, units: usize) -> usize {
    let mut count = 0;
    for (b, c) in text.char_indices() {
        count += c.len_utf16();
        if count > units {
            return b;
        }
    }
    text.len()
}

impl BlockStreamer {
    pub fn new(config: BlockStreamConfig) -> BlockStreamer {
        BlockStreamer { config, buf: String::new(), starts_line: true, after_cr: false, deadline: None }
    }

    /// Appends a delta; returns the blocks now ready to send, in order.
    pub fn push(&mut self, delta: &str, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        if delta.is_empty() {
            return out;
        }
        // `\r\n` and a lone `\r` end a line for the renderers, so they end one here too: a
        // block cut after "\r" must not start with a fence opener this buffer read as mid-line.
        let delta = if self.after_cr { delta.strip_prefix('\n').unwrap_or(delta) } else { delta };
        self.after_cr = delta.ends_with('\r');
        if delta.is_empty() {
            return out;
        }
        let normalized;
        let delta = if delta.contains('\r') {
            normalized = normalize_newlines(delta);
            normalized.as_str()
        } else {
            delta
        };
        // 1. Force split while the buffer is at least max_chars. Each cut reads the whole
        // buffer (its length, its fences) and moves what remains, so a long delta goes in
        // by pieces that keep the buffer within `lookahead` bytes: a 2 MB delta in one piece
        // took 2,000 passes over megabytes. A cut looks at the first max_chars and the fences
        // around them; what lies `lookahead` bytes further does not change it.
        let max = self.config.max_chars.max(1);
        let lookahead = max.saturating_mul(LOOKAHEAD_PER_CHAR);
        let mut rest = delta;
        while !rest.is_empty() {
            let mut take = rest.len().min(lookahead.saturating_sub(self.buf.len()).max(lookahead / 2));
            while !rest.is_char_boundary(take) {
                take += 1;
            }
            let (piece, after) = rest.split_at(take);
            self.buf.push_str(piece);
            rest = after;
            // Cut while a full lookahead waits behind the cut, then to below max_chars at the end.
            while u16_len(&self.buf) >= max && (rest.is_empty() || self.buf.len() >= lookahead) {
                self.force_split(&mut out);
            }
        }
        // 2. Paragraph emit at the last blank line outside code, if far enough in.
        if u16_len(&self.buf) >= self.config.min_chars
            && let Some(cut) = self.last_blank_line()
            && self.buf.get(..cut - 2).is_some_and(|head| u16_len(head) >= self.config.min_chars)
        {
            let rest = self.buf.split_off(cut);
            let head = std::mem::replace(&mut self.buf, rest);
            emit(&mut out, &head);
            self.starts_line = true;
        }
        // 3. The idle timer restarts with every delta.
        self.deadline = (!self.buf.is_empty() && !self.config.idle.is_zero()).then(|| now + self.config.idle);
        out
    }

    /// Call at or after [`next_deadline`](Self::next_deadline): after `idle` without deltas,
    /// a buffer of at least `min_chars` is sent whole (up to an unclosed fence, which waits).
    /// Shorter buffers wait for more text or [`finish`](Self::finish).
    pub fn poll(&mut self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        if self.deadline.is_none_or(|d| now < d) {
            return out;
        }
        self.deadline = None;
        if u16_len(&self.buf) < self.config.min_chars {
            return out;
        }
        // An unfinished last line that may be (or grow into) a fence marker waits, and so
        // does an open fence with everything after its opener.
        let last_line = self.buf.rfind('\n').map_or(0, |p| p + 1);
        let partial_marker = (last_line > 0 || self.starts_line)
            && self.buf.get(last_line..).is_some_and(|l| l.trim_start().starts_with(['`', '~']));
        let mut cut = if partial_marker { last_line } else { self.buf.len() };
        if let Some(open) = self.regions_of(self.buf.get(..cut).unwrap_or_default()).last()
            && open.after_close == usize::MAX
        {
            cut = open.open_start;
        }
        let rest = self.buf.split_off(cut);
        let head = std::mem::replace(&mut self.buf, rest);
        self.after_cut(&head);
        emit(&mut out, &head);
        out
    }

    /// When [`poll`](Self::poll) should next be called, if at all.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The turn completed: everything left, as one block (if not empty).
    pub fn finish(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        emit(&mut out, &std::mem::take(&mut self.buf));
        self.clear();
        out
    }

    /// Drops unsent text (a response boundary or a cancelled turn).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.starts_line = true;
        self.after_cr = false;
        self.deadline = None;
    }

    /// Text received but not yet emitted (tests and the fuzz targets check it).
    pub fn buffered(&self) -> &str {
        &self.buf
    }

    /// Updates `starts_line` after `head` was cut off the buffer: what remains starts a line
    /// (as far as fences care) if `head` ends with a newline plus optional indentation.
    fn after_cut(&mut self, head: &str) {
        self.starts_line = match head.rfind('\n') {
            Some(p) => head.get(p + 1..).is_some_and(|line| line.trim().is_empty()),
            None => self.starts_line && head.trim().is_empty(),
        };
    }

    /// The buffer's fences, minus any whose marker lines would not leave room for content.
    fn regions(&self) -> Vec<crate::render::FenceRegion> {
        self.regions_of(&self.buf)
    }

    /// The fences of `text`, a prefix of the buffer.
    fn regions_of(&self, text: &str) -> Vec<crate::render::FenceRegion> {
        let max = self.config.max_chars;
        let mut regions = fence_regions(text, self.starts_line);
        regions.retain(|r| u16_len(&r.reopen) + u16_len(&r.close) + 2 <= max / 2);
        regions
    }

    /// Byte index just after the last `\n\n` that lies outside code (and not at the start).
    fn last_blank_line(&self) -> Option<usize> {
        let regions = self.regions();
        let mut search = self.buf.len();
        while let Some(p) = self.buf.get(..search).and_then(|s| s.rfind("\n\n")) {
            if p == 0 {
                return None;
            }
            if classify_cut(p + 2, p + 2, &regions) == CutAt::Outside {
                return Some(p + 2);
            }
            search = p + 1;
        }
        None
    }

    /// One cut within the first `max_chars`: blank line, else newline, else space, else
    /// hard; a cut inside a fence closes it here and reopens it in the remainder.
    fn force_split(&mut self, out: &mut Vec<String>) {
        let max = self.config.max_chars.max(1);
        let regions = self.regions();
        let window = u16_boundary(&self.buf, max);
        let buf = &self.buf;
        let fence_lines = std::cell::RefCell::new(FenceLines::new(buf));
        let growing = growing_tail(buf);
        // Where a cut inside each fence must stay for its closing line to fit: measured once
        // per fence, not once per candidate cut (a long line that no cut suits tries them all).
        let fence_windows = std::cell::RefCell::new(vec![None; regions.len()]);
        let fits = |cut: usize, at: CutAt| match at {
            CutAt::Outside => true,
            CutAt::InFence(i) => {
                let mut windows = fence_windows.borrow_mut();
                let Some(window) = windows.get_mut(i) else { return false };
                let limit = *window.get_or_insert_with(|| {
                    let close = regions.get(i).map_or(0, |r| u16_len(&r.close));
                    max.checked_sub(1 + close).map(|units| u16_boundary(buf, units))
                });
                limit.is_some_and(|limit| cut <= limit)
            }
            CutAt::Invalid => false,
        };
        let mut chosen: Option<(usize, CutAt)> = None;
        // Blank lines outside code.
        let mut search = window;
        while let Some(p) = buf.get(..search).and_then(|s| s.rfind("\n\n")) {
            if p == 0 {
                break;
            }
            if classify_cut(p + 2, p + 2, &regions) == CutAt::Outside {
                chosen = Some((p + 2, CutAt::Outside));
                break;
            }
            search = p + 1;
        }
        // Then the last newline, then the last space, that makes a valid cut.
        for sep in ['\n', ' '] {
            if chosen.is_some() {
                break;
            }
            let mut search = window;
            while let Some(p) = buf.get(..search).and_then(|s| s.rfind(sep)) {
                if p == 0 {
                    break;
                }
                let at = classify_cut(p + 1, p + 1, &regions);
                if fits(p + 1, at) && !cuts_into_fence_line(&fence_lines, p + 1, at, &regions, growing) {
                    chosen = Some((p + 1, at));
                    break;
                }
                search = p;
            }
        }
        // The last cut at or below the limit, character by character, that `ok` takes.
        let last_cut = |ok: &dyn Fn(usize, CutAt) -> bool| {
            let mut cut = window;
            while cut > 0 {
                let at = classify_cut(cut, cut, &regions);
                if ok(cut, at) {
                    return Some((cut, at));
                }
                cut = buf.get(..cut).and_then(|s| s.char_indices().next_back()).map_or(0, |(b, _)| b);
            }
            None
        };
        // Then exactly at the limit (or as close below it as a valid cut allows).
        chosen = chosen.or_else(|| {
            last_cut(&|cut, at| fits(cut, at) && !cuts_into_fence_line(&fence_lines, cut, at, &regions, growing))
        });
        // Inside a fence, a line still arriving may be all spaces and backticks, so that every
        // cut of it leaves a half that could read as a closer: the block is closed all the same
        // (never sent with its fence open), cut where the closing line fits.
        chosen = chosen.or_else(|| last_cut(&|cut, at| matches!(at, CutAt::InFence(_)) && fits(cut, at)));
        let (cut, at) = chosen.unwrap_or_else(|| {
            // A tiny max_chars: take at least one character.
            let first = buf.chars().next().map_or(buf.len(), char::len_utf8);
            (window.max(first), CutAt::Outside)
        });
        let rest = self.buf.split_off(cut);
        let head = std::mem::replace(&mut self.buf, rest);
        match at {
            CutAt::InFence(i) => {
                let region = &regions[i];
                let mut block = head.strip_suffix('\n').unwrap_or(&head).to_string();
                block.push('\n');
                block.push_str(&region.close);
                emit(out, &block);
                self.buf = format!("{}\n{}", region.reopen, self.buf);
                self.starts_line = true;
            }
            CutAt::Outside | CutAt::Invalid => {
                self.after_cut(&head);
                emit(out, &head);
            }
        }
    }
}

/// Whether a cut at byte `cut` (of kind `at`) cuts a line so that either half reads as a
/// fence line (see [`FenceLines`]), or may once the rest of the line
/// arrives: a cut at or after `growing` (see [`growing_tail`]) leaves a half that can still
/// grow into a closer, or an opener.
fn cuts_into_fence_line(
    fence_lines: &std::cell::RefCell<FenceLines<'_>>,
    cut: usize,
    at: CutAt,
    regions: &[FenceRegion],
    growing: usize,
) -> bool {
    let mut fence_lines = fence_lines.borrow_mut();
    let buf = fence_lines.text();
    let Some((head, rest)) = buf.split_at_checked(cut) else { return true };
    if head.is_empty() || head.ends_with('\n') || rest.is_empty() {
        return false;
    }
    if cut >= growing {
        return true;
    }
    let inside = match at {
        CutAt::InFence(i) => regions.get(i),
        _ => None,
    };
    let line_start = fence_lines.line_start(cut);
    fence_lines.rest_from(cut, inside) || fence_lines.part(line_start, cut, inside)
}

/// Where the buffer's last line (which may still be arriving) ends in only spaces and tabs
/// followed by one kind of marker character: a cut from there leaves a half that the next
/// delta may turn into a fence line.
fn growing_tail(buf: &str) -> usize {
    let last_line = buf.rfind('\n').map_or(0, |p| p + 1);
    let line = buf.get(last_line..).unwrap_or_default();
    let markers = match line.chars().next_back() {
        Some(c @ ('`' | '~')) => line.trim_end_matches(c),
        _ => line,
    };
    last_line + markers.trim_end_matches([' ', '\t']).len()
}

fn emit(out: &mut Vec<String>, block: &str) {
    // Only blank lines and indentation go at the start: trimming other whitespace (a vertical
    // tab, say) could turn "\u{b}```x" into a fence opener the text never had.
    let block = block.trim_end().trim_start_matches(['\n', ' ', '\t']);
    if !block.trim().is_empty() {
        out.push(block.to_string());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn streamer(min: usize, max: usize, idle_ms: u64) -> BlockStreamer {
        BlockStreamer::new(BlockStreamConfig { min_chars: min, max_chars: max, idle: Duration::from_millis(idle_ms) })
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    /// Single lines, fences (some long enough to be cut inside), multi-byte characters; no
    /// blank line, so only forced cuts happen and they must not depend on how the text came.
    fn long_answer(bytes: usize) -> String {
        let mut text = String::new();
        let mut n = 0;
        while text.len() < bytes {
            n += 1;
            text.push_str(&format!("line {n}: some words, ünïcödé and 🙂 emoji\n"));
            if n % 40 == 0 {
                text.push_str("```rust\n");
                for k in 0..(n % 120) {
                    text.push_str(&format!("let x{k} = {k}; // code\n"));
                }
                text.push_str("```\n");
            }
        }
        text
    }

    #[test]
    fn one_huge_delta_is_cut_like_small_deltas_and_quickly() {
        let text = long_answer(300_000);
        let now = Instant::now();
        let mut whole = streamer(400, 1000, 0);
        let mut one = whole.push(&text, now);
        one.extend(whole.finish());
        let mut pieces = streamer(400, 1000, 0);
        let mut many = Vec::new();
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let mut at = rest.len().min(997);
            while !rest.is_char_boundary(at) {
                at += 1;
            }
            many.extend(pieces.push(&rest[..at], now));
            rest = &rest[at..];
        }
        many.extend(pieces.finish());
        assert_eq!(one.len(), many.len());
        assert!(one == many, "the blocks differ");

        // 2 MB in one delta: linear, not 2,000 passes over the whole buffer (that took 38 s
        // in a debug build; this takes well under one).
        let text = long_answer(2_000_000);
        let mut s = streamer(400, 1000, 0);
        let started = Instant::now();
        let blocks = s.push(&text, now);
        assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
        assert!(blocks.len() > 1500, "{}", blocks.len());
        assert!(u16_len(s.buffered()) < 1000);
    }

    #[test]
    fn carriage_returns_end_lines_as_the_renderers_read_them() {
        let t0 = Instant::now();
        let cases: &[(&[&str], &str)] = &[
            (&["one\r\ntwo"], "one\ntwo"),
            (&["one\r", "\ntwo"], "one\ntwo"),
            (&["one\r", "", "\ntwo"], "one\ntwo"),
            (&["one\r", "\n", "two"], "one\ntwo"),
            (&["one\rtwo"], "one\ntwo"),
            (&["one\r", "\r", "\ntwo"], "one\n\ntwo"),
            (&["one\n", "\ntwo"], "one\n\ntwo"),
            (&["\r\n\r\none"], "one"),
        ];
        for (deltas, expected) in cases {
            let mut s = streamer(1000, 2000, 0);
            for delta in *deltas {
                assert!(s.push(delta, t0).is_empty(), "{deltas:?}");
            }
            assert_eq!(s.finish(), vec![expected.to_string()], "{deltas:?}");
        }

        // Found by the streamer fuzz target: "intro\r```rust" was one line here, so the code
        // was no fence to the cuts, while each block's reader saw one and nothing closed it.
        let mut text = "intro\r```rust".to_string();
        for k in 0..20 {
            text.push_str(&format!("\rlet x{k} = {k};"));
        }
        text.push_str("\r```\rafter");
        for max in [60, 90] {
            let mut s = streamer(10, max, 0);
            let mut blocks = s.push(&text, t0);
            blocks.extend(s.finish());
            assert!(blocks.len() > 2, "{max}: {blocks:?}");
            for block in &blocks {
                // As a renderer reads it.
                let block = normalize_newlines(block);
                assert!(crate::fuzzing::checks::fences_closed(&block), "{max}: {block:?}");
            }
        }
    }

    #[test]
    fn a_forced_cut_never_starts_a_block_with_a_fence() {
        // Found by the streamer fuzz target (the force-split half of it).
        let text = format!("{} ```x yy {}~~~~z", "a".repeat(45), "b ".repeat(20));
        for max in 40..70 {
            let mut s = streamer(10, max, 0);
            let mut blocks = s.push(&text, Instant::now());
            blocks.extend(s.finish());
            for block in blocks {
                let first = block.lines().next().unwrap_or_default();
                assert!(crate::render::FenceOpen::parse(first).is_none(), "{max}: {block:?}");
            }
        }
    }

    #[test]
    fn blocks_keep_leading_whitespace_that_is_not_indentation() {
        // Found by the streamer fuzz target: trimming the vertical tab made a fence opener.
        let t0 = Instant::now();
        let mut s = streamer(5, 1000, 0);
        let mut blocks = s.push("first paragraph\n\n\u{b}```rust\ncode", t0);
        blocks.extend(s.finish());
        assert_eq!(blocks, vec!["first paragraph", "\u{b}```rust\ncode"]);
    }

    #[test]
    fn code_lines_that_look_like_fence_openers_are_cut_inside_their_fence() {
        // Inside a fence, half a line only matters if it reads as the closer (found by fuzzing).
        let text = format!("```sh\n{}```\n", "``````echo 1 2 3 4 5 6 7 8 9\n".repeat(5));
        for max in 30..50 {
            let mut s = streamer(10, max, 0);
            let mut blocks = s.push(&text, Instant::now());
            blocks.extend(s.finish());
            for block in &blocks {
                assert!(crate::fuzzing::checks::fences_closed(block), "{max}: {block:?}");
                assert!(u16_len(block) <= max, "{max}: {block:?}");
            }
        }
    }

    #[test]
    fn defaults_are_the_spec_values() {
        let c = BlockStreamConfig::default();
        assert_eq!((c.min_chars, c.max_chars, c.idle), (400, 1000, Duration::from_millis(1500)));
    }

    #[test]
    fn short_text_waits_for_finish() {
        let t0 = Instant::now();
        let mut s = streamer(400, 1000, 1500);
        assert!(s.push("Hello ", t0).is_empty());
        assert!(s.push("world.\n\nSecond.", ms(t0, 10)).is_empty());
        assert_eq!(s.next_deadline(), Some(ms(t0, 1510)));
        // Idle fires but the buffer is under min_chars: nothing, and the timer is spent.
        assert!(s.poll(ms(t0, 1510)).is_empty());
        assert_eq!(s.next_deadline(), None);
        assert_eq!(s.finish(), vec!["Hello world.\n\nSecond."]);
        assert!(s.finish().is_empty());
    }

    #[test]
    fn paragraph_emit_needs_min_chars_before_the_last_blank_line() {
        let t0 = Instant::now();
        let mut s = streamer(10, 1000, 0);
        // Blank line at index 5 < min 10: nothing yet.
        assert!(s.push("abcde\n\nfghij", t0).is_empty());
        // Last blank line now at index 12 >= 10: everything up to it goes.
        assert_eq!(s.push("\n\nrest", t0), vec!["abcde\n\nfghij"]);
        assert_eq!(s.buffered(), "rest");
        assert_eq!(s.next_deadline(), None, "idle 0 disables the timer");
        assert_eq!(s.finish(), vec!["rest"]);
    }

    #[test]
    fn force_split_prefers_blank_line_then_newline_then_space_then_hard() {
        let t0 = Instant::now();
        let cases: &[(&str, &[&str], &str)] = &[
            // 20 units: cut at the blank line; the remaining 14 are still >= 12: at the newline.
            ("aaaa\n\nbbbb\ncccc dddd", &["aaaa", "bbbb"], "cccc dddd"),
            ("aaaa bbbb\ncccc dddd", &["aaaa bbbb"], "cccc dddd"),
            ("aaaa bbbb cccc dddd", &["aaaa bbbb"], "cccc dddd"),
            ("abcdefghijklmnopqrst", &["abcdefghijkl"], "mnopqrst"),
        ];
        for (input, blocks, rest) in cases {
            let mut s = streamer(100, 12, 0);
            assert_eq!(s.push(input, t0), *blocks, "{input:?}");
            assert_eq!(s.buffered().trim(), *rest, "{input:?}");
        }
    }

    #[test]
    fn force_split_loops_and_counts_utf16() {
        let t0 = Instant::now();
        let mut s = streamer(100, 10, 0);
        // 12 emoji = 24 UTF-16 units: cuts after 5 emoji (10 units) each time.
        let blocks = s.push(&"😀".repeat(12), t0);
        assert_eq!(blocks, vec!["😀".repeat(5), "😀".repeat(5)]);
        assert_eq!(s.finish(), vec!["😀".repeat(2)]);
    }

    #[test]
    fn idle_flush_sends_whole_buffer_when_long_enough() {
        let t0 = Instant::now();
        let mut s = streamer(10, 1000, 1500);
        assert!(s.push("0123456789 and more", t0).is_empty());
        assert!(s.push(" text", ms(t0, 1000)).is_empty());
        assert_eq!(s.next_deadline(), Some(ms(t0, 2500)), "reset by the second delta");
        assert!(s.poll(ms(t0, 2499)).is_empty());
        assert_eq!(s.poll(ms(t0, 2500)), vec!["0123456789 and more text"]);
        assert_eq!(s.next_deadline(), None);
        assert!(s.finish().is_empty());
    }

    #[test]
    fn blocks_are_trimmed_and_empty_ones_skipped() {
        let t0 = Instant::now();
        let mut s = streamer(3, 1000, 10);
        assert!(s.push("   \n\n  ", t0).is_empty());
        assert!(s.poll(ms(t0, 10)).is_empty());
        assert!(s.finish().is_empty());
        // 7 units >= min 3 and the blank line sits at index 5 >= 3: emitted, trimmed.
        assert_eq!(s.push("  x  \n\n", t0), vec!["x"]);
        assert!(s.finish().is_empty());
    }

    #[test]
    fn no_paragraph_emit_inside_a_fence() {
        let t0 = Instant::now();
        let mut s = streamer(10, 1000, 0);
        let text = "intro text here\n\n```py\nline one\n\nline two\n\nline three\n";
        // The last blank lines are inside the open fence; the one before it is usable.
        assert_eq!(s.push(text, t0), vec!["intro text here"]);
        assert_eq!(s.buffered(), "```py\nline one\n\nline two\n\nline three\n");
        assert!(s.push("more\n\n", t0).is_empty(), "still inside the fence");
        assert_eq!(s.push("```\n\nafter", t0), vec!["```py\nline one\n\nline two\n\nline three\nmore\n\n```"]);
        assert_eq!(s.finish(), vec!["after"]);
    }

    #[test]
    fn forced_split_inside_a_fence_closes_and_reopens_it() {
        let t0 = Instant::now();
        let mut s = streamer(1000, 40, 0);
        let code: String = (1..=8).map(|i| format!("let x{i} = {i};\n")).collect();
        let mut blocks = s.push(&format!("```rust\n{code}"), t0);
        blocks.extend(s.push("```\ndone", t0));
        blocks.extend(s.finish());
        for block in &blocks[..blocks.len() - 1] {
            assert!(block.starts_with("```rust\n") && block.ends_with("\n```"), "{block:?}");
            assert!(u16_len(block) <= 40, "{block:?}");
        }
        let body: String = blocks
            .iter()
            .flat_map(|b| b.lines())
            .filter(|l| !l.starts_with("```") && *l != "done")
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(body, code);
        // The last code block ends exactly at 40 units: closed by its own fence, then "done".
        assert_eq!(blocks.last().map(String::as_str), Some("done"));
    }

    #[test]
    fn a_fence_line_of_spaces_and_backticks_still_arriving_is_cut_with_the_fence_closed() {
        // Found by the fuzzer: every cut of "o   ``…`" leaves a half that could still become
        // a closing line, and the block went out with its fence open.
        let t0 = Instant::now();
        let mut s = streamer(20, 60, 0);
        let line = format!("o{}{}", " ".repeat(40), "`".repeat(30));
        let blocks = s.push(&format!("```sh\n{line}"), t0);
        assert!(!blocks.is_empty());
        for block in &blocks {
            assert!(u16_len(block) <= 60, "{block:?}");
            assert!(block.starts_with("```sh\n") && block.ends_with("\n```"), "{block:?}");
        }
    }

    #[test]
    fn a_cut_does_not_leave_backticks_that_may_still_grow_into_the_closer() {
        // Found by the streamer fuzz target: the rest of a cut was "    ``", which read as no
        // fence line, and the line's next delta made it "    ``````": the closer of the
        // reopened fence, so every later block had its fences upside down.
        let t0 = Instant::now();
        let mut s = streamer(20, 60, 0);
        let code = format!("```sh\n{}\u{1d}{}``", "x".repeat(30), " ".repeat(30));
        let mut blocks = s.push(&code, t0);
        blocks.extend(s.push("````\nmore\n```\nafter\n", t0));
        blocks.extend(s.finish());
        for block in &blocks {
            assert!(u16_len(block) <= 60, "{block:?}");
            assert!(crate::fuzzing::checks::fences_closed(block), "{block:?}");
        }
        let joined = blocks.join("\n");
        assert!(joined.contains(&format!("\u{1d}{}``````\nmore\n```", " ".repeat(30))), "{blocks:?}");
        assert!(blocks.last().is_some_and(|b| b.ends_with("\n```\nafter")), "{blocks:?}");
    }

    #[test]
    fn a_huge_line_of_spaces_or_backticks_is_cut_quickly() {
        // Each cut of a line that may still grow into a fence line is refused: finding where
        // such a tail starts once per cut, not once per candidate cut, keeps this linear.
        for (open, fill) in [("", ' '), ("```\n", ' '), ("```\n", '`'), ("x ", '~')] {
            let text = format!("{open}a {}", fill.to_string().repeat(300_000));
            let mut s = streamer(400, 4096, 0);
            let started = Instant::now();
            let blocks = s.push(&text, Instant::now());
            let elapsed = started.elapsed();
            // 1 MB of backticks in a fence took over 300 s in a release build, now 0.32 s. The
            // bound only stops a return to quadratic time hanging CI.
            assert!(elapsed < Duration::from_secs(15), "{open:?} {fill:?}: {elapsed:?}");
            assert!(blocks.iter().all(|block| u16_len(block) <= 4096));
            assert!(u16_len(s.buffered()) < 4096);
        }
    }

    #[test]
    fn four_backtick_fence_reopens_with_four() {
        let t0 = Instant::now();
        let mut s = streamer(1000, 30, 0);
        let blocks = s.push("````md\n```\ninner one\n```\ninner two\n", t0);
        assert_eq!(blocks, vec!["````md\n```\ninner one\n```\n````"]);
        assert_eq!(s.buffered(), "````md\ninner two\n");
    }

    #[test]
    fn idle_flush_stops_before_an_open_fence() {
        let t0 = Instant::now();
        let mut s = streamer(5, 1000, 100);
        assert!(s.push("Running it:\n```sh\ncargo te", t0).is_empty());
        assert_eq!(s.poll(ms(t0, 100)), vec!["Running it:"]);
        assert_eq!(s.buffered(), "```sh\ncargo te");
        assert!(s.poll(ms(t0, 500)).is_empty(), "timer spent");
        assert!(s.push("st\n```\nok", ms(t0, 600)).is_empty());
        assert_eq!(s.poll(ms(t0, 700)), vec!["```sh\ncargo test\n```\nok"]);
    }

    #[test]
    fn idle_flush_holds_back_a_growing_fence_marker() {
        let t0 = Instant::now();
        let mut s = streamer(5, 1000, 100);
        assert!(s.push("Some text first.\n``", t0).is_empty());
        assert_eq!(s.poll(ms(t0, 100)), vec!["Some text first."]);
        assert_eq!(s.buffered(), "``");
        assert!(s.push("`rust\nfn main() {}\n```\n", ms(t0, 150)).is_empty());
        assert_eq!(s.poll(ms(t0, 250)), vec!["```rust\nfn main() {}\n```"]);
    }

    #[test]
    fn idle_flush_with_an_unterminated_closer_line_keeps_the_block_whole() {
        let t0 = Instant::now();
        let mut s = streamer(10, 1000, 100);
        assert!(s.push("Intro\n\n```\ncode\n```", t0).is_empty());
        // "```" may still grow ("```x" would be content): the fence waits with it.
        assert_eq!(s.poll(ms(t0, 100)), vec!["Intro"]);
        assert!(s.push("\nafter", ms(t0, 120)).is_empty());
        assert_eq!(s.poll(ms(t0, 220)), vec!["```\ncode\n```\nafter"]);
    }

    #[test]
    fn idle_flush_of_an_indentation_keeps_the_next_fence_a_fence() {
        let t0 = Instant::now();
        let mut s = streamer(5, 1000, 100);
        assert!(s.push("- step one\n   ", t0).is_empty());
        assert_eq!(s.poll(ms(t0, 100)), vec!["- step one"]);
        assert!(s.push("```sh\nmake\n\ntest\n", ms(t0, 150)).is_empty());
        // The fence is recognised although its indentation went out with the last block.
        assert!(s.poll(ms(t0, 250)).is_empty());
        assert_eq!(s.finish(), vec!["```sh\nmake\n\ntest"]);
    }

    #[test]
    fn fence_split_by_deltas_mid_marker() {
        let t0 = Instant::now();
        let mut s = streamer(5, 1000, 0);
        let mut blocks = Vec::new();
        for delta in ["Intro para.\n\n``", "`js\nlet a;\n\nlet b;\n`", "``\n\nTail para.\n\n"] {
            blocks.extend(s.push(delta, t0));
        }
        blocks.extend(s.finish());
        // The blank lines inside the fence never cut; the one after "Tail para." does.
        assert_eq!(blocks, vec!["Intro para.", "```js\nlet a;\n\nlet b;\n```\n\nTail para."]);
    }

    #[test]
    fn generated_streams_never_leave_a_fence_open_and_lose_nothing() {
        check_streams(21, 150);
    }

    pub(crate) fn check_streams(seed: u64, cases: usize) {
        use crate::render::tests::{Rng, generate};
        let mut rng = Rng::new(seed);
        for case in 0..cases {
            let text = {
                let blocks = 1 + rng.below(12);
                generate(&mut rng, blocks)
            };
            let (min, max) = (20 + rng.below(100), 120 + rng.below(300));
            let mut s = streamer(min, max, 50);
            let t0 = Instant::now();
            let mut blocks = Vec::new();
            let mut pos = 0;
            let mut clock = 0;
            let chars: Vec<char> = text.chars().collect();
            while pos < chars.len() {
                let take = 1 + rng.below(40);
                let delta: String = chars[pos..(pos + take).min(chars.len())].iter().collect();
                pos += take;
                clock += rng.below(80) as u64;
                blocks.extend(s.poll(ms(t0, clock)));
                blocks.extend(s.push(&delta, ms(t0, clock)));
            }
            blocks.extend(s.finish());
            let unclosed_source = fence_regions(&text, true).iter().any(|r| r.after_close == usize::MAX);
            for (k, block) in blocks.iter().enumerate() {
                assert!(u16_len(block) <= max, "case {case}: {block:?}");
                let last = k == blocks.len() - 1;
                if !(last && unclosed_source) {
                    let open = fence_regions(block, true).iter().any(|r| r.after_close == usize::MAX);
                    assert!(!open, "case {case}: open fence in {block:?}\n{text}\n{blocks:#?}");
                }
            }
            let strip = |s: &str| -> String {
                s.lines()
                    .filter(|l| crate::render::FenceOpen::parse(l).is_none())
                    .flat_map(|l| l.chars())
                    .filter(|c| !c.is_whitespace())
                    .collect()
            };
            assert_eq!(strip(&blocks.join("\n")), strip(&text), "case {case}");
        }
    }
}
