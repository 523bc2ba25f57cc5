//! Agent Markdown to Telegram HTML (`parse_mode: "HTML"`), using only the tags Telegram
//! accepts. Output is well-formed by construction: it is printed from a parsed tree, and
//! everything that is not markup is escaped.

use super::html::{escape_attr, escape_text};
use super::markdown::{
    Align, Block, Inline, Marker, Spaced, Table, display_width, is_safe_url, join_blocks, parse_blocks, parse_inlines,
    plain_of,
};

/// What a horizontal rule becomes.
pub(crate) const RULE: &str = "──────────";

/// Converts agent Markdown to Telegram HTML. Headings become bold lines, lists get `•`
/// bullets, tables become aligned `<pre>` blocks, links only for http(s)/tg/mailto targets.
pub fn telegram_html(markdown: &str) -> String {
    if let Some(line) = plain_line(markdown) {
        return line.to_string();
    }
    let mut out = String::new();
    render_blocks(&parse_blocks(markdown), &mut out);
    out.trim().to_string()
}

/// Most chat answers are a line of words, which Markdown and HTML leave as they are; such a
/// line is its own HTML, trimmed, without the parse (a fifth of what a short answer cost
/// the daemon, measured with `bench/callgrind.sh`). Words, spaces and punctuation that no
/// construct begins with; the first character a letter, so no list, heading or quote.
/// The test `plain_lines_render_as_the_parser_would` holds it to the full path.
fn plain_line(markdown: &str) -> Option<&str> {
    let line = markdown.trim();
    let first = line.chars().next()?;
    let plain =
        |c: char| c.is_alphanumeric() || matches!(c, ' ' | ',' | '.' | ':' | ';' | '?' | '!' | '\'' | '"' | '(' | ')');
    (first.is_alphabetic() && line.chars().all(plain)).then_some(line)
}

fn render_blocks(blocks: &[Spaced], out: &mut String) {
    join_blocks(blocks, out, |block| {
        let mut piece = String::new();
        render_block(block, &mut piece);
        piece
    });
}

fn render_block(block: &Block, out: &mut String) {
    match block {
        Block::Paragraph(text) => inline_html(&parse_inlines(text), Ctx::default(), out),
        Block::Heading(text) => {
            let nodes = parse_inlines(text);
            if !nodes.is_empty() {
                out.push_str("<b>");
                inline_html(&nodes, Ctx { bold: true, ..Ctx::default() }, out);
                out.push_str("</b>");
            }
        }
        Block::Code { lang, text } => {
            if text.trim().is_empty() {
                return;
            }
            match lang {
                Some(lang) => {
                    out.push_str("<pre><code class=\"language-");
                    escape_attr(lang, out);
                    out.push_str("\">");
                    escape_text(text, out);
                    out.push_str("</code></pre>");
                }
                None => {
                    out.push_str("<pre>");
                    escape_text(text, out);
                    out.push_str("</pre>");
                }
            }
        }
        Block::ListItem { level, marker, task, text } => {
            let indent = "  ".repeat((*level).min(8));
            let bullet = match (marker, task) {
                (Marker::Bullet, Some(true)) => "☑".to_string(),
                (Marker::Bullet, Some(false)) => "☐".to_string(),
                (Marker::Bullet, None) if *level == 0 => "•".to_string(),
                (Marker::Bullet, None) => "◦".to_string(),
                (Marker::Ordered(n), Some(true)) => format!("{n}. ☑"),
                (Marker::Ordered(n), Some(false)) => format!("{n}. ☐"),
                (Marker::Ordered(n), None) => format!("{n}."),
            };
            let mut body = String::new();
            inline_html(&parse_inlines(text), Ctx::default(), &mut body);
            let hang = format!("\n{indent}{}", " ".repeat(bullet.chars().count() + 1));
            out.push_str(&indent);
            out.push_str(&bullet);
            out.push(' ');
            // Safe on HTML: our tags and attributes never contain a newline.
            out.push_str(&body.replace('\n', &hang));
        }
        Block::Quote(inner) => render_quote(inner, out),
        Block::Table(table) => {
            out.push_str("<pre>");
            escape_text(&table_grid(table), out);
            out.push_str("</pre>");
        }
        Block::Rule => out.push_str(RULE),
    }
}

