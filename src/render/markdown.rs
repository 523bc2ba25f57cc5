//! The Markdown reader shared by the renderers and chunkers: fence detection, block structure
//! and an inline tree. Hand-written and forgiving: anything that does not parse as a construct
//! stays literal text, so renderers built on the tree can never emit unbalanced markup.

use std::collections::HashMap;

/// Deepest nesting of inline constructs (and block quotes) we interpret; deeper input is
/// kept as literal text, so hostile input cannot exhaust the stack.
const MAX_DEPTH: usize = 24;

/// Longest link destination we look for; keeps scanning of `[a](` followed by a wall of text
/// linear.
const MAX_URL_CHARS: usize = 2048;

/// `\r\n` and lone `\r` become `\n`: every reader below splits on `\n` only.
pub(crate) fn normalize_newlines(text: &str) -> String {
    if text.contains('\r') { text.replace("\r\n", "\n").replace('\r', "\n") } else { text.to_string() }
}

// ---------------------------------------------------------------------------------------------
// Fences

/// An opening code fence line (```` ```rust ```` or `~~~`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FenceOpen {
    /// Leading whitespace of the opener; content lines lose up to this much.
    pub indent: String,
    pub ch: char,
    pub len: usize,
    /// The info string after the marker, trimmed.
    pub info: String,
}

impl FenceOpen {
    /// Reads `line` (without its `\n`) as a fence opener. Any indentation is accepted because
    /// agents indent fences inside list items.
    pub fn parse(line: &str) -> Option<FenceOpen> {
        let body = line.trim_start_matches([' ', '\t']);
        let indent = line.strip_suffix(body).unwrap_or_default();
        let ch = body.chars().next().filter(|c| *c == '`' || *c == '~')?;
        let len = body.chars().take_while(|c| *c == ch).count();
        if len < 3 {
            return None;
        }
        let info = body.trim_start_matches(ch).trim();
        // A backtick fence's info string cannot hold backticks (CommonMark), which keeps
        // one-line code spans like ```` ```x``` ```` out.
        if ch == '`' && info.contains('`') {
            return None;
        }
        Some(FenceOpen { indent: indent.to_string(), ch, len, info: info.to_string() })
    }

    /// Whether `line` closes this fence: the same character, at least as many, nothing after.
    pub fn is_closed_by(&self, line: &str) -> bool {
        let body = line.trim_start_matches([' ', '\t']);
        let run = body.chars().take_while(|c| *c == self.ch).count();
        run >= self.len && body.trim_start_matches(self.ch).trim().is_empty()
    }

    /// The line that closes this fence.
    pub fn closer(&self) -> String {
        let mut s = self.indent.clone();
        s.extend(std::iter::repeat_n(self.ch, self.len));
        s
    }

    /// The language named by the info string, if it is a plain identifier (it ends up in an
    /// HTML attribute, so anything else is dropped).
    pub fn language(&self) -> Option<&str> {
        let word = self.info.split_whitespace().next()?;
        let ok = word.len() <= 32 && word.chars().all(|c| c.is_ascii_alphanumeric() || "_+#.-".contains(c));
        ok.then_some(word)
    }
}

/// Whether `part`, half of a line cut in its middle (only its first line counts), reads as
/// a fence line that changes a chunk: outside a fence, an opener (the chunk would open a code
/// block the text never had); inside fence `inside`, its closer (the block would end early).
/// The plain reference for [`FenceLines`], which the chunkers ask.
#[cfg(test)]
pub(crate) fn reads_as_fence_line(part: &str, inside: Option<&FenceRegion>) -> bool {
    let body = part.trim_start_matches([' ', '\t']);
    if !(body.starts_with("```") || body.starts_with("~~~")) {
        return false;
    }
    let line = part.split('\n').next().unwrap_or_default();
    match inside {
        None => FenceOpen::parse(line).is_some(),
        Some(region) => FenceOpen::parse(&region.reopen).is_some_and(|open| open.is_closed_by(line)),
    }
}

/// Whether half of a line cut in its middle reads as a fence line that changes a chunk:
/// outside a fence, an opener; inside fence `inside`, its closer. Each chunk is rendered from
/// a line start, so chunkers must not cut a line like that. Answered for the many candidate
/// cuts of one text in time linear in the text, not quadratic: the run of blanks, the run of
/// marker characters and the rest of the line a cut lands in are measured once and reused
/// while later cuts stay inside them (measuring them afresh for each cut took 28 s to chunk a
/// 100 KB line of backticks). `reads_as_fence_line`, in the tests, is the plain reference.
pub(crate) struct FenceLines<'a> {
    text: &'a str,
    /// The last run of blanks, of markers and of a line's characters measured, one of each:
    /// `[start, end)` is all of `run`, and `end` is where that run stops.
    known: [(usize, usize, Run); 3],
    /// `[start, end)` holds no newline, and `start` is the start of that line.
    line_from_start: (usize, usize),
    /// What follows a marker run: from `start`, scanned up to `scanned`, the first backtick
    /// and the first character that is not whitespace, if any before `scanned`.
    tail: Tail,
}

/// The runs [`FenceLines`] measures forward.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Run {
    /// Spaces and tabs.
    Blanks,
    /// One marker byte (`` ` `` or `~`).
    Marker(u8),
    /// Anything but a newline.
    Line,
}

impl Run {
    fn slot(self) -> usize {
        match self {
            Run::Blanks => 0,
            Run::Marker(_) => 1,
            Run::Line => 2,
        }
    }

    fn holds(self, byte: u8) -> bool {
        match self {
            Run::Blanks => byte == b' ' || byte == b'\t',
            Run::Marker(marker) => byte == marker,
            Run::Line => byte != b'\n',
        }
    }
}

#[derive(Clone, Copy)]
struct Tail {
    start: usize,
    scanned: usize,
    backtick: Option<usize>,
    not_blank: Option<usize>,
}

impl<'a> FenceLines<'a> {
    pub(crate) fn new(text: &'a str) -> FenceLines<'a> {
        let nothing = Tail { start: usize::MAX, scanned: 0, backtick: None, not_blank: None };
        let known = [(0, 0, Run::Blanks), (0, 0, Run::Marker(b'`')), (0, 0, Run::Line)];
        FenceLines { text, known, line_from_start: (0, 0), tail: nothing }
    }

    pub(crate) fn text(&self) -> &'a str {
        self.text
    }

