//! Telegram-flavoured HTML text handling: escaping, a tokenizer for the HTML our renderer
//! emits, the plain-text fallback ([`strip_tags`]) and a splitter that cuts rendered HTML into
//! messages by visible length without breaking tags or entities ([`split_html`]).

/// Escapes text for an HTML text node: `&`, `<`, `>`.
pub(crate) fn escape_text(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            _ => out.push(c),
        }
    }
}

/// Escapes text for a double-quoted attribute value.
pub(crate) fn escape_attr(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '"' => out.push_str("&quot;"),
            _ => escape_text(c.encode_utf8(&mut [0; 4]), out),
        }
    }
}

/// One piece of HTML: a tag, or one visible character (written literally or as an entity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token<'a> {
    Open { name: String, raw: &'a str },
    Close { name: String, raw: &'a str },
    Char { ch: char, raw: &'a str },
}

impl<'a> Token<'a> {
    pub fn raw(&self) -> &'a str {
        match self {
            Token::Open { raw, .. } | Token::Close { raw, .. } | Token::Char { raw, .. } => raw,
        }
    }
}

/// Splits HTML into tags and visible characters. A `<` that does not start a tag and an `&`
/// that does not start a known entity are literal characters.
pub(crate) fn tokenize(html: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut rest = html;
    while let Some(ch) = rest.chars().next() {
        let special = match ch {
            '<' => tag_at(rest),
            '&' => entity_at(rest).and_then(|(ch, len)| Some(Token::Char { ch, raw: rest.get(..len)? })),
            _ => None,
        };
        let token = match special {
            Some(token) => token,
            None => Token::Char { ch, raw: rest.split_at_checked(ch.len_utf8()).map_or(rest, |(raw, _)| raw) },
        };
        // Every token's `raw` is a prefix of `rest`, so this never fails; stop rather than loop.
        let Some(after) = rest.get(token.raw().len()..).filter(|_| !token.raw().is_empty()) else { break };
        tokens.push(token);
        rest = after;
    }
    tokens
}

fn tag_at(rest: &str) -> Option<Token<'_>> {
    let (inner, _) = rest.strip_prefix('<')?.split_once('>')?;
    if inner.len() >= 4096 || inner.contains(['<', '\n']) {
        return None;
    }
    let raw = rest.get(..inner.len() + 2)?;
    let (closing, body) = match inner.strip_prefix('/') {
        Some(body) => (true, body),
        None => (false, inner),
    };
    let name: String =
        body.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect::<String>().to_ascii_lowercase();
    if name.is_empty() || !body.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) {
        return None;
    }
    Some(if closing { Token::Close { name, raw } } else { Token::Open { name, raw } })
}

/// Decodes the entity at the start of `rest`: the character and the entity's length.
fn entity_at(rest: &str) -> Option<(char, usize)> {
    let end = rest.bytes().take(12).position(|b| b == b';')?;
    let body = rest.get(1..end)?;
    let ch = match body {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "quot" => '"',
        "apos" => '\'',
        _ => {
            let number = body.strip_prefix('#')?;
            let code = match number.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => number.parse().ok()?,
            };
            char::from_u32(code)?
        }
    };
    Some((ch, end + 1))
}

/// The plain-text fallback for a chunk Telegram refused: tags removed, entities decoded.
pub fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    for token in tokenize(html) {
        if let Token::Char { ch, .. } = token {
            out.push(ch);
        }
    }
    out
}

