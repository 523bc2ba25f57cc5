//! Making agent answers readable on chat platforms: Markdown to Telegram HTML or plain text,
//! and splitting answers into messages that fit each platform's limit. Pure functions, no
//! I/O; adapters call them just before sending.

mod chunk;
mod html;
mod markdown;
mod plain;
mod telegram;

pub use chunk::{
    TELEGRAM_LIMIT, TELEGRAM_RAW_LIMIT, TELEGRAM_TARGET, Units, chunk_markdown, plain_chunks, telegram_chunks,
};
pub use html::{split_html, strip_tags};
pub use plain::plain_text;
pub use telegram::telegram_html;

pub(crate) use markdown::FenceOpen;
pub(crate) use markdown::{CutAt, FenceLines, FenceRegion, classify_cut, fence_regions, normalize_newlines};

#[cfg(test)]
pub(crate) mod tests {
    //! Property tests over generated inputs, and helpers the module tests share.

    use super::*;

    // The strict Telegram HTML check and the text-preservation helpers are shared with the
    // fuzz targets.
    pub use crate::fuzzing::checks::{balanced, content_without_fence_lines, fences_closed as fences_balanced, non_ws};

    /// A small deterministic generator (xorshift), so property tests need no crates.
    pub struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Rng {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }

        pub fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        pub fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    const WORDS: [&str; 30] = [
        "👨\u{200D}👩\u{200D}👧",
        "e\u{301}te\u{301}",
        "tab\there",
        "<script>alert(1)</script>",
        "&amp;",
        "_under_",
        "the",
        "agent",
        "said",
        "hello",
        "**bold**",
        "*it*",
        "`code`",
        "a<b",
        "&&",
        "x>y",
        "😀",
        "👍🏽",
        "中文字",
        "שלום",
        "مرحبا",
        "snake_case",
        "*",
        "**",
        "[link](https://e.com/?q=\"x\")",
        "done.",
        "why?",
        "yes!",
        "句。",
        "~~old~~",
    ];

    /// Markdown-ish text: paragraphs, lists, headings, fences (some four-backtick with inner
    /// ``` lines, some unclosed), tables, quotes and long unbroken runs.
    pub fn generate(rng: &mut Rng, blocks: usize) -> String {
        let mut out = String::new();
        for _ in 0..blocks {
            match rng.below(9) {
                0 => {
                    out.push_str("```rust\n");
                    for _ in 0..rng.below(12) {
                        out.push_str(&"    ".repeat(rng.below(3)));
                        out.push_str(&sentence(rng, 8));
                        out.push('\n');
                        if rng.below(5) == 0 {
                            out.push('\n');
                        }
                    }
                    out.push_str("```\n");
                }
                1 => {
                    out.push_str("````markdown\n```py\nprint(1)\n```\n");
                    out.push_str(&sentence(rng, 20));
                    out.push_str("\n````\n");
                }
                2 => {
                    for i in 0..1 + rng.below(5) {
                        if rng.below(2) == 0 {
                            out.push_str(&format!("{}. {}\n", i + 1, sentence(rng, 10)));
                        } else {
                            out.push_str(&format!("{}- {}\n", "  ".repeat(rng.below(2)), sentence(rng, 10)));
                        }
                    }
                }
                3 => out.push_str(&format!("## {}\n", sentence(rng, 5))),
                4 => {
                    out.push_str("| col | other |\n|---|:-:|\n");
                    for _ in 0..rng.below(4) {
                        out.push_str(&format!("| {} | {} |\n", rng.pick(&WORDS), rng.pick(&WORDS)));
                    }
                }
                5 => out.push_str(&format!("> {}\n> {}\n", sentence(rng, 8), sentence(rng, 8))),
                6 => out.push_str(&"x".repeat(rng.below(300))),
                7 if rng.below(4) == 0 => out.push_str("~~~\nunclosed fence\n"),
                7 => out.push_str(&format!(
                    "- step {}\n   ```sh\n   {}\n   ```\n> > nested {}\r\n",
                    rng.pick(&WORDS),
                    sentence(rng, 6),
                    sentence(rng, 6)
                )),
                _ => out.push_str(&sentence(rng, 60)),
            }
            out.push_str(if rng.below(3) == 0 { "\n" } else { "\n\n" });
        }
        out
    }