/// Telegram cannot nest block quotes or put `<pre>` in one: nested quotes are flattened, and
/// code blocks and tables interrupt the quote.
fn render_quote(inner: &[Spaced], out: &mut String) {
    let mut flat = Vec::new();
    flatten_quotes(inner, &mut flat);
    let mut pieces: Vec<String> = Vec::new();
    let mut group: Vec<Spaced> = Vec::new();
    let flush = |group: &mut Vec<Spaced>, pieces: &mut Vec<String>| {
        let mut body = String::new();
        render_blocks(group, &mut body);
        if !body.is_empty() {
            pieces.push(format!("<blockquote>{body}</blockquote>"));
        }
        group.clear();
    };
    for spaced in flat {
        if matches!(spaced.block, Block::Code { .. } | Block::Table(_)) {
            flush(&mut group, &mut pieces);
            let mut piece = String::new();
            render_block(&spaced.block, &mut piece);
            if !piece.is_empty() {
                pieces.push(piece);
            }
        } else {
            group.push(spaced);
        }
    }
    flush(&mut group, &mut pieces);
    out.push_str(&pieces.join("\n"));
}

fn flatten_quotes(blocks: &[Spaced], out: &mut Vec<Spaced>) {
    for spaced in blocks {
        match &spaced.block {
            Block::Quote(inner) => flatten_quotes(inner, out),
            _ => out.push(spaced.clone()),
        }
    }
}

/// The formatting already in force, so nested Markdown does not nest identical tags, and
/// links never nest in links.
#[derive(Debug, Clone, Copy, Default)]
struct Ctx {
    bold: bool,
    italic: bool,
    strike: bool,
    link: bool,
}

fn wrap(tag: &str, active: bool, nodes: &[Inline], ctx: Ctx, out: &mut String) {
    if !active {
        out.push('<');
        out.push_str(tag);
        out.push('>');
    }
    inline_html(nodes, ctx, out);
    if !active {
        out.push_str("</");
        out.push_str(tag);
        out.push('>');
    }
}

fn inline_html(nodes: &[Inline], ctx: Ctx, out: &mut String) {
    for node in nodes {
        match node {
            Inline::Text(text) => escape_text(text, out),
            Inline::Code(code) => {
                if ctx.link {
                    escape_text(code, out);
                } else {
                    out.push_str("<code>");
                    escape_text(code, out);
                    out.push_str("</code>");
                }
            }
            Inline::Strong(children) => {
                wrap("b", ctx.bold, children, Ctx { bold: true, ..ctx }, out);
            }
            Inline::Emph(children) => {
                wrap("i", ctx.italic, children, Ctx { italic: true, ..ctx }, out);
            }
            Inline::Strike(children) => {
                wrap("s", ctx.strike, children, Ctx { strike: true, ..ctx }, out);
            }
            Inline::Link { children, url } => {
                let shown: &[Inline] = if plain_of(children).trim().is_empty() { &[] } else { children };
                if ctx.link || !is_safe_url(url) {
                    if shown.is_empty() {
                        escape_text(url, out);
                    } else {
                        inline_html(shown, ctx, out);
                    }
                    continue;
                }
                out.push_str("<a href=\"");
                escape_attr(url.trim(), out);
                out.push_str("\">");
                if shown.is_empty() {
                    escape_text(url, out);
                } else {
                    inline_html(shown, Ctx { link: true, ..ctx }, out);
                }
                out.push_str("</a>");
            }
            Inline::Image { alt, url } => {
                let label = if alt.trim().is_empty() { "image" } else { alt.as_str() };
                if ctx.link || !is_safe_url(url) {
                    escape_text(label, out);
                } else {
                    out.push_str("<a href=\"");
                    escape_attr(url.trim(), out);
                    out.push_str("\">");
                    escape_text(label, out);
                    out.push_str("</a>");
                }
            }
        }
    }
}