/// Visible length of a character in UTF-16 units, as Telegram counts.
fn units(ch: char) -> usize {
    ch.len_utf16()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Break {
    Paragraph,
    Line,
    Sentence,
    Word,
}

/// A place to cut: the chunk keeps tokens `[.., end)`, the next starts at `next`.
#[derive(Debug, Clone, Copy)]
struct Cut {
    end: usize,
    next: usize,
}

/// Splits well-formed HTML into pieces of at most `visible_limit` UTF-16 units of visible
/// text and (where possible) `raw_limit` bytes of markup. Cuts prefer a blank line, then a
/// line end, a sentence end, a space; a tag or entity is never cut. Tags open at a cut are
/// closed at the end of the piece and reopened (with their attributes) at the start of the
/// next. Pieces with no visible non-whitespace text are dropped.
pub fn split_html(html: &str, visible_limit: usize, raw_limit: usize) -> Vec<String> {
    // Most answers are a few plain lines: no tag, no entity, within both limits (a byte is
    // at least a UTF-16 unit). They are one piece as they are, as the general way below
    // finds after tokenizing it three times.
    if !html.contains(['<', '&']) && html.len() <= visible_limit.max(2).min(raw_limit) {
        return if html.chars().any(|c| !c.is_whitespace()) { vec![html.to_string()] } else { Vec::new() };
    }
    split_tokens(html, visible_limit, raw_limit)
}

/// [`split_html`] the general way, token by token.
fn split_tokens(html: &str, visible_limit: usize, raw_limit: usize) -> Vec<String> {
    let tokens = tokenize(html);
    let visible_limit = visible_limit.max(2);
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut stack: Vec<usize> = Vec::new(); // indexes of Open tokens in force at `start`
    while start < tokens.len() {
        let hard = hard_end(&tokens, start, &stack, visible_limit, raw_limit);
        let cut = if hard >= tokens.len() {
            Cut { end: tokens.len(), next: tokens.len() }
        } else {
            choose_cut(&tokens, start, hard, &stack, visible_limit)
        };
        let mut chunk = String::new();
        for &open in &stack {
            chunk.push_str(tokens[open].raw());
        }
        let mut open_now = stack.clone();
        for (k, token) in tokens.iter().enumerate().take(cut.end).skip(start) {
            chunk.push_str(token.raw());
            apply(&tokens, k, &mut open_now);
        }
        for &open in open_now.iter().rev() {
            if let Token::Open { name, .. } = &tokens[open] {
                chunk.push_str("</");
                chunk.push_str(name);
                chunk.push('>');
            }
        }
        // Tags inside the dropped separator still change what is open.
        for k in cut.end..cut.next {
            apply(&tokens, k, &mut open_now);
        }
        let chunk = remove_empty_elements(&chunk);
        if strip_tags(&chunk).chars().any(|c| !c.is_whitespace()) {
            chunks.push(chunk);
        }
        stack = open_now;
        start = cut.next;
    }
    chunks
}

fn apply(tokens: &[Token], k: usize, open: &mut Vec<usize>) {
    match &tokens[k] {
        Token::Open { .. } => open.push(k),
        Token::Close { name, .. } => {
            if let Some(pos) =
                open.iter().rposition(|&o| matches!(&tokens[o], Token::Open { name: n, .. } if n == name))
            {
                open.truncate(pos);
            }
        }
        Token::Char { .. } => {}
    }
}

fn close_len(tokens: &[Token], open: &[usize]) -> usize {
    open.iter()
        .map(|&o| match &tokens[o] {
            Token::Open { name, .. } => name.len() + 3,
            _ => 0,
        })
        .sum()
}

/// The first token index at which the piece starting at `start` would exceed a limit.
fn hard_end(tokens: &[Token], start: usize, stack: &[usize], visible: usize, raw: usize) -> usize {
    let mut open = stack.to_vec();
    let mut raw_len: usize = stack.iter().map(|&o| tokens[o].raw().len()).sum();
    let mut vis = 0;
    let mut k = start;
    let mut no_char_yet = true;
    while k < tokens.len() {
        let token = &tokens[k];
        let mut next_open = open.clone();
        apply(tokens, k, &mut next_open);
        let next_raw = raw_len + token.raw().len();
        let next_vis = vis + if let Token::Char { ch, .. } = token { units(*ch) } else { 0 };
        let over = next_vis > visible || next_raw + close_len(tokens, &next_open) > raw;
        // Always take at least one visible character, so the split makes progress.
        if over && !no_char_yet {
            break;
        }
        if matches!(token, Token::Char { .. }) {
            no_char_yet = false;
        }
        open = next_open;
        raw_len = next_raw;
        vis = next_vis;
        k += 1;
    }
    k
}

/// The next token index after `k` holding a visible character, if any before `limit`.
fn next_char(tokens: &[Token], k: usize, limit: usize) -> Option<(usize, char)> {
    (k + 1..limit).find_map(|j| match tokens[j] {
        Token::Char { ch, .. } => Some((j, ch)),
        _ => None,
    })
}

fn choose_cut(tokens: &[Token], start: usize, hard: usize, stack: &[usize], visible_limit: usize) -> Cut {
    // Per token from `start`: inside a `<pre>`? and visible units before it.
    let mut in_pre_at = Vec::with_capacity(hard + 1 - start);
    let mut vis_before = Vec::with_capacity(hard + 1 - start);
    let mut open = stack.to_vec();
    let mut vis = 0;
    for k in start..=hard.min(tokens.len() - 1) {
        in_pre_at.push(open.iter().any(|&o| matches!(&tokens[o], Token::Open { name, .. } if name == "pre")));
        vis_before.push(vis);
        apply(tokens, k, &mut open);
        if let Token::Char { ch, .. } = tokens[k] {
            vis += units(ch);
        }
    }
    vis_before.push(vis);
    let mut best: [Option<Cut>; 4] = [None; 4];
    let mut best_any: [Option<Cut>; 4] = [None; 4];
    let min_vis = visible_limit / 4;
    // Walking backwards, the newline run being crossed: where the text after it starts, and
    // how many newlines it has so far. Tags inside a run belong to the separator.
    let mut run: Option<(usize, usize)> = None;
    // The visible character after the one at k (the next one walking forwards).
    let top = hard.min(tokens.len() - 1);
    let mut after = next_char(tokens, top, tokens.len());
    for k in (start + 1..=top).rev() {
        let Token::Char { ch, .. } = tokens[k] else {
            continue;
        };
        let in_pre = in_pre_at[k - start];
        let found = match ch {
            '\n' => {
                let (next, count) = match run {
                    Some((next, count)) if !in_pre => (next, count + 1),
                    _ => (k + 1, 1),
                };
                run = Some((next, count));
                let kind = if count >= 2 { Break::Paragraph } else { Break::Line };
                Some((kind, Cut { end: k, next }))
            }
            ' ' if !in_pre => Some((Break::Word, Cut { end: k, next: k + 1 })),
            '.' | '!' | '?' => match after {
                Some((j, ' ')) => Some((Break::Sentence, Cut { end: k + 1, next: j + 1 })),
                _ => None,
            },
            '。' | '！' | '？' => Some((Break::Sentence, Cut { end: k + 1, next: k + 1 })),
            _ => None,
        };
        if ch != '\n' {
            run = None;
        }
        after = Some((k, ch));
        let Some((kind, cut)) = found else { continue };
        if cut.end <= start || cut.end > hard {
            continue;
        }
        let slot = kind as usize;
        if best_any[slot].is_none() {
            best_any[slot] = Some(cut);
        }
        if best[slot].is_none() && vis_before[cut.end - start] >= min_vis {
            best[slot] = Some(cut);
        }
    }
    // Structural breaks (blank line, line end) even if early, before mid-line ones.
    let order = [best[0], best[1], best_any[0], best_any[1], best[2], best[3], best_any[2], best_any[3]];
    if let Some(cut) = order.iter().flatten().next() {
        return *cut;
    }
    // Hard cut between two visible characters, not between a character and its joiner.
    let mut end = hard;
    while end > start + 1 {
        let joins = matches!(tokens[end], Token::Char { ch, .. } if is_joiner(ch))
            || matches!(tokens[end - 1], Token::Char { ch: '\u{200D}', .. });
        if !joins {
            break;
        }
        end -= 1;
    }
    // Leave trailing opening tags to the next piece.
    while end > start + 1 && matches!(tokens[end - 1], Token::Open { .. }) {
        end -= 1;
    }
    if !tokens[start..end].iter().any(|t| matches!(t, Token::Char { .. })) {
        end = hard;
    }
    Cut { end, next: end }
}

/// Characters that continue the previous one visually (joiners, variation selectors, skin
/// tones, combining marks): a hard cut never lands right before one.
pub(crate) fn is_joiner(ch: char) -> bool {
    matches!(ch as u32,
        0x200D | 0xFE0E | 0xFE0F | 0x20E3 | 0x1F3FB..=0x1F3FF | 0x0300..=0x036F | 0xE0020..=0xE007F)
}

/// Drops elements that contain nothing (`<b></b>`), which a cut can leave behind.
fn remove_empty_elements(html: &str) -> String {
    let mut out: Vec<Token> = Vec::new();
    for token in tokenize(html) {
        if let Token::Close { name, .. } = &token
            && let Some(Token::Open { name: open, .. }) = out.last()
            && open == name
        {
            out.pop();
            continue;
        }
        out.push(token);
    }
    out.iter().map(Token::raw).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_within_the_limits_splits_as_the_general_way_does() {
        // Many texts near small limits, from an alphabet of one-, two-, three- and four-byte
        // characters (the emoji is two UTF-16 units), spaces, newlines, `>` and quotes.
        let alphabet = ['a', ' ', '\n', '.', '>', '"', 'é', '中', '😀', '\t', 'x'];
        let mut seed = 0x2545_f491_u32;
        let mut texts = vec![String::new(), " ".into(), "\n\n".into(), "echo: paced 5".into()];
        for _ in 0..3000 {
            let mut text = String::new();
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            for k in 0..(seed % 14) {
                text.push(alphabet[((seed >> (k % 24)) as usize + k as usize) % alphabet.len()]);
            }
            texts.push(text);
        }
        let mut fast = 0;
        for text in &texts {
            for (visible, raw) in [(2, 100), (5, 100), (8, 8), (12, 10), (4096, 4096), (0, 0), (1, 3)] {
                let fits = !text.contains(['<', '&']) && text.len() <= visible.max(2).min(raw);
                fast += usize::from(fits);
                assert_eq!(
                    split_html(text, visible, raw),
                    split_tokens(text, visible, raw),
                    "{text:?} at {visible}/{raw}"
                );
            }
        }
        assert!(fast > 5000, "the fast path was taken {fast} times");
    }

    #[test]
    fn strip_tags_table() {
        let cases = [
            ("<b>bold</b> &amp; <i>it</i>", "bold & it"),
            ("a &lt; b &gt; c", "a < b > c"),
            ("<a href=\"https://x?a=1&amp;b=&quot;2&quot;\">link</a>", "link"),
            ("<pre><code class=\"language-rust\">fn x() -&gt; u8 {}</code></pre>", "fn x() -> u8 {}"),
            ("&#128512; &#x1F600;", "😀 😀"),
            ("stray & and &bogus; and < 3", "stray & and &bogus; and < 3"),
            ("", ""),
        ];
        for (html, want) in cases {
            assert_eq!(strip_tags(html), want, "{html:?}");
        }
    }

    #[test]
    fn escaping() {
        let mut s = String::new();
        escape_text("<script>alert(1)</script> & \"q\"", &mut s);
        assert_eq!(s, "&lt;script&gt;alert(1)&lt;/script&gt; &amp; \"q\"");
        let mut a = String::new();
        escape_attr("https://x/?q=\"a\"&b<c>", &mut a);
        assert_eq!(a, "https://x/?q=&quot;a&quot;&amp;b&lt;c&gt;");
    }

    #[test]
    fn split_small_cases() {
        let cases: &[(&str, usize, &[&str])] = &[
            ("short", 10, &["short"]),
            ("one two three", 8, &["one two", "three"]),
            ("<b>one two three</b>", 8, &["<b>one two</b>", "<b>three</b>"]),
            ("para one\n\npara two", 12, &["para one", "para two"]),
            ("First. Second one.", 12, &["First.", "Second one."]),
            ("a &amp; b &amp; c", 5, &["a &amp; b", "&amp; c"]),
            ("abcdefgh", 3, &["abc", "def", "gh"]),
            (
                "<pre><code class=\"language-rust\">l1\nl2\nl3</code></pre>",
                5,
                &[
                    "<pre><code class=\"language-rust\">l1\nl2</code></pre>",
                    "<pre><code class=\"language-rust\">l3</code></pre>",
                ],
            ),
            ("<a href=\"https://x\">aa bb</a>", 3, &["<a href=\"https://x\">aa</a>", "<a href=\"https://x\">bb</a>"]),
            ("x\n\n<b>y</b>", 1, &["x", "<b>y</b>"]),
            ("😀😀😀", 4, &["😀😀", "😀"]),
        ];
        for (html, limit, want) in cases {
            assert_eq!(split_html(html, *limit, 10_000), *want, "{html:?} at {limit}");
        }
    }

    #[test]
    fn split_respects_raw_limit() {
        let html = "&amp;".repeat(100);
        let chunks = split_html(&html, 4096, 52);
        assert!(chunks.iter().all(|c| c.len() <= 52), "{chunks:?}");
        assert_eq!(chunks.concat(), html);
    }
}