    fn sentence(rng: &mut Rng, max_words: usize) -> String {
        let n = 1 + rng.below(max_words);
        (0..n).map(|_| rng.pick(&WORDS)).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn chunk_markdown_properties() {
        check_chunk_markdown(7, 220);
    }

    fn check_chunk_markdown(seed: u64, cases: usize) {
        let mut rng = Rng::new(seed);
        let mut checked = 0;
        for case in 0..cases {
            let md = {
                let blocks = 1 + rng.below(14);
                generate(&mut rng, blocks)
            };
            let md = md.trim_end();
            for (limit, units) in [
                (40 + rng.below(60), Units::Chars),
                (40 + rng.below(200), Units::Utf16),
                (60 + rng.below(400), Units::Bytes),
                (2000, Units::Utf16),
            ] {
                let chunks = chunk_markdown(md, limit, units);
                for chunk in &chunks {
                    assert!(units.len(chunk) <= limit, "case {case}: {units:?} {limit}: {chunk:?}");
                    assert!(!chunk.trim().is_empty(), "case {case}: empty chunk");
                    assert!(fences_balanced(chunk), "case {case} limit {limit}: unbalanced {chunk:?}");
                }
                assert_eq!(
                    content_without_fence_lines(&chunks.join("\n")),
                    content_without_fence_lines(md),
                    "case {case}: text lost at {limit} {units:?}\n{md}\n---\n{chunks:#?}"
                );
                checked += chunks.len();
            }
        }
        assert!(checked > cases * 5, "generator too tame: {checked} chunks");
    }

    #[test]
    fn plain_chunks_properties() {
        check_plain_chunks(11, 150);
    }

    fn check_plain_chunks(seed: u64, cases: usize) {
        let mut rng = Rng::new(seed);
        for case in 0..cases {
            let md = {
                let blocks = 1 + rng.below(10);
                generate(&mut rng, blocks)
            };
            let plain = plain_text(&md);
            for (limit, units) in [(15 + rng.below(50), Units::Chars), (30 + rng.below(100), Units::Bytes)] {
                let chunks = plain_chunks(&md, limit, units);
                for chunk in &chunks {
                    assert!(units.len(chunk) <= limit, "case {case}: {chunk:?}");
                }
                assert_eq!(non_ws(&chunks.concat()), non_ws(&plain), "case {case}");
            }
        }
    }

    fn visible_units(html: &str) -> usize {
        strip_tags(html).encode_utf16().count()
    }

    #[test]
    fn telegram_html_is_well_formed_on_generated_input() {
        check_telegram_html(3, 300);
    }

    fn check_telegram_html(seed: u64, cases: usize) {
        let mut rng = Rng::new(seed);
        for case in 0..cases {
            let md = {
                let blocks = 1 + rng.below(10);
                generate(&mut rng, blocks)
            };
            let html = telegram_html(&md);
            assert!(balanced(&html), "case {case}: {md:?}\n->\n{html}");
        }
    }

    #[test]
    fn split_html_properties() {
        check_split_html(5, 200);
    }

    /// The property checks over more seeds (no `#[ignore]`: it runs with every `cargo test`;
    /// widen the range by hand when changing the chunkers).
    #[test]
    fn soak() {
        for seed in 100..104 {
            check_chunk_markdown(seed, 100);
            check_plain_chunks(seed, 100);
            check_telegram_html(seed, 100);
            check_split_html(seed, 100);
            crate::streamer::tests::check_streams(seed, 100);
        }
    }

    fn check_split_html(seed: u64, cases: usize) {
        let mut rng = Rng::new(seed);
        for case in 0..cases {
            let md = {
                let blocks = 1 + rng.below(12);
                generate(&mut rng, blocks)
            };
            let html = telegram_html(&md);
            let limit = 10 + rng.below(300);
            let raw_limit = 200 + rng.below(600);
            let chunks = split_html(&html, limit, raw_limit);
            for chunk in &chunks {
                assert!(balanced(chunk), "case {case} limit {limit}: {chunk:?}");
                assert!(visible_units(chunk) <= limit, "case {case}: {chunk:?}");
                assert!(chunk.len() <= raw_limit, "case {case}: raw {} > {raw_limit}: {chunk:?}", chunk.len());
                assert!(!strip_tags(chunk).trim().is_empty());
            }
            let joined: String = chunks.iter().map(|c| strip_tags(c)).collect();
            assert_eq!(non_ws(&joined), non_ws(&strip_tags(&html)), "case {case}: text lost");
        }
    }

    #[test]
    fn telegram_chunks_fit_telegram() {
        let mut rng = Rng::new(9);
        for case in 0..12 {
            let md = {
                let blocks = 150 + rng.below(150);
                generate(&mut rng, blocks)
            };
            let chunks = telegram_chunks(&md);
            assert!(chunks.len() > 1, "case {case}: expected several chunks");
            for chunk in &chunks {
                assert!(balanced(chunk), "case {case}");
                assert!(visible_units(chunk) <= TELEGRAM_LIMIT, "case {case}");
                assert!(visible_units(chunk) <= TELEGRAM_TARGET);
                assert!(chunk.len() <= TELEGRAM_RAW_LIMIT);
            }
            let joined: String = chunks.iter().map(|c| strip_tags(c)).collect();
            assert_eq!(non_ws(&joined), non_ws(&strip_tags(&telegram_html(&md))));
        }
    }

    #[test]
    fn telegram_chunk_boundary_is_exact() {
        assert!(telegram_chunks("").is_empty());
        assert!(telegram_chunks("  \n\n ").is_empty());
        assert!(plain_chunks("", 10, Units::Chars).is_empty());
        assert_eq!(chunk_markdown("```\n```", 100, Units::Chars), vec!["```\n```"]);
        let fits = "a".repeat(TELEGRAM_TARGET);
        assert_eq!(telegram_chunks(&fits), vec![fits.clone()]);
        let over = format!("{fits}b");
        let chunks = telegram_chunks(&over);
        assert_eq!(chunks, vec![fits.clone(), "b".to_string()]);
        // Entities count once: 4000 `<` are 4000 visible units in 16000 bytes of HTML.
        let lt = "<".repeat(TELEGRAM_TARGET);
        let chunks = telegram_chunks(&lt);
        assert_eq!(chunks.len(), 1);
        assert_eq!(strip_tags(&chunks[0]), lt);
        // Emoji are two UTF-16 units each.
        let emoji = "😀".repeat(TELEGRAM_TARGET / 2 + 1);
        let chunks = telegram_chunks(&emoji);
        assert_eq!(chunks.len(), 2);
        assert_eq!(visible_units(&chunks[0]), TELEGRAM_TARGET);
    }

    #[test]
    fn large_answers_are_fast() {
        let mut rng = Rng::new(99);
        let md = generate(&mut rng, 3000);
        assert!(md.len() > 300_000, "{}", md.len());
        let started = std::time::Instant::now();
        let chunks = telegram_chunks(&md);
        let md_chunks = chunk_markdown(&md, 2000, Units::Utf16);
        let plain = plain_chunks(&md, 2000, Units::Utf16);
        let elapsed = started.elapsed();
        assert!(chunks.len() > 50 && md_chunks.len() > 50 && plain.len() > 50);
        // Generous for an unoptimised build on a busy machine; quadratic code takes minutes.
        assert!(elapsed < std::time::Duration::from_secs(20), "{elapsed:?}");
    }

    #[test]
    fn telegram_chunks_split_long_code_block_inside_pre() {
        let code: String = (0..600).map(|i| format!("let v{i} = {i} < {};\n", i + 1)).collect();
        let md = format!("Here:\n\n```rust\n{code}```\n\nDone & dusted.");
        let chunks = telegram_chunks(&md);
        assert!(chunks.len() >= 3, "{}", chunks.len());
        for chunk in &chunks[1..chunks.len() - 1] {
            assert!(chunk.starts_with("<pre><code class=\"language-rust\">"), "{chunk:.60}");
            assert!(chunk.ends_with("</code></pre>"));
        }
        // Cuts fall at line ends inside the code.
        for chunk in &chunks[..chunks.len() - 1] {
            assert!(strip_tags(chunk).trim_end().ends_with(';'), "{:?}", &chunk[chunk.len() - 40..]);
        }
        assert!(chunks.last().is_some_and(|c| c.ends_with("Done &amp; dusted.")));
    }

    #[test]
    fn telegram_chunks_escape_heavy_text_respects_raw_bound() {
        let md = "a&b<c>".repeat(4000);
        let chunks = telegram_chunks(&md);
        for chunk in &chunks {
            assert!(chunk.len() <= TELEGRAM_RAW_LIMIT);
            assert!(balanced(chunk));
        }
        let joined: String = chunks.iter().map(|c| strip_tags(c)).collect();
        assert_eq!(joined, md);
    }

    #[test]
    fn no_chunk_starts_or_ends_inside_an_entity() {
        let md = "&&&&&&&&&& <<<<<<<<<< >>>>>>>>>> ".repeat(300);
        for limit in [1, 2, 3, 7, 50, 333] {
            for chunk in split_html(&telegram_html(&md), limit, 100_000) {
                // A cut inside an entity would leave a bare `&` (unbalanced) or its letters.
                assert!(balanced(&chunk), "{chunk:?}");
                assert!(strip_tags(&chunk).chars().all(|c| "&<> ".contains(c)), "{chunk:?}");
                assert!(visible_units(&chunk) <= limit.max(2));
            }
        }
    }
}