    /// For the part of a line from `from` on (the second half of a cut).
    pub(crate) fn rest_from(&mut self, from: usize, inside: Option<&FenceRegion>) -> bool {
        let to = self.run_end(from, Run::Line);
        self.part(from, to, inside)
    }

    /// For `text[from..to]`, within one line (the first half of a cut, from its line start).
    pub(crate) fn part(&mut self, from: usize, to: usize, inside: Option<&FenceRegion>) -> bool {
        let body = self.run_end(from, Run::Blanks).min(to);
        let marker = match self.text.as_bytes().get(body) {
            Some(&b) if body < to && (b == b'`' || b == b'~') => b,
            _ => return false,
        };
        let run_end = self.run_end(body, Run::Marker(marker)).min(to);
        let len = run_end - body;
        match inside {
            None => len >= 3 && (marker == b'~' || self.tail(run_end, to).0.is_none_or(|at| at >= to)),
            Some(region) => FenceOpen::parse(&region.reopen).is_some_and(|open| {
                open.ch == char::from(marker) && len >= open.len && self.tail(run_end, to).1.is_none_or(|at| at >= to)
            }),
        }
    }

    /// Where the run of `run` from `from` stops.
    fn run_end(&mut self, from: usize, run: Run) -> usize {
        let bytes = self.text.as_bytes();
        let slot = run.slot();
        let (known_start, known_end) = match self.known[slot] {
            (start, end, known) if known == run && start < end => (start, end),
            _ => (usize::MAX, usize::MAX),
        };
        if known_start <= from && from <= known_end {
            return known_end;
        }
        let mut end = from;
        while let Some(&b) = bytes.get(end) {
            // Reaching the run measured before: it stops where it was found to.
            if end == known_start {
                end = known_end;
                break;
            }
            if !run.holds(b) {
                break;
            }
            end += 1;
        }
        self.known[slot] = (from, end, run);
        end
    }

    /// The start of the line `at` is in (0 for the first line).
    pub(crate) fn line_start(&mut self, at: usize) -> usize {
        let (start, known_end) = self.line_from_start;
        if start <= at && at <= known_end {
            return start;
        }
        let bytes = self.text.as_bytes();
        let mut from = at;
        while from > 0 {
            if from == known_end && start < known_end {
                from = start;
                break;
            }
            if bytes.get(from - 1) == Some(&b'\n') {
                break;
            }
            from -= 1;
        }
        self.line_from_start = (from, at);
        from
    }

    /// In `text[start..to]`: the first backtick and the first character that is not whitespace.
    fn tail(&mut self, start: usize, to: usize) -> (Option<usize>, Option<usize>) {
        if self.tail.start != start {
            self.tail = Tail { start, scanned: start, backtick: None, not_blank: None };
        }
        let tail = &mut self.tail;
        if tail.scanned < to && (tail.backtick.is_none() || tail.not_blank.is_none()) {
            let scanned = self.text.get(tail.scanned..to).unwrap_or_default();
            for (i, c) in scanned.char_indices() {
                let at = tail.scanned + i;
                if c == '`' && tail.backtick.is_none() {
                    tail.backtick = Some(at);
                }
                if !c.is_whitespace() && tail.not_blank.is_none() {
                    tail.not_blank = Some(at);
                }
                if tail.backtick.is_some() && tail.not_blank.is_some() {
                    break;
                }
            }
            tail.scanned = tail.scanned.max(to);
        }
        (tail.backtick, tail.not_blank)
    }
}

/// Where one fenced block sits in a text, as byte offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FenceRegion {
    /// Start of the opener line.
    pub open_start: usize,
    /// Just after the opener line's `\n`.
    pub content_start: usize,
    /// Start of the closer line (text length when unclosed).
    pub content_end: usize,
    /// End of the closer line, before its `\n`; `usize::MAX` when unclosed.
    pub after_close: usize,
    /// The opener line as written (trailing whitespace removed), to reopen the block.
    pub reopen: String,
    /// The line that closes the block.
    pub close: String,
}

/// Finds the fenced blocks of `text`. `starts_at_line` says whether the text's first character
/// begins a line (a buffer cut mid-line must not read its first fragment as a fence).
pub(crate) fn fence_regions(text: &str, starts_at_line: bool) -> Vec<FenceRegion> {
    let mut regions = Vec::new();
    let mut open: Option<(FenceOpen, usize, usize, String)> = None;
    let mut offset = 0;
    for (index, piece) in text.split_inclusive('\n').enumerate() {
        let line = piece.strip_suffix('\n').unwrap_or(piece);
        let start = offset;
        offset += piece.len();
        match &open {
            None => {
                if index == 0 && !starts_at_line {
                    continue;
                }
                if let Some(fence) = FenceOpen::parse(line) {
                    open = Some((fence, start, offset, line.trim_end().to_string()));
                }
            }
            Some((fence, open_start, content_start, reopen)) => {
                if fence.is_closed_by(line) {
                    regions.push(FenceRegion {
                        open_start: *open_start,
                        content_start: *content_start,
                        content_end: start,
                        after_close: start + line.len(),
                        reopen: reopen.clone(),
                        close: fence.closer(),
                    });
                    open = None;
                }
            }
        }
    }
    if let Some((fence, open_start, content_start, reopen)) = open {
        regions.push(FenceRegion {
            open_start,
            content_start,
            content_end: text.len(),
            after_close: usize::MAX,
            reopen,
            close: fence.closer(),
        });
    }
    regions
}

/// How a cut relates to the fenced blocks: the chunk is `[.., end)`, the next one starts at
/// `next` (the bytes between are a dropped separator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CutAt {
    Outside,
    /// Inside the content of `regions[i]`, with content left for the next chunk.
    InFence(usize),
    /// Inside an opener or closer line, or so that one side would get an empty block.
    Invalid,
}