/// A table as aligned monospace text: header, a rule, rows.
pub(crate) fn table_grid(table: &Table) -> String {
    let text = |cell: &String| plain_of(&parse_inlines(cell)).replace('\n', " ");
    let header: Vec<String> = table.header.iter().map(text).collect();
    let rows: Vec<Vec<String>> = table.rows.iter().map(|r| r.iter().map(text).collect()).collect();
    let columns = header.len();
    let mut widths = vec![0usize; columns];
    for row in std::iter::once(&header).chain(rows.iter()) {
        for (col, cell) in row.iter().enumerate().take(columns) {
            widths[col] = widths[col].max(display_width(cell));
        }
    }
    let line = |row: &[String]| -> String {
        let mut s = String::new();
        for (col, width) in widths.iter().enumerate() {
            let cell = row.get(col).map_or("", String::as_str);
            let gap = width.saturating_sub(display_width(cell));
            let (left, right) = match table.aligns.get(col).copied().unwrap_or(Align::Left) {
                Align::Left => (0, gap),
                Align::Right => (gap, 0),
                Align::Center => (gap / 2, gap - gap / 2),
            };
            if col > 0 {
                s.push_str(" │ ");
            }
            s.push_str(&" ".repeat(left));
            s.push_str(cell);
            s.push_str(&" ".repeat(right));
        }
        s.trim_end().to_string()
    };
    let mut out = vec![line(&header)];
    out.push(widths.iter().map(|w| "─".repeat(*w)).collect::<Vec<_>>().join("─┼─"));
    out.extend(rows.iter().map(|r| line(r)));
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The full path: what [`telegram_html`] does for text that is not a plain line.
    fn parsed(markdown: &str) -> String {
        let mut out = String::new();
        render_blocks(&parse_blocks(markdown), &mut out);
        out.trim().to_string()
    }

    #[test]
    fn plain_lines_render_as_the_parser_would() {
        let table: &[(&str, bool)] = &[
            ("echo: user 3 message 2", true),
            ("  Done. The tests pass!  ", true),
            ("Ça marche (presque); d'accord?", true),
            ("你好，世界", false), // The full-width comma is not in the list.
            ("答案是 42", true),
            ("1. first", false),
            ("# title", false),
            ("- item", false),
            ("a *b*", false),
            ("a_b_c", false),
            ("x <b>", false),
            ("x & y", false),
            ("two\nlines", false),
            ("see www.example.com", true),
            ("", false),
        ];
        for (text, plain) in table {
            assert_eq!(plain_line(text).is_some(), *plain, "{text:?}");
            assert_eq!(telegram_html(text), parsed(text), "{text:?}");
        }
        // Lines of the shortcut's characters, half of them with one other character put in:
        // every one the shortcut takes renders as the parser renders it.
        let plain: Vec<char> = "aZé9 ,.:;?!'\"()".chars().collect();
        let other: Vec<char> = "_*`~[]<>&#-+|\\\n\t=/0\u{a0}".chars().collect();
        let mut seed = 0x2545_f491_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut taken = 0;
        for _ in 0..20_000 {
            let length = next() % 12;
            let mut text: Vec<char> = (0..length).map(|_| plain[(next() % plain.len() as u64) as usize]).collect();
            if length > 0 && next() % 2 == 0 {
                text[(next() % length) as usize] = other[(next() % other.len() as u64) as usize];
            }
            let text: String = text.into_iter().collect();
            if plain_line(&text).is_some() {
                taken += 1;
            }
            assert_eq!(telegram_html(&text), parsed(&text), "{text:?}");
        }
        assert!(taken > 2_000, "the generator rarely made a plain line: {taken}");
    }

    #[test]
    fn golden() {
        let cases: &[(&str, &str)] = &[
            ("", ""),
            ("plain text", "plain text"),
            ("**bold** and __bold__", "<b>bold</b> and <b>bold</b>"),
            ("*it* and _it_", "<i>it</i> and <i>it</i>"),
            ("***both***", "<b><i>both</i></b>"),
            ("~~gone~~", "<s>gone</s>"),
            ("use snake_case_names here", "use snake_case_names here"),
            ("a * b = c", "a * b = c"),
            ("lone * star and **never closed", "lone * star and **never closed"),
            ("**bold *nested* bold**", "<b>bold <i>nested</i> bold</b>"),
            ("**outer **inner** x**", "<b>outer inner x</b>"),
            ("*a *b* c*", "<i>a b c</i>"),
            ("*a **b* c**", "<i>a **b</i> c**"),
            ("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"),
            ("a < b && c > d", "a &lt; b &amp;&amp; c &gt; d"),
            ("`a < b` and `x`", "<code>a &lt; b</code> and <code>x</code>"),
            ("``code with ` tick``", "<code>code with ` tick</code>"),
            ("# Title", "<b>Title</b>"),
            ("## **Bold** title ##", "<b>Bold title</b>"),
            ("#hashtag", "#hashtag"),
            ("[site](https://example.com)", "<a href=\"https://example.com\">site</a>"),
            ("[q](https://x.com/?a=\"b\"&c=<d>)", "<a href=\"https://x.com/?a=&quot;b&quot;&amp;c=&lt;d&gt;\">q</a>"),
            ("[bad](javascript:alert(1))", "bad"),
            ("[file](src/main.rs)", "file"),
            ("[**b** `c`](http://x)", "<a href=\"http://x\"><b>b</b> c</a>"),
            ("[](https://e.com)", "<a href=\"https://e.com\">https://e.com</a>"),
            ("<https://auto.link>", "<a href=\"https://auto.link\">https://auto.link</a>"),
            ("![logo](https://x/l.png)", "<a href=\"https://x/l.png\">logo</a>"),
            ("[![b](https://i)](https://t)", "<a href=\"https://t\">b</a>"),
            ("tg [me](tg://user?id=1)", "tg <a href=\"tg://user?id=1\">me</a>"),
            ("- one\n- two\n  - sub\n* three", "• one\n• two\n  ◦ sub\n• three"),
            ("1. first\n2. second", "1. first\n2. second"),
            ("- [ ] todo\n- [x] done", "☐ todo\n☑ done"),
            ("- item\n  wrapped *line*", "• item\n  wrapped <i>line</i>"),
            ("> quoted **text**\n> more", "<blockquote>quoted <b>text</b>\nmore</blockquote>"),
            ("> outer\n> > inner", "<blockquote>outer\ninner</blockquote>"),
            (
                "> before\n> ```\n> code\n> ```\n> after",
                "<blockquote>before</blockquote>\n<pre>code</pre>\n<blockquote>after</blockquote>",
            ),
            ("a\n\n---\n\nb", "a\n\n──────────\n\nb"),
            ("para one\nline two\n\n\n\npara two", "para one\nline two\n\npara two"),
            (
                "```rust\nfn main() { println!(\"<hi> & bye\"); }\n```",
                "<pre><code class=\"language-rust\">fn main() { println!(\"&lt;hi&gt; &amp; bye\"); }</code></pre>",
            ),
            ("```\nno lang\n```", "<pre>no lang</pre>"),
            ("~~~python\nx = 1\n~~~", "<pre><code class=\"language-python\">x = 1</code></pre>"),
            (
                "````markdown\n```rust\ninner\n```\n````",
                "<pre><code class=\"language-markdown\">```rust\ninner\n```</code></pre>",
            ),
            ("```\nunclosed *fence*\nstill code", "<pre>unclosed *fence*\nstill code</pre>"),
            ("```\"><script>\nx\n```", "<pre>x</pre>"),
            ("text\n```sh\nls\n```\nafter", "text\n<pre><code class=\"language-sh\">ls</code></pre>\nafter"),
            ("- step\n   ```sh\n   make\n   ```", "• step\n<pre><code class=\"language-sh\">make</code></pre>"),
            (
                "| Name | Qty |\n|------|----:|\n| apple | 3 |\n| kiwi & fig | 12 |",
                "<pre>Name       │ Qty\n───────────┼────\napple      │   3\nkiwi &amp; fig │  12</pre>",
            ),
            ("emoji 😀 **ok** 👍🏽", "emoji 😀 <b>ok</b> 👍🏽"),
            ("שלום **עולם** مرحبا", "שלום <b>עולם</b> مرحبا"),
            ("中文**粗体**文字", "中文<b>粗体</b>文字"),
            ("\\*not italic\\*", "*not italic*"),
            ("2 * 3 * 4", "2 * 3 * 4"),
            ("**", "**"),
            ("*a\n\nb*", "*a\n\nb*"),
            ("line with trailing spaces  \nnext", "line with trailing spaces\nnext"),
        ];
        for (md, want) in cases {
            assert_eq!(telegram_html(md), *want, "markdown {md:?}");
        }
    }

    #[test]
    fn table_alignment_and_wide_chars() {
        let md = "| a | b | c |\n|:-:|:--|--:|\n| 中文 | x | 1 |\n| l | longer | 100 |";
        let want = "<pre> a   │ b      │   c\n─────┼────────┼────\n中文 │ x      │   1\n l   │ longer │ 100</pre>";
        assert_eq!(telegram_html(md), want);
    }

    #[test]
    fn output_is_always_well_formed() {
        let nasty = [
            "**a *b** c*",
            "*a **b* c**",
            "[**x](http://y)**",
            "__a **b__ c**",
            "~~a **b~~ c**",
            "`a **b` c**",
            "[a](http://x \"t\") **[b](http://y)**",
            "> **quote\n\nnot** quote",
            "# **h\ntext**",
            "- **item\n- other**",
            "<b>raw</b> &amp; &lt;",
            "*_*_*_*_",
            "[[[[x]]]](http://a)",
        ];
        for md in nasty {
            let html = telegram_html(md);
            assert!(crate::render::tests::balanced(&html), "{md:?} -> {html:?}");
        }
    }
}
