//! Replies people can read, end to end over the honest fake Bot API: Markdown arrives as
//! Telegram HTML, long answers as several valid messages with code blocks intact, refused
//! HTML as plain text, and rate limits and failing chats neither reorder nor stall replies.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::fake_telegram::{FakeTelegram, Fault, Sent, TEXT_LIMIT, TOKEN};
use crate::support::{Service, TempDir, demo_agent};

const WAIT: Duration = Duration::from_secs(30);

fn start(label: &str, fake: &FakeTelegram) -> (TempDir, Service) {
    let home = TempDir::new(label);
    home.write_config(&json!({
        "agent": demo_agent(),
        "channels": {"phone": {
            "type": "telegram",
            "token": TOKEN,
            "apiBase": fake.url(),
            "senderPolicy": "allowlist",
            "allowedUsers": ["111", "222"],
        }}
    }));
    let service = Service::start(&home, &[]);
    (home, service)
}

fn visible(sent: &[Sent]) -> Vec<&str> {
    sent.iter().map(|s| s.visible.as_str()).collect()
}

/// The byte ranges of `<pre>` … `</pre>` in `html`; panics on a `<pre>` left open.
fn pre_regions(html: &str) -> Vec<(usize, usize)> {
    let mut regions = Vec::new();
    let mut from = 0;
    while let Some(start) = html[from..].find("<pre>").map(|i| i + from) {
        let end = html[start..].find("</pre>").map(|i| i + start).expect("a <pre> without </pre>");
        assert!(!html[start + 5..end].contains("<pre>"), "nested <pre>");
        regions.push((start, end));
        from = end;
    }
    assert_eq!(html.matches("</pre>").count(), regions.len(), "a </pre> without <pre>: {html}");
    regions
}

#[test]
fn long_answer_arrives_as_several_valid_messages_with_code_blocks_intact() {
    let fake = FakeTelegram::start();
    let (_home, service) = start("long", &fake);
    fake.send_dm(111, "long");
    let end = "other words that script the demo agent.";
    let sent = fake
        .wait_delivered(WAIT, |sent| sent.iter().any(|s| s.visible.contains(end)))
        .unwrap_or_else(|| panic!("the end of the long answer never arrived; log:\n{}", service.log()));
    let sent: Vec<Sent> = sent.into_iter().filter(|s| s.chat_id == json!(111)).collect();
    assert!(sent.len() >= 3, "9000 characters need at least 3 messages: {:#?}", visible(&sent));
    // Nothing had to fall back to plain text: every part was valid HTML for the fake.
    assert!(fake.calls_of("sendMessage").len() == sent.len(), "a part was refused; log:\n{}", service.log());
    for s in &sent {
        assert_eq!(s.parse_mode.as_deref(), Some("HTML"));
        assert!(s.visible.encode_utf16().count() <= TEXT_LIMIT);
        assert!(!s.visible.contains("```") && !s.visible.contains("**"), "raw Markdown shown: {}", s.visible);
        // Every line of code is inside a <pre> of this message, opened with its language.
        let regions = pre_regions(&s.text);
        let mut from = 0;
        while let Some(at) = s.text[from..].find(" squared").map(|i| i + from) {
            let inside = regions.iter().find(|(start, end)| *start < at && at < *end);
            let Some((start, _)) = inside else { panic!("code outside <pre> at {at}: {}", s.text) };
            assert!(s.text[*start..].starts_with("<pre><code class=\"language-rust\">"), "{}", &s.text[*start..]);
            from = at + 1;
        }
    }
    // The first block is longer than one message: it was split, and reopened as rust code.
    let with_table: Vec<&Sent> = sent.iter().filter(|s| s.visible.contains("=> Some(")).collect();
    assert!(with_table.len() >= 2, "the 4096+ character block cannot fit one message");
    assert!(with_table[1].text.starts_with("<pre><code class=\"language-rust\">"), "{:.80}", with_table[1].text);
    // The whole answer arrived, in order, nothing twice.
    let all: String = visible(&sent).concat();
    let mut from = 0;
    let mut expect_in_order = |needle: &str| {
        let at = all[from..].find(needle).unwrap_or_else(|| panic!("{needle:?} missing or out of order"));
        assert_eq!(all.matches(needle).count(), 1, "{needle:?} repeated");
        from += at + needle.len();
    };
    expect_in_order("A long demo answer");
    expect_in_order("This is the long answer of tether's demo agent.");
    expect_in_order("keep the parts in order, even when the platform is slow to accept them.");
    for n in 0..112u32 {
        expect_in_order(&format!("{n} => Some({}), // {n} squared", n * n));
    }
    expect_in_order("        _ => None,\n    }\n}");
    expect_in_order("The second block is shorter and ordinary.");
    expect_in_order("struct Totals {");
    expect_in_order("println!(\"{} squares, sum {}, largest {:?}\", totals.count, totals.sum, totals.largest);");
    expect_in_order("Chat platforms disagree about Markdown.");
    expect_in_order("The parts arrive in order and nothing is repeated or lost between them.");
    expect_in_order(end);
    assert!(sent.last().is_some_and(|s| s.visible.trim_end().ends_with(end)));
    // Not held apart: the chat's bucket has room for the parts of one answer, so each goes
    // as soon as Telegram accepted the one before (pacing used to space them 1 s apart).
    for pair in sent.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap < Duration::from_millis(700), "two parts {gap:?} apart");
    }
    let span = sent[sent.len() - 1].at - sent[0].at;
    eprintln!("{} parts, first to last: {span:?}", sent.len());
}