pub(crate) fn classify_cut(end: usize, next: usize, regions: &[FenceRegion]) -> CutAt {
    // Regions are sorted and disjoint: only the last one opening before `end` can hold it.
    let i = match regions.partition_point(|r| r.open_start < end) {
        0 => return CutAt::Outside,
        n => n - 1,
    };
    let region = &regions[i];
    if end >= region.after_close {
        CutAt::Outside
    } else if end <= region.content_start || end >= region.content_end || next >= region.content_end {
        CutAt::Invalid
    } else {
        CutAt::InFence(i)
    }
}

// ---------------------------------------------------------------------------------------------
// Blocks

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Marker {
    Bullet,
    /// The number, as written.
    Ordered(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Align {
    Left,
    Center,
    Right,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Table {
    pub header: Vec<String>,
    pub aligns: Vec<Align>,
    pub rows: Vec<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Block {
    /// Inline Markdown, lines joined with `\n`.
    Paragraph(String),
    Heading(String),
    Code {
        lang: Option<String>,
        text: String,
    },
    ListItem {
        level: usize,
        marker: Marker,
        /// `Some(done)` for `- [ ]` / `- [x]` items.
        task: Option<bool>,
        text: String,
    },
    Quote(Vec<Spaced>),
    Table(Table),
    Rule,
}

/// A block and whether a blank line separated it from the previous one in the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spaced {
    pub block: Block,
    pub blank_before: bool,
}

/// Render `blocks` one by one with `render` and join the non-empty results, a blank line
/// where the source had one, else a newline. Shared by every renderer.
pub(crate) fn join_blocks(blocks: &[Spaced], out: &mut String, mut render: impl FnMut(&Block) -> String) {
    let mut first = true;
    for spaced in blocks {
        let piece = render(&spaced.block);
        if piece.is_empty() {
            continue;
        }
        if !first {
            out.push_str(if spaced.blank_before { "\n\n" } else { "\n" });
        }
        out.push_str(&piece);
        first = false;
    }
}

pub(crate) fn parse_blocks(text: &str) -> Vec<Spaced> {
    parse_blocks_at(&normalize_newlines(text), 0)
}

fn parse_blocks_at(text: &str, depth: usize) -> Vec<Spaced> {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut blocks: Vec<Spaced> = Vec::new();
    let mut blank_before = false;
    let mut list_indents: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim().is_empty() {
            blank_before = !blocks.is_empty();
            i += 1;
            continue;
        }
        let push = |block: Block, blocks: &mut Vec<Spaced>| {
            blocks.push(Spaced { block, blank_before });
        };
        if let Some(fence) = FenceOpen::parse(line) {
            let mut body = Vec::new();
            i += 1;
            while i < lines.len() && !fence.is_closed_by(lines[i]) {
                body.push(strip_indent(lines[i], fence.indent.len()));
                i += 1;
            }
            i += 1; // the closer (or past the end)
            let lang = fence.language().map(str::to_string);
            push(Block::Code { lang, text: body.join("\n") }, &mut blocks);
            list_indents.clear();
        } else if let Some(text) = heading(line) {
            push(Block::Heading(text.to_string()), &mut blocks);
            list_indents.clear();
            i += 1;
        } else if is_rule(line) {
            push(Block::Rule, &mut blocks);
            list_indents.clear();
            i += 1;
        } else if quote_body(line).is_some() {
            let mut inner = Vec::new();
            while let Some(body) = lines.get(i).and_then(|l| quote_body(l)) {
                inner.push(body);
                i += 1;
            }
            let inner = inner.join("\n");
            let block = if depth >= MAX_DEPTH {
                Block::Paragraph(inner)
            } else {
                Block::Quote(parse_blocks_at(&inner, depth + 1))
            };
            push(block, &mut blocks);
            list_indents.clear();
        } else if let Some(table) = table_at(&lines, i) {
            i += 2 + table.rows.len();
            push(Block::Table(table), &mut blocks);
            list_indents.clear();
        } else if let Some(item) = list_item(line) {
            while list_indents.last().is_some_and(|&top| top > item.indent) {
                list_indents.pop();
            }
            if list_indents.last() != Some(&item.indent) {
                list_indents.push(item.indent);
            }
            let level = list_indents.len().saturating_sub(1);
            let mut text = item.text.to_string();
            i += 1;
            while i < lines.len() && !lines[i].trim().is_empty() && !starts_block(&lines, i) {
                text.push('\n');
                text.push_str(lines[i].trim());
                i += 1;
            }
            let block = Block::ListItem { level, marker: item.marker, task: item.task, text };
            push(block, &mut blocks);
        } else {
            let mut text = line.trim().to_string();
            i += 1;
            while i < lines.len() && !lines[i].trim().is_empty() && !starts_block(&lines, i) {
                text.push('\n');
                text.push_str(lines[i].trim());
                i += 1;
            }
            push(Block::Paragraph(text), &mut blocks);
            list_indents.clear();
        }
        blank_before = false;
    }
    blocks
}

/// Removes up to `n` leading spaces (the fence's own indentation) from a content line.
fn strip_indent(line: &str, n: usize) -> &str {
    let spaces = line.bytes().take(n).take_while(|b| *b == b' ' || *b == b'\t').count();
    line.get(spaces..).unwrap_or(line)
}

/// Whether line `i` starts a block that interrupts a paragraph or list item.
fn starts_block(lines: &[&str], i: usize) -> bool {
    let line = lines[i];
    FenceOpen::parse(line).is_some()
        || heading(line).is_some()
        || is_rule(line)
        || quote_body(line).is_some()
        || list_item(line).is_some()
        || table_at(lines, i).is_some()
}

fn leading_spaces(line: &str) -> usize {
    line.bytes().take_while(|b| *b == b' ').count()
}

fn heading(line: &str) -> Option<&str> {
    if leading_spaces(line) > 3 {
        return None;
    }
    let body = line.trim_start();
    let hashes = body.bytes().take_while(|b| *b == b'#').count();
    if !(1..=6).contains(&hashes) {
        return None;
    }
    let rest = body.trim_start_matches('#');
    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        return None;
    }
    let mut text = rest.trim();
    // An optional closing run of `#` preceded by a space.
    let without = text.trim_end_matches('#');
    if without.is_empty() || without.ends_with([' ', '\t']) {
        text = without.trim_end();
    }
    Some(text)
}

fn is_rule(line: &str) -> bool {
    if leading_spaces(line) > 3 {
        return false;
    }
    let body: Vec<char> = line.chars().filter(|c| !c.is_whitespace()).collect();
    body.len() >= 3 && matches!(body[0], '-' | '*' | '_') && body.iter().all(|c| *c == body[0])
}

fn quote_body(line: &str) -> Option<&str> {
    if leading_spaces(line) > 3 {
        return None;
    }
    let rest = line.trim_start().strip_prefix('>')?;
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}

struct ListLine<'a> {
    indent: usize,
    marker: Marker,
    task: Option<bool>,
    text: &'a str,
}

