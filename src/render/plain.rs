//! Agent Markdown to plain text for platforms without formatting (WeChat): code fences
//! unwrapped, emphasis markers removed, headings unmarked, links as `text (url)`, images as
//! `[alt]`, list markers normalised, runs of blank lines collapsed (reference spec §6.3).

use super::markdown::{Block, Inline, Marker, Spaced, Table, join_blocks, parse_blocks, parse_inlines};
use super::telegram::RULE;

/// Converts agent Markdown to readable plain text.
pub fn plain_text(markdown: &str) -> String {
    let mut out = String::new();
    render_blocks(&parse_blocks(markdown), &mut out);
    collapse_blank_lines(&out)
}

fn render_blocks(blocks: &[Spaced], out: &mut String) {
    join_blocks(blocks, out, render_block);
}

fn render_block(block: &Block) -> String {
    match block {
        Block::Paragraph(text) | Block::Heading(text) => inline_plain(&parse_inlines(text)),
        Block::Code { text, .. } => {
            if text.trim().is_empty() {
                String::new()
            } else {
                text.clone()
            }
        }
        Block::ListItem { level, marker, task, text } => {
            let indent = "  ".repeat((*level).min(8));
            let mut bullet = match marker {
                Marker::Bullet => "•".to_string(),
                Marker::Ordered(n) => format!("{n}."),
            };
            match task {
                Some(true) => bullet.push_str(" [x]"),
                Some(false) => bullet.push_str(" [ ]"),
                None => {}
            }
            let hang = format!("\n{indent}{}", " ".repeat(bullet.chars().count() + 1));
            let body = inline_plain(&parse_inlines(text)).replace('\n', &hang);
            format!("{indent}{bullet} {body}")
        }
        Block::Quote(inner) => {
            let mut body = String::new();
            render_blocks(inner, &mut body);
            body.lines()
                .map(|line| if line.is_empty() { ">".to_string() } else { format!("> {line}") })
                .collect::<Vec<_>>()
                .join("\n")
        }
        Block::Table(table) => table_lines(table),
        Block::Rule => RULE.to_string(),
    }
}

/// Proportional fonts defeat column alignment, so rows are cells joined by ` | `.
fn table_lines(table: &Table) -> String {
    let row = |cells: &[String]| {
        cells.iter().map(|c| inline_plain(&parse_inlines(c)).replace('\n', " ")).collect::<Vec<_>>().join(" | ")
    };
    std::iter::once(row(&table.header)).chain(table.rows.iter().map(|r| row(r))).collect::<Vec<_>>().join("\n")
}

fn inline_plain(nodes: &[Inline]) -> String {
    let mut out = String::new();
    for node in nodes {
        match node {
            Inline::Text(t) | Inline::Code(t) => out.push_str(t),
            Inline::Strong(c) | Inline::Emph(c) | Inline::Strike(c) => {
                out.push_str(&inline_plain(c));
            }
            Inline::Link { children, url } => {
                let text = inline_plain(children);
                let url = url.trim();
                if text.trim().is_empty() || text == url || url.is_empty() {
                    out.push_str(if url.is_empty() { &text } else { url });
                } else {
                    out.push_str(&format!("{text} ({url})"));
                }
            }
            Inline::Image { alt, .. } => {
                let alt = alt.trim();
                out.push_str(&format!("[{}]", if alt.is_empty() { "image" } else { alt }));
            }
        }
    }
    out
}

/// At most one blank line in a row; whitespace-only lines count as blank; ends trimmed.
fn collapse_blank_lines(text: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut blank_run = 0;
    for line in text.split('\n') {
        let line = line.trim_end();
        if line.is_empty() {
            blank_run += 1;
            if blank_run > 1 {
                continue;
            }
        } else {
            blank_run = 0;
        }
        out.push(line);
    }
    out.join("\n").trim_matches('\n').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden() {
        let cases: &[(&str, &str)] = &[
            ("", ""),
            ("# Title\n\nSome **bold** and *it* and ~~s~~.", "Title\n\nSome bold and it and s."),
            ("```rust\nfn main() {}\n```", "fn main() {}"),
            ("````md\n```inner```\n```\n````", "```inner```\n```"),
            ("[docs](https://d.rs) and <https://a.b>", "docs (https://d.rs) and https://a.b"),
            ("[https://x.y](https://x.y)", "https://x.y"),
            ("![a cat](https://c/cat.png) ![](x.png)", "[a cat] [image]"),
            ("* one\n+ two\n- three\n  - sub", "• one\n• two\n• three\n  • sub"),
            ("1) first\n2. second", "1. first\n2. second"),
            ("- [ ] todo\n- [x] done", "• [ ] todo\n• [x] done"),
            ("a\n\n\n\n\nb", "a\n\nb"),
            ("```\nx\n\n\n\ny\n```", "x\n\ny"),
            ("> quoted *text*\n>\n> more", "> quoted text\n>\n> more"),
            ("---", "──────────"),
            ("| a | b |\n|---|---|\n| **1** | 2 |", "a | b\n1 | 2"),
            ("use `snake_case` and snake_case", "use snake_case and snake_case"),
            ("<script>alert(1)</script> a < b && c > d", "<script>alert(1)</script> a < b && c > d"),
            ("unbalanced **bold and *it", "unbalanced **bold and *it"),
            ("emoji 😀 and עברית **bold**", "emoji 😀 and עברית bold"),
            ("\\*escaped\\*", "*escaped*"),
        ];
        for (md, want) in cases {
            assert_eq!(plain_text(md), *want, "markdown {md:?}");
        }
    }
}