#[test]
fn html_in_an_answer_comes_back_escaped() {
    let fake = FakeTelegram::start();
    let (_home, service) = start("escape", &fake);
    let prompt = "<script>alert(1)</script> if a < b && c > d";
    fake.send_dm(111, prompt);
    let sent = fake
        .wait_delivered(WAIT, |sent| !sent.is_empty())
        .unwrap_or_else(|| panic!("no reply; log:\n{}", service.log()));
    assert_eq!(sent[0].visible, format!("echo: {prompt}"));
    assert_eq!(sent[0].parse_mode.as_deref(), Some("HTML"));
    assert_eq!(sent[0].text, "echo: &lt;script&gt;alert(1)&lt;/script&gt; if a &lt; b &amp;&amp; c &gt; d");
}

#[test]
fn markdown_is_formatted_and_refused_html_is_resent_as_plain_text() {
    let fake = FakeTelegram::start();
    let (_home, service) = start("fallback", &fake);
    fake.send_dm(111, "**bold** and `code`");
    let first = fake.wait_delivered(WAIT, |sent| !sent.is_empty()).unwrap_or_else(|| panic!("{}", service.log()));
    assert_eq!(first[0].text, "echo: <b>bold</b> and <code>code</code>");
    assert_eq!(first[0].visible, "echo: bold and code");

    fake.fail_next("sendMessage", Fault::bad_entities());
    fake.send_dm(111, "**again** & `more`");
    let sent = fake.wait_delivered(WAIT, |sent| sent.len() == 2).unwrap_or_else(|| panic!("{}", service.log()));
    assert_eq!(sent[1].parse_mode, None, "resent without parse_mode");
    assert_eq!(sent[1].text, "echo: again & more");
    let calls = fake.calls_of("sendMessage");
    assert_eq!(calls.len(), 3, "one refused HTML send, one plain resend: {calls:#?}");
    assert_eq!(calls[1].body["parse_mode"], "HTML");
    assert_eq!(calls[1].body["text"], "echo: <b>again</b> &amp; <code>more</code>");
    assert!(calls[2].body.get("parse_mode").is_none());
    assert!(service.log().contains("resending part 1/1 as plain text"), "{}", service.log());
}

