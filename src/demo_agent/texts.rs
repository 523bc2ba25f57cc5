//! The demo agent's canned texts: the chat help, the joke, and the `long` and `huge` answers
//! (shaped to exercise a bridge's message splitting). Pure.

use super::script::HUGE_CHARS;

/// What `/help` answers in the chat.
pub const CHAT_HELP: &str = "I am tether's demo agent: I echo what you write. \
Words in a prompt change what I do: slow (or slow=MS), long, empty, error, refuse, maxtokens, \
permission, tools, ext, huge, hang; crash (alone: it stops me, and the retry is answered). \
Commands: /words, /summary, /joke.";

pub const JOKE: &str = "Why do programmers mix up Halloween and Christmas? Because Oct 31 == Dec 25.";

/// The `huge` answer: exactly [`HUGE_CHARS`] ASCII characters, no newline.
pub fn huge_answer() -> String {
    const PATTERN: &str = "0123456789abcdefghijklmnopqrstuvwxyz";
    PATTERN.chars().cycle().take(HUGE_CHARS).collect()
}

const LONG_PROSE: [&str; 8] = [
    "This is the **long** answer of tether's demo agent. It exists so that chat adapters can be \
tested with a reply that is far longer than one platform message: Telegram stops at 4096 \
characters, other platforms at less, and a good bridge splits such a reply without breaking \
words, Markdown emphasis or, worst of all, fenced code blocks. The text below mixes prose \
paragraphs, a short list and two `rust` code blocks, and the first block alone is longer than \
4096 characters, so no split can keep it whole.",
    "Some things a splitter should get right:\n\n\
- cut between paragraphs when it can, and between lines when it must;\n\
- close an open code fence at the end of a part and reopen it, with its language, at the start \
of the next part;\n\
- never cut inside a multi-byte character, an entity or an inline `code span`;\n\
- keep the parts in order, even when the platform is slow to accept them.",
    "The first block is a lookup table written out in full. Real agents produce code like this \
when asked to generate data, and it is exactly the kind of block that does not fit in one \
message. Read it as a test pattern rather than as good Rust: a `const` array would be shorter.",
    "The second block is shorter and ordinary. It is here so that a reply holds more than one \
fenced block and a splitter that only handles the first one gets caught. After it comes one \
more paragraph of prose, so the reply does not end inside a code block either.",
    "Chat platforms disagree about Markdown. Telegram wants its own *MarkdownV2* dialect or \
HTML with a short list of tags, Discord renders most of CommonMark but not tables, Slack speaks \
*mrkdwn* where a single asterisk means bold, and some platforms render nothing at all. A bridge \
therefore converts the agent's CommonMark into each platform's dialect, and it must do that \
after splitting, part by part, because an entity or a tag cut in half is rejected by the \
platform's API with an error that is easy to miss in a log.",
    "Streaming adds a second problem. The agent sends its answer in small chunks, as the model \
produces it, and a bridge that edits one message in place to show progress has to decide how \
often to edit (platforms rate-limit edits), when a message is full and a new one must start, \
and what to do when the turn is cancelled halfway through a code block. The demo agent makes \
these cases easy to reproduce: add the word `slow` to pace the chunks, and cancel the turn while \
it streams.",
    "A checklist for reviewing the parts of this answer:\n\n\
1. The heading at the top is rendered as a heading, or at least as bold text.\n\
2. The bulleted list above keeps its four items and their inline code.\n\
3. Each part of the first code block starts with a fence that names the language `rust`.\n\
4. No part ends with an unclosed fence, and no part starts with a stray closing one.\n\
5. The second code block arrives whole, since it is short.\n\
6. The parts arrive in order and nothing is repeated or lost between them.",
    "That is the end of the long answer. If you are reading this in a chat app, scroll up: every \
part should render on its own, with no stray backticks and no code shown as prose. The demo \
agent streamed this text in many small chunks, cut at fixed character counts without regard \
for words or lines, so the bridge also had to join the stream back together before splitting \
it for the platform. Send `/help` to see the other words that script the demo agent.",
];

/// The second, ordinary code block of the `long` answer.
const SECOND_BLOCK: &str = r#"/// Running totals of the squares, kept as the table is read.
#[derive(Debug, Default)]
struct Totals {
    count: u32,
    sum: u64,
    largest: Option<u32>,
}

impl Totals {
    fn add(&mut self, square: u32) {
        self.count += 1;
        self.sum += u64::from(square);
        self.largest = self.largest.max(Some(square));
    }
}

fn main() {
    let mut totals = Totals::default();
    for n in [3, 7, 200] {
        match square(n) {
            Some(s) => {
                println!("{n} squared is {s}");
                totals.add(s);
            }
            None => println!("{n} is not in the table"),
        }
    }
    println!("{} squares, sum {}, largest {:?}", totals.count, totals.sum, totals.largest);
}
"#;

/// The `long` answer: about 9000 characters of Markdown with two fenced `rust` blocks, the
/// first one longer than 4096 characters.
pub fn long_answer() -> String {
    let mut text = String::with_capacity(10_000);
    text.push_str("# A long demo answer\n\n");
    text.push_str(LONG_PROSE[0]);
    text.push_str("\n\n");
    text.push_str(LONG_PROSE[1]);
    text.push_str("\n\n");
    text.push_str(LONG_PROSE[2]);
    text.push_str("\n\n```rust\n");
    text.push_str("/// The square of `n` for small `n`, spelled out as a table.\n");
    text.push_str("pub fn square(n: u32) -> Option<u32> {\n    match n {\n");
    for n in 0..112u32 {
        text.push_str(&format!("        {n} => Some({}), // {n} squared\n", n * n));
    }
    text.push_str("        _ => None,\n    }\n}\n```\n\n");
    text.push_str(LONG_PROSE[3]);
    text.push_str("\n\n```rust\n");
    text.push_str(SECOND_BLOCK);
    text.push_str("```\n\n");
    for paragraph in &LONG_PROSE[4..] {
        text.push_str(paragraph);
        text.push_str("\n\n");
    }
    text.truncate(text.trim_end().len());
    text.push('\n');
    text
}