fn list_item(line: &str) -> Option<ListLine<'_>> {
    let body = line.trim_start_matches([' ', '\t']);
    let indent: usize =
        line.strip_suffix(body).unwrap_or_default().chars().map(|c| if c == '\t' { 4 } else { 1 }).sum();
    let (marker, rest) = if let Some(rest) = body.strip_prefix(['-', '*', '+']) {
        (Marker::Bullet, rest)
    } else {
        let digits = body.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=9).contains(&digits) {
            return None;
        }
        let (number, rest) = body.split_at_checked(digits)?;
        (Marker::Ordered(number.to_string()), rest.strip_prefix(['.', ')'])?)
    };
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    let mut text = rest.trim();
    let mut task = None;
    for (prefix, done) in [("[ ]", false), ("[x]", true), ("[X]", true)] {
        if let Some(after) = text.strip_prefix(prefix)
            && (after.is_empty() || after.starts_with([' ', '\t']))
        {
            task = Some(done);
            text = after.trim_start();
        }
    }
    Some(ListLine { indent, marker, task, text })
}

/// A table whose header is line `i` and delimiter row line `i + 1`.
fn table_at(lines: &[&str], i: usize) -> Option<Table> {
    let header_line = lines[i];
    if !header_line.contains('|') || FenceOpen::parse(header_line).is_some() {
        return None;
    }
    let aligns = delimiter_row(lines.get(i + 1)?)?;
    let header = split_cells(header_line);
    if header.len() != aligns.len() {
        return None;
    }
    let mut rows = Vec::new();
    let mut j = i + 2;
    while let Some(line) = lines.get(j) {
        if line.trim().is_empty()
            || !line.contains('|')
            || FenceOpen::parse(line).is_some()
            || quote_body(line).is_some()
            || heading(line).is_some()
        {
            break;
        }
        let mut cells = split_cells(line);
        cells.resize(header.len(), String::new());
        rows.push(cells);
        j += 1;
    }
    Some(Table { header, aligns, rows })
}

fn delimiter_row(line: &str) -> Option<Vec<Align>> {
    if !line.contains('-') {
        return None;
    }
    let cells = split_cells(line);
    let mut aligns = Vec::new();
    for cell in &cells {
        let left = cell.starts_with(':');
        let right = cell.ends_with(':') && cell.len() > 1;
        let dashes = cell.trim_start_matches(':').trim_end_matches(':');
        if dashes.is_empty() || !dashes.bytes().all(|b| b == b'-') {
            return None;
        }
        aligns.push(match (left, right) {
            (true, true) => Align::Center,
            (false, true) => Align::Right,
            _ => Align::Left,
        });
    }
    // A lone `---` is a rule, not a one-column table.
    (line.contains('|') && !aligns.is_empty()).then_some(aligns)
}

/// Splits a table row on `|`, except escaped ones and those inside code spans.
fn split_cells(line: &str) -> Vec<String> {
    let mut body = line.trim();
    body = body.strip_prefix('|').unwrap_or(body);
    if !body.ends_with("\\|") {
        body = body.strip_suffix('|').unwrap_or(body);
    }
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut chars = body.chars().peekable();
    let mut code_run = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cell.push_str("\\|");
                chars.next();
            }
            '`' => {
                let mut run = 1;
                while chars.peek() == Some(&'`') {
                    chars.next();
                    run += 1;
                }
                if code_run == 0 {
                    code_run = run;
                } else if code_run == run {
                    code_run = 0;
                }
                cell.extend(std::iter::repeat_n('`', run));
            }
            '|' if code_run == 0 => cells.push(std::mem::take(&mut cell).trim().to_string()),
            _ => cell.push(c),
        }
    }
    cells.push(cell.trim().to_string());
    cells
}

// ---------------------------------------------------------------------------------------------
// Inlines

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Inline {
    Text(String),
    Code(String),
    Strong(Vec<Inline>),
    Emph(Vec<Inline>),
    Strike(Vec<Inline>),
    Link { children: Vec<Inline>, url: String },
    Image { alt: String, url: String },
}

/// Parses one paragraph-like run of inline Markdown.
pub(crate) fn parse_inlines(text: &str) -> Vec<Inline> {
    let chars: Vec<char> = text.chars().collect();
    let atoms = find_atoms(&chars);
    let parser = InlineParser { chars: &chars, atoms };
    parser.parse(0, chars.len(), 0)
}

/// Constructs found before emphasis is matched; emphasis never pairs across them.
#[derive(Debug, Clone)]
enum Atom {
    Code { content: (usize, usize), end: usize },
    Link { text: (usize, usize), url: String, end: usize },
    Image { alt: (usize, usize), url: String, end: usize },
    Auto { url: String, end: usize },
}

impl Atom {
    fn end(&self) -> usize {
        match self {
            Atom::Code { end, .. } | Atom::Link { end, .. } | Atom::Image { end, .. } | Atom::Auto { end, .. } => *end,
        }
    }
}

fn is_escapable(c: char) -> bool {
    c.is_ascii_punctuation()
}