#[test]
fn rate_limit_is_waited_out_and_order_is_kept() {
    let fake = FakeTelegram::start();
    let (_home, service) = start("ratelimit", &fake);
    fake.fail_next("sendMessage", Fault::too_many(2));
    fake.send_dm(111, "first");
    // The second message only once the first answer was refused: sent together, both could
    // arrive in one poll and be answered as one turn (steering).
    let limited = crate::support::wait_until(WAIT, || !fake.calls_of("sendMessage").is_empty());
    assert!(limited, "{}", service.log());
    fake.send_dm(111, "second");
    let sent = fake.wait_delivered(WAIT, |sent| sent.len() == 2).unwrap_or_else(|| panic!("{}", service.log()));
    assert_eq!(visible(&sent), ["echo: first", "echo: second"]);
    let calls = fake.calls_of("sendMessage");
    assert_eq!(calls[0].body["text"], "echo: first", "the limited call was the first answer");
    let waited = sent[0].at - calls[0].at;
    assert!(waited >= Duration::from_millis(1900), "retry_after 2 s not honoured: resent after {waited:?}");
    assert!(service.log().contains("rate limited (429)"), "{}", service.log());
}

#[test]
fn a_failing_chat_does_not_hold_up_another() {
    let fake = FakeTelegram::start();
    let (_home, service) = start("twochats", &fake);
    for _ in 0..4 {
        fake.fail_next_in_chat("sendMessage", 111, Fault::bad_gateway());
    }
    fake.send_dm(111, "one");
    // Chat 111's answer is failing (and backing off) before chat 222 asks.
    let failing = crate::support::wait_until(WAIT, || !fake.calls_of("sendMessage").is_empty());
    assert!(failing, "{}", service.log());
    fake.send_dm(222, "two");
    let sent = fake
        .wait_delivered(Duration::from_secs(60), |sent| sent.len() == 2)
        .unwrap_or_else(|| panic!("{}", service.log()));
    assert_eq!(visible(&sent), ["echo: two", "echo: one"], "chat 222 waited for chat 111's retries");
    assert_eq!(sent[0].chat_id, json!(222));
    assert!(service.log().contains("send to chat 111 failed (attempt 4/6)"), "{}", service.log());
    // Chat 222 was answered while 111 was still retrying: before 111's last failed attempt.
    let to_111: Vec<_> = fake.calls_of("sendMessage").into_iter().filter(|c| c.body["chat_id"] == 111).collect();
    assert_eq!(to_111.len(), 5);
    assert!(sent[0].at < to_111[3].at, "222 answered only after 111's fourth attempt");
}

#[test]
fn a_blocked_chat_drops_the_rest_of_that_reply_only() {
    let fake = FakeTelegram::start();
    let (_home, service) = start("blocked", &fake);
    fake.fail_next_in_chat("sendMessage", 111, Fault::blocked());
    fake.send_dm(111, "long");
    assert!(service.wait_for_log("the bot may not write there", WAIT), "{}", service.log());
    fake.send_dm(111, "unblocked now");
    let sent = fake.wait_delivered(WAIT, |sent| !sent.is_empty()).unwrap_or_else(|| panic!("{}", service.log()));
    assert_eq!(visible(&sent), ["echo: unblocked now"], "no part of the long reply after the 403");
    let calls: Vec<Value> = fake.calls_of("sendMessage").into_iter().map(|c| c.body["text"].clone()).collect();
    assert_eq!(calls.len(), 2, "one refused part, then the next reply: {calls:#?}");
}

#[test]
fn block_streaming_sends_blocks_that_never_split_a_code_fence() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("blocks");
    home.write_config(&json!({
        "agent": demo_agent(),
        "channels": {"phone": {
            "type": "telegram", "token": TOKEN, "apiBase": fake.url(), "allowedUsers": ["111"],
            "blockStreaming": "on", "blockStreamingChunk": {"minChars": 400, "maxChars": 1000},
        }}
    }));
    let service = Service::start(&home, &[]);
    fake.send_dm(111, "long");
    let sent = fake
        .wait_delivered(Duration::from_secs(60), |sent| {
            sent.iter().any(|s| s.visible.contains("That is the end of the long answer"))
        })
        .unwrap_or_else(|| panic!("the answer did not arrive; log:\n{}", service.log()));
    let blocks: Vec<&Sent> = sent.iter().filter(|s| s.chat_id == json!(111)).collect();
    assert!(blocks.len() >= 8, "{} blocks", blocks.len());
    for block in &blocks {
        // Blocks of at most maxChars, each with whole code blocks (a split one is reopened).
        assert!(block.visible.encode_utf16().count() <= 1000 + 40, "{}", block.visible.len());
        pre_regions(&block.text);
    }
}