/// Code spans first (they bind tightest), then bracket pairs that form links.
fn find_atoms(chars: &[char]) -> HashMap<usize, Atom> {
    let mut atoms = HashMap::new();
    // Backtick runs by length, for finding each span's closing run.
    let mut runs: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '`' {
            let len = chars[i..].iter().take_while(|c| **c == '`').count();
            runs.entry(len).or_default().push(i);
            i += len;
        } else {
            i += 1;
        }
    }
    // Where each code span or autolink ends; brackets inside them do not count.
    let mut opaque_end: HashMap<usize, usize> = HashMap::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' if chars.get(i + 1).is_some_and(|c| is_escapable(*c)) => i += 2,
            '`' => {
                let len = chars[i..].iter().take_while(|c| **c == '`').count();
                let closer = runs.get(&len).and_then(|starts| {
                    let k = starts.partition_point(|&s| s <= i);
                    starts.get(k).copied()
                });
                match closer {
                    Some(close) => {
                        atoms.insert(i, Atom::Code { content: (i + len, close), end: close + len });
                        opaque_end.insert(i, close + len);
                        i = close + len;
                    }
                    None => i += len,
                }
            }
            '<' => match autolink_at(chars, i) {
                Some((url, end)) => {
                    atoms.insert(i, Atom::Auto { url, end });
                    opaque_end.insert(i, end);
                    i = end;
                }
                None => i += 1,
            },
            _ => i += 1,
        }
    }
    // Bracket pairs, skipping code spans and escapes.
    let mut stack: Vec<usize> = Vec::new();
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if let Some(&end) = opaque_end.get(&i) {
            i = end;
            continue;
        }
        match chars[i] {
            '\\' if chars.get(i + 1).is_some_and(|c| is_escapable(*c)) => i += 1,
            '[' => stack.push(i),
            ']' => {
                if let Some(open) = stack.pop() {
                    pairs.push((open, i));
                }
            }
            _ => {}
        }
        i += 1;
    }
    for (open, close) in pairs {
        if chars.get(close + 1) != Some(&'(') {
            continue;
        }
        let Some((url, end)) = link_destination(chars, close + 2) else {
            continue;
        };
        let image = open > 0 && chars[open - 1] == '!' && !(open > 1 && chars[open - 2] == '\\');
        if image {
            atoms.insert(open - 1, Atom::Image { alt: (open + 1, close), url, end });
        } else {
            atoms.insert(open, Atom::Link { text: (open + 1, close), url, end });
        }
    }
    atoms
}

/// Reads `dest "title")` starting after `(`; returns the destination and the index after `)`.
fn link_destination(chars: &[char], start: usize) -> Option<(String, usize)> {
    let mut i = start;
    let skip_spaces = |mut i: usize| {
        while chars.get(i).is_some_and(|c| *c == ' ' || *c == '\t' || *c == '\n') {
            i += 1;
        }
        i
    };
    i = skip_spaces(i);
    let mut url = String::new();
    if chars.get(i) == Some(&'<') {
        i += 1;
        while let Some(&c) = chars.get(i) {
            if c == '>' {
                break;
            }
            if c == '\n' || c == '<' || i - start > MAX_URL_CHARS {
                return None;
            }
            url.push(c);
            i += 1;
        }
        i += 1;
    } else {
        let mut parens = 0usize;
        while let Some(&c) = chars.get(i) {
            if c.is_whitespace() || c.is_control() || i - start > MAX_URL_CHARS {
                break;
            }
            if c == '\\' && chars.get(i + 1).is_some_and(|n| is_escapable(*n)) {
                url.push(chars[i + 1]);
                i += 2;
                continue;
            }
            if c == '(' {
                parens += 1;
            } else if c == ')' {
                if parens == 0 {
                    break;
                }
                parens -= 1;
            }
            url.push(c);
            i += 1;
        }
    }
    i = skip_spaces(i);
    // Optional title.
    if let Some(&quote) = chars.get(i).filter(|c| matches!(**c, '"' | '\'' | '(')) {
        let close = if quote == '(' { ')' } else { quote };
        i += 1;
        while chars.get(i).is_some_and(|c| *c != close) {
            if i - start > 2 * MAX_URL_CHARS {
                return None;
            }
            i += 1;
        }
        i += 1;
        i = skip_spaces(i);
    }
    (chars.get(i) == Some(&')')).then_some((url, i + 1))
}

struct InlineParser<'a> {
    chars: &'a [char],
    atoms: HashMap<usize, Atom>,
}

/// Whether a character counts as whitespace for flanking rules (range edges do too).
fn ws(c: Option<char>) -> bool {
    c.is_none_or(char::is_whitespace)
}

fn punct(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_ascii_punctuation() || (!c.is_alphanumeric() && !c.is_whitespace()))
}

impl InlineParser<'_> {
    fn at(&self, i: usize, start: usize, end: usize) -> Option<char> {
        (i >= start && i < end).then(|| self.chars[i])
    }

    /// `(can_open, can_close)` for the delimiter run `[i, i + run)` of `c` inside `[start, end)`
    /// (CommonMark's flanking rules; `_` never works inside a word, so `snake_case` stays).
    fn flanking(&self, i: usize, run: usize, start: usize, end: usize) -> (bool, bool) {
        let c = self.chars[i];
        let before = if i > start { self.at(i - 1, start, end) } else { None };
        let after = self.at(i + run, start, end);
        let left = !ws(after) && (!punct(after) || ws(before) || punct(before));
        let right = !ws(before) && (!punct(before) || ws(after) || punct(after));
        if c == '_' { (left && (!right || punct(before)), right && (!left || punct(after))) } else { (left, right) }
    }

    fn run_len(&self, i: usize, end: usize) -> usize {
        let c = self.chars[i];
        self.chars[i..end].iter().take_while(|x| **x == c).count()
    }

    /// Pairs emphasis delimiters in `[start, end)` with one stack, CommonMark style: a
    /// closer takes the nearest opener of the same kind, and openers above it (which would
    /// cross it) become literal. Linear; returns opener start to (closer start, run length).
    fn pair_delimiters(&self, start: usize, end: usize) -> HashMap<usize, (usize, usize)> {
        let mut pairs = HashMap::new();
        let mut stack: Vec<(usize, char, usize)> = Vec::new();
        let mut open_count: HashMap<(char, usize), usize> = HashMap::new();
        let mut i = start;
        while i < end {
            if let Some(atom) = self.atoms.get(&i).filter(|a| a.end() <= end) {
                i = atom.end();
                continue;
            }
            let c = self.chars[i];
            if c == '\\' && i + 1 < end && is_escapable(self.chars[i + 1]) {
                i += 2;
                continue;
            }
            if !matches!(c, '*' | '_' | '~') {
                i += 1;
                continue;
            }
            let run = self.run_len(i, end);
            let usable = if c == '~' { run == 2 } else { run <= 3 };
            if usable {
                let (can_open, can_close) = self.flanking(i, run, start, end);
                if can_close && open_count.get(&(c, run)).is_some_and(|n| *n > 0) {
                    while let Some((pos, pc, prun)) = stack.pop() {
                        if let Some(n) = open_count.get_mut(&(pc, prun)) {
                            *n -= 1;
                        }
                        if (pc, prun) == (c, run) {
                            pairs.insert(pos, (i, run));
                            break;
                        }
                    }
                } else if can_open {
                    stack.push((i, c, run));
                    *open_count.entry((c, run)).or_default() += 1;
                }
            }
            i += run;
        }
        pairs
    }

    fn parse(&self, start: usize, end: usize, depth: usize) -> Vec<Inline> {
        if depth > MAX_DEPTH {
            return vec![Inline::Text(self.chars[start..end].iter().collect())];
        }
        let pairs = self.pair_delimiters(start, end);
        self.build(start, end, &pairs, depth)
    }

    fn build(&self, start: usize, end: usize, pairs: &HashMap<usize, (usize, usize)>, depth: usize) -> Vec<Inline> {
        let mut out: Vec<Inline> = Vec::new();
        let mut text = String::new();
        let mut i = start;
        while i < end {
            if let Some(atom) = self.atoms.get(&i).filter(|a| a.end() <= end) {
                push_text(&mut out, std::mem::take(&mut text));
                out.push(self.atom_inline(atom, depth));
                i = atom.end();
                continue;
            }
            let c = self.chars[i];
            if c == '\\' && i + 1 < end && is_escapable(self.chars[i + 1]) {
                text.push(self.chars[i + 1]);
                i += 2;
                continue;
            }
            if !matches!(c, '*' | '_' | '~') {
                text.push(c);
                i += 1;
                continue;
            }
            let run = self.run_len(i, end);
            if let Some(&(close, close_run)) = pairs.get(&i)
                && close + close_run <= end
                && depth < MAX_DEPTH
            {
                push_text(&mut out, std::mem::take(&mut text));
                let inner = self.build(i + run, close, pairs, depth + 1);
                out.push(match (c, run) {
                    ('~', _) => Inline::Strike(inner),
                    (_, 1) => Inline::Emph(inner),
                    (_, 2) => Inline::Strong(inner),
                    _ => Inline::Strong(vec![Inline::Emph(inner)]),
                });
                i = close + close_run;
                continue;
            }
            text.extend(std::iter::repeat_n(c, run));
            i += run;
        }
        push_text(&mut out, text);
        out
    }

    fn atom_inline(&self, atom: &Atom, depth: usize) -> Inline {
        match atom {
            Atom::Code { content: (s, e), .. } => {
                let raw: String = self.chars[*s..*e].iter().collect();
                let raw = raw.replace('\n', " ");
                // One leading and trailing space is stripped when both are present.
                let inner = raw.strip_prefix(' ').and_then(|r| r.strip_suffix(' ')).filter(|_| raw.len() > 2);
                let code = inner.map_or_else(|| raw.clone(), str::to_string);
                Inline::Code(code)
            }
            Atom::Link { text: (s, e), url, .. } => {
                Inline::Link { children: self.parse(*s, *e, depth + 1), url: url.clone() }
            }
            Atom::Image { alt: (s, e), url, .. } => {
                Inline::Image { alt: plain_of(&self.parse(*s, *e, depth + 1)), url: url.clone() }
            }
            Atom::Auto { url, .. } => Inline::Link { children: vec![Inline::Text(url.clone())], url: url.clone() },
        }
    }
}

/// `<https://…>` (also http, mailto, tg) at `i`: the URL and the index after `>`.
fn autolink_at(chars: &[char], i: usize) -> Option<(String, usize)> {
    let mut url = String::new();
    let mut j = i + 1;
    while j < chars.len() && j - i <= MAX_URL_CHARS {
        let c = chars[j];
        if c == '>' {
            let lower = url.to_ascii_lowercase();
            let ok = ["http://", "https://", "mailto:", "tg://"].iter().any(|p| lower.starts_with(p));
            return ok.then_some((url, j + 1));
        }
        if c.is_whitespace() || c == '<' {
            return None;
        }
        url.push(c);
        j += 1;
    }
    None
}

fn push_text(out: &mut Vec<Inline>, text: String) {
    if text.is_empty() {
        return;
    }
    if let Some(Inline::Text(prev)) = out.last_mut() {
        prev.push_str(&text);
    } else {
        out.push(Inline::Text(text));
    }
}

/// The visible text of an inline tree with all markup dropped (links keep their text only).
pub(crate) fn plain_of(nodes: &[Inline]) -> String {
    let mut out = String::new();
    for node in nodes {
        match node {
            Inline::Text(t) | Inline::Code(t) => out.push_str(t),
            Inline::Strong(c) | Inline::Emph(c) | Inline::Strike(c) => out.push_str(&plain_of(c)),
            Inline::Link { children, url } => {
                let text = plain_of(children);
                out.push_str(if text.is_empty() { url } else { &text });
            }
            Inline::Image { alt, .. } => out.push_str(alt),
        }
    }
    out
}

/// Whether a link target may become a clickable link on a chat platform.
pub(crate) fn is_safe_url(url: &str) -> bool {
    let lower = url.trim().to_ascii_lowercase();
    !lower.chars().any(|c| c.is_control() || c.is_whitespace())
        && ["http://", "https://", "tg://", "mailto:"]
            .iter()
            .any(|p| lower.strip_prefix(p).is_some_and(|rest| !rest.is_empty()))
}

/// Terminal display width: wide East Asian characters and emoji take two cells, combining
/// marks and joiners none. An approximation, good enough to line up table columns.
pub(crate) fn display_width(text: &str) -> usize {
    let mut width = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        // U+FE0F asks for emoji presentation, which is two cells wide.
        width += if chars.peek() == Some(&'\u{FE0F}') { 2 } else { char_width(c) };
    }
    width
}

fn char_width(c: char) -> usize {
    let cp = c as u32;
    if matches!(cp, 0x0300..=0x036F | 0x200B..=0x200F | 0xFE00..=0xFE0F | 0x20E3 | 0x1F3FB..=0x1F3FF) || c.is_control()
    {
        0
    } else if matches!(cp,
        0x1100..=0x115F | 0x2E80..=0x303E | 0x3041..=0x33FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF
        | 0xA000..=0xA4CF | 0xAC00..=0xD7A3 | 0xF900..=0xFAFF | 0xFE30..=0xFE4F | 0xFF00..=0xFF60
        | 0xFFE0..=0xFFE6 | 0x1F000..=0x1FAFF | 0x20000..=0x3FFFD
        | 0x231A..=0x231B | 0x23E9..=0x23EC | 0x23F0 | 0x23F3 | 0x25FD..=0x25FE | 0x2614..=0x2615
        | 0x2648..=0x2653 | 0x267F | 0x2693 | 0x26A1 | 0x26AA..=0x26AB | 0x26BD..=0x26BE
        | 0x26C4..=0x26C5 | 0x26CE | 0x26D4 | 0x26EA | 0x26F2..=0x26F3 | 0x26F5 | 0x26FA | 0x26FD
        | 0x2705 | 0x270A..=0x270B | 0x2728 | 0x274C | 0x274E | 0x2753..=0x2755 | 0x2757
        | 0x2795..=0x2797 | 0x27B0 | 0x27BF | 0x2B1B..=0x2B1C | 0x2B50 | 0x2B55)
    {
        2
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_lines_answers_like_reads_as_fence_line_for_every_cut_in_any_order() {
        let texts = [
            "```rust\nfn main() {}\n```\nafter ``` x\n",
            "  ```` a ``` b\n\t~~~ info\n~~~~~~\n   ``\n``` `x`\n",
            "x ``````````` \u{a0}\n```é\n ~~~`~\n\n```",
            "é  \t ```  \u{2003}\nline `\n  ~~~~ é ~\n",
        ];
        let regions = [
            FenceRegion {
                open_start: 0,
                content_start: 0,
                content_end: 0,
                after_close: 0,
                reopen: "```rust".into(),
                close: "```".into(),
            },
            FenceRegion {
                open_start: 0,
                content_start: 0,
                content_end: 0,
                after_close: 0,
                reopen: "~~~~".into(),
                close: "~~~~".into(),
            },
        ];
        for text in texts {
            let cuts: Vec<usize> = (0..=text.len()).filter(|&i| text.is_char_boundary(i)).collect();
            let line_of = |at: usize| text.get(..at).and_then(|s| s.rfind('\n')).map_or(0, |p| p + 1);
            let forward: Vec<usize> = cuts.clone();
            let backward: Vec<usize> = cuts.iter().rev().copied().collect();
            let shuffled: Vec<usize> = (0..cuts.len()).map(|i| cuts[(i * 7 + 3) % cuts.len()]).collect();
            for order in [forward, backward, shuffled] {
                for inside in [None, Some(&regions[0]), Some(&regions[1])] {
                    let mut lines = FenceLines::new(text);
                    for &cut in &order {
                        let rest = text.get(cut..).unwrap_or_default();
                        assert_eq!(
                            lines.rest_from(cut, inside),
                            reads_as_fence_line(rest, inside),
                            "{text:?} rest at {cut}"
                        );
                        let start = lines.line_start(cut);
                        assert_eq!(start, line_of(cut), "{text:?} line start of {cut}");
                        let head = text.get(start..cut).unwrap_or_default();
                        assert_eq!(
                            lines.part(start, cut, inside),
                            reads_as_fence_line(head, inside),
                            "{text:?} head to {cut}"
                        );
                    }
                }
            }
        }
    }

    fn t(s: &str) -> Inline {
        Inline::Text(s.to_string())
    }

    #[test]
    fn inline_table() {
        use Inline::*;
        let cases: Vec<(&str, Vec<Inline>)> = vec![
            ("plain", vec![t("plain")]),
            ("**b**", vec![Strong(vec![t("b")])]),
            ("__b__", vec![Strong(vec![t("b")])]),
            ("*i* and _i_", vec![Emph(vec![t("i")]), t(" and "), Emph(vec![t("i")])]),
            ("***bi***", vec![Strong(vec![Emph(vec![t("bi")])])]),
            ("~~s~~", vec![Strike(vec![t("s")])]),
            ("~s~", vec![t("~s~")]),
            ("snake_case_name", vec![t("snake_case_name")]),
            ("a * b * c", vec![t("a * b * c")]),
            ("**never closed", vec![t("**never closed")]),
            ("*", vec![t("*")]),
            ("**a *b* c**", vec![Strong(vec![t("a "), Emph(vec![t("b")]), t(" c")])]),
            ("`*x*`", vec![Code("*x*".into())]),
            ("``a ` b``", vec![Code("a ` b".into())]),
            ("` a `", vec![Code("a".into())]),
            ("`unclosed", vec![t("`unclosed")]),
            ("\\*not\\*", vec![t("*not*")]),
            ("*a `*` b*", vec![Emph(vec![t("a "), Code("*".into()), t(" b")])]),
            ("[t](https://x.y/a_(b))", vec![Link { children: vec![t("t")], url: "https://x.y/a_(b)".into() }]),
            ("[t](<https://x y> \"title\")", vec![Link { children: vec![t("t")], url: "https://x y".into() }]),
            ("![alt *x*](http://i.png)", vec![Image { alt: "alt x".into(), url: "http://i.png".into() }]),
            ("[just brackets]", vec![t("[just brackets]")]),
            ("[a](", vec![t("[a](")]),
            ("<https://a.b>", vec![Link { children: vec![t("https://a.b")], url: "https://a.b".into() }]),
            ("<script>", vec![t("<script>")]),
            ("2*3*4", vec![t("2"), Emph(vec![t("3")]), t("4")]),
            ("**bold**text", vec![Strong(vec![t("bold")]), t("text")]),
            ("__init__", vec![Strong(vec![t("init")])]),
            ("a__b__c", vec![t("a__b__c")]),
        ];
        for (input, want) in cases {
            assert_eq!(parse_inlines(input), want, "input {input:?}");
        }
    }

    #[test]
    fn pathological_inline_input_is_fast_and_literal() {
        let input = "**a [b ".repeat(20_000);
        let started = std::time::Instant::now();
        let parsed = parse_inlines(&input);
        assert_eq!(plain_of(&parsed), input);
        let nested = "*a ".repeat(5000) + &"b* ".repeat(5000);
        let parsed = parse_inlines(&nested);
        assert!(!plain_of(&parsed).is_empty());
        let brackets = "[".repeat(10_000) + &"](x)".repeat(10_000);
        let _ = parse_inlines(&brackets);
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    #[test]
    fn fence_open_and_close() {
        let f = FenceOpen::parse("```rust").unwrap();
        assert_eq!((f.ch, f.len, f.info.as_str(), f.language()), ('`', 3, "rust", Some("rust")));
        assert!(f.is_closed_by("```"));
        assert!(f.is_closed_by("  ````  "));
        assert!(!f.is_closed_by("```python"));
        let four = FenceOpen::parse("````md").unwrap();
        assert!(!four.is_closed_by("```"));
        assert!(four.is_closed_by("````"));
        assert_eq!(FenceOpen::parse("``not"), None);
        assert_eq!(FenceOpen::parse("```x```"), None);
        assert_eq!(FenceOpen::parse("~~~ py").unwrap().closer(), "~~~");
        assert_eq!(FenceOpen::parse("```\"><x").unwrap().language(), None);
        assert_eq!(FenceOpen::parse("   ```sh").unwrap().closer(), "   ```");
    }

    #[test]
    fn regions_and_cut_classes() {
        let text = "intro\n```rust\nfn a() {}\nfn b() {}\n```\nafter";
        let regions = fence_regions(text, true);
        assert_eq!(regions.len(), 1);
        let r = &regions[0];
        assert_eq!(&text[r.open_start..r.content_start], "```rust\n");
        assert_eq!(&text[r.content_start..r.content_end], "fn a() {}\nfn b() {}\n");
        assert_eq!(&text[r.content_end..r.after_close], "```");
        let nl_after_a = text.find("{}\n").unwrap() + 2;
        let cases = [
            (5, 6, CutAt::Outside),                                 // before the opener
            (8, 8, CutAt::Invalid),                                 // inside the opener line
            (r.content_start - 1, r.content_start, CutAt::Invalid), // opener's newline
            (nl_after_a, nl_after_a + 1, CutAt::InFence(0)),
            (r.content_end - 1, r.content_end, CutAt::Invalid), // nothing left for next chunk
            (r.content_end + 1, r.content_end + 1, CutAt::Invalid), // inside the closer
            (r.after_close, r.after_close + 1, CutAt::Outside),
        ];
        for (end, next, want) in cases {
            assert_eq!(classify_cut(end, next, &regions), want, "cut {end}/{next}");
        }
        let unclosed = fence_regions("a\n~~~\nx\ny", true);
        assert_eq!(unclosed[0].after_close, usize::MAX);
        assert_eq!(unclosed[0].content_end, 9);
        // A buffer cut mid-line: its first fragment is not a fence line.
        let mid = fence_regions("```rust\nx\n```", false);
        assert_eq!((mid.len(), mid[0].open_start), (1, 10));
        assert!(fence_regions("``` mid-line\nx", false).is_empty());
    }

    #[test]
    fn block_table() {
        let blocks = parse_blocks(
            "# Title #\ntext line\nsecond *line*\n\n- a\n  - b\ncontinued\n1. one\n\n> quote\n> more\n\n---\n| h1 | h2 |\n|:--|--:|\n| x | `a|b` |\n```py\nprint(1)\n```\n- [x] done",
        );
        let kinds: Vec<String> = blocks
            .iter()
            .map(|s| {
                let b = if s.blank_before { "+" } else { "" };
                let k = match &s.block {
                    Block::Paragraph(t) => format!("P({t})"),
                    Block::Heading(t) => format!("H({t})"),
                    Block::Code { lang, text } => format!("C({lang:?},{text})"),
                    Block::ListItem { level, marker, task, text } => {
                        format!("L{level}({marker:?},{task:?},{text})")
                    }
                    Block::Quote(inner) => format!("Q({})", inner.len()),
                    Block::Table(t) => format!("T({:?},{:?},{:?})", t.header, t.aligns, t.rows),
                    Block::Rule => "R".to_string(),
                };
                format!("{b}{k}")
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                "H(Title)",
                "P(text line\nsecond *line*)",
                "+L0(Bullet,None,a)",
                "L1(Bullet,None,b\ncontinued)",
                "L0(Ordered(\"1\"),None,one)",
                "+Q(1)",
                "+R",
                "T([\"h1\", \"h2\"],[Left, Right],[[\"x\", \"`a|b`\"]])",
                "C(Some(\"py\"),print(1))",
                "L0(Bullet,Some(true),done)",
            ]
        );
    }

    #[test]
    fn safe_urls() {
        for (url, ok) in [
            ("https://example.com", true),
            ("http://x", true),
            ("HTTPS://X.COM", true),
            ("tg://user?id=1", true),
            ("mailto:a@b.c", true),
            ("javascript:alert(1)", false),
            ("https://", false),
            ("src/main.rs", false),
            ("https://a b", false),
        ] {
            assert_eq!(is_safe_url(url), ok, "{url}");
        }
    }

    #[test]
    fn widths() {
        assert_eq!(display_width("abc"), 3);
        assert_eq!(display_width("中文"), 4);
        assert_eq!(display_width("😀"), 2);
        assert_eq!(display_width("é"), 1);
        assert_eq!(display_width("e\u{301}"), 1);
        assert_eq!(display_width("✅"), 2);
        assert_eq!(display_width("⚠\u{FE0F}"), 2);
        assert_eq!(display_width("⚠"), 1);
        assert_eq!(display_width("👍🏽"), 2);
    }
}
