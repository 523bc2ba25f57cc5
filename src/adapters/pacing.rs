//! Outbound pacing for platforms that throttle bots: a token bucket per chat (a short burst,
//! then a steady rate), a cap on calls per window for the whole bot, and the holds a
//! platform's "retry after" asks for. Pure: it is told when each call went out and answers
//! when the next one may go.
//!
//! The bucket is kept as one instant per chat (the "generic cell rate algorithm"): `due` is
//! when the chat's bucket would be full again. A message may go while `due` is less than
//! `burst - 1` refills ahead of now; each message pushes `due` one refill further. A chat
//! whose bucket is full is forgotten, so memory is bounded by the chats active lately.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::vec_map::VecMap;

/// A platform's limits, as its courier declares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacingRules {
    /// Messages one chat may get at once after a quiet spell (the bucket's size; at least 1).
    pub chat_burst: u32,
    /// The bucket gains one message per this; zero means no per-chat limit.
    pub chat_refill: Duration,
    /// Calls of any kind (typing included) the bot may make in any `bot_window`.
    pub bot_limit: usize,
    pub bot_window: Duration,
}

impl PacingRules {
    /// No limits a test or a local platform would notice.
    #[cfg(test)]
    pub const UNLIMITED: PacingRules = PacingRules {
        chat_burst: 1,
        chat_refill: Duration::ZERO,
        bot_limit: 1_000_000,
        bot_window: Duration::from_millis(1),
    };
}

/// No rule waits longer than this.
const LONGEST: Duration = Duration::from_secs(3600);

/// One chat's pace.
#[derive(Debug, Clone)]
struct ChatPace {
    /// When the chat's bucket is full again.
    due: Instant,
    /// The platform asked us to leave the chat alone until then (a 429's `retry_after`).
    hold: Option<Instant>,
}

/// One chat's own limits as instants, not yet clamped to a `now`, without the bot's budget
/// (see [`Pacer::chat_times`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ChatTimes {
    /// The chat's next message waits until then (its bucket, or a hold).
    message: Option<Instant>,
    /// Its next chat action (typing) waits until then (a hold).
    action: Option<Instant>,
}

impl ChatTimes {
    /// The earliest moment, not before `now` nor `bot` (the bot's budget), a message may go.
    pub fn message_ready_at(&self, now: Instant, bot: Instant) -> Instant {
        self.message.map_or(now, |at| at.max(now)).max(bot)
    }

    /// The earliest moment, not before `now` nor `bot`, a chat action may go.
    pub fn action_ready_at(&self, now: Instant, bot: Instant) -> Instant {
        self.action.map_or(now, |at| at.max(now)).max(bot)
    }
}

/// When the next call to a chat, or of the bot, may go out.
#[derive(Debug, Clone)]
pub(crate) struct Pacer<K: Ord> {
    rules: PacingRules,
    chats: VecMap<K, ChatPace>,
    /// The bot's most recent calls, oldest first; at most `bot_limit` of them.
    recent: VecDeque<Instant>,
    /// The platform asked the whole bot to wait until then.
    bot_hold: Option<Instant>,
}

impl<K: Ord + Clone> Pacer<K> {
    pub fn new(rules: PacingRules) -> Pacer<K> {
        // Clamped so that no instant arithmetic below can overflow.
        let rules = PacingRules {
            chat_burst: rules.chat_burst.clamp(1, 1000),
            chat_refill: rules.chat_refill.min(LONGEST),
            bot_limit: rules.bot_limit.max(1),
            bot_window: rules.bot_window.min(LONGEST),
        };
        Pacer { rules, chats: VecMap::new(), recent: VecDeque::new(), bot_hold: None }
    }

    /// How far ahead of now `due` may be while the bucket still holds a message.
    fn tolerance(&self) -> Duration {
        self.rules.chat_refill.saturating_mul(self.rules.chat_burst - 1)
    }

    /// The earliest moment, not before `now`, a message to `chat` may go out (the outbox reads
    /// [`Pacer::chat_times`] it keeps; tests ask here).
    #[cfg(test)]
    pub fn ready_at(&self, chat: &K, now: Instant) -> Instant {
        self.chat_times(chat).message_ready_at(now, self.bot_ready_at(now))
    }

    /// The earliest moment, not before `now`, a chat action (typing) to `chat` may go: it
    /// takes no message from the chat's bucket, but waits out a hold and the bot's budget.
    #[cfg(test)]
    pub fn action_ready_at(&self, chat: &K, now: Instant) -> Instant {
        self.chat_times(chat).action_ready_at(now, self.bot_ready_at(now))
    }

    /// `chat`'s own limits, for a caller that keeps them with its own state of the chat and
    /// reads them there without a lookup per chat: they change only with [`Pacer::record`] and
    /// [`Pacer::hold_chat`] of that chat (forgetting an idle chat changes nothing they say).
    pub fn chat_times(&self, chat: &K) -> ChatTimes {
        let Some(pace) = self.chats.get(chat) else { return ChatTimes::default() };
        let bucket = pace.due.checked_sub(self.tolerance());
        let message = match (bucket, pace.hold) {
            (Some(bucket), Some(hold)) => Some(bucket.max(hold)),
            (bucket, hold) => bucket.or(hold),
        };
        ChatTimes { message, action: pace.hold }
    }

    /// The earliest moment, not before `now`, the bot may make any call.
    pub fn bot_ready_at(&self, now: Instant) -> Instant {
        let held = self.bot_hold.unwrap_or(now).max(now);
        if self.recent.len() < self.rules.bot_limit {
            return held;
        }
        // The window holds `bot_limit` calls: the next may go when the oldest leaves it.
        self.recent.front().map_or(held, |oldest| (*oldest + self.rules.bot_window).max(held))
    }

    /// A message to `chat` went out at `at`: it takes one from the chat's bucket.
    pub fn record(&mut self, chat: K, at: Instant) {
        let refill = self.rules.chat_refill;
        let pace = self.chats.get_or_insert_with(chat, |_| ChatPace { due: at, hold: None });
        pace.due = pace.due.max(at) + refill;
        self.record_bot(at);
    }

    /// A call that is not a chat message (typing, a button answer) went out at `at`.
    pub fn record_bot(&mut self, at: Instant) {
        // Kept sorted, so the front is the oldest even if a caller records out of order.
        let position = self.recent.iter().rposition(|t| *t <= at).map_or(0, |i| i + 1);
        self.recent.insert(position, at);
        while self.recent.len() > self.rules.bot_limit {
            self.recent.pop_front();
        }
    }

    /// The platform asked to leave `chat` alone until `until`.
    pub fn hold_chat(&mut self, chat: K, until: Instant) {
        // A chat new to the pacer has a full bucket when the hold ends.
        let pace = self.chats.get_or_insert_with(chat, |_| ChatPace { due: until, hold: None });
        pace.hold = Some(pace.hold.map_or(until, |hold| hold.max(until)));
    }

    /// The platform asked the whole bot to wait until `until`.
    pub fn hold_bot(&mut self, until: Instant) {
        self.bot_hold = Some(self.bot_hold.map_or(until, |hold| hold.max(until)));
    }

    /// Forget the chats whose bucket is full and that are not held, and a bot hold that
    /// is over, so that memory stays bounded by the chats active lately.
    pub fn forget_idle(&mut self, now: Instant) {
        self.chats.retain(|_, pace| pace.due > now || pace.hold.is_some_and(|hold| hold > now));
        if self.bot_hold.is_some_and(|hold| hold <= now) {
            self.bot_hold = None;
        }
    }

    /// How many chats are remembered (for tests and bounds).
    #[cfg(test)]
    pub fn tracked_chats(&self) -> usize {
        self.chats.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Telegram's numbers: a burst of 4, one a second after it, 30 a second for the bot.
    const RULES: PacingRules = PacingRules {
        chat_burst: 4,
        chat_refill: Duration::from_secs(1),
        bot_limit: 30,
        bot_window: Duration::from_secs(1),
    };

    /// A step of a pacing scenario: at `at` ms, something happens to `chat`, and the
    /// scenario expects the next message to `chat` may go at `ready` ms.
    #[derive(Clone, Copy)]
    enum Do {
        /// Ask, and send at the answer (`max(at, ready)`).
        Send,
        /// Ask only.
        Ask,
        /// A typing indicator goes to the chat at `at`, if it may (`ready` is then the chat
        /// action's readiness).
        Typing,
        /// The platform answered 429 with `retry_after` of this many ms for the chat.
        Limited(u64),
        /// The platform answered 429 for the whole bot.
        LimitedBot(u64),
    }

    struct Step {
        at: u64,
        chat: &'static str,
        what: Do,
        ready: u64,
    }

    fn step(at: u64, chat: &'static str, what: Do, ready: u64) -> Step {
        Step { at, chat, what, ready }
    }

    fn run(rules: PacingRules, steps: &[Step]) {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(rules);
        for (i, s) in steps.iter().enumerate() {
            let now = t0 + ms(s.at);
            pacer.forget_idle(now);
            match s.what {
                Do::Send | Do::Ask => {
                    let ready = pacer.ready_at(&s.chat, now);
                    assert_eq!(ready - t0, ms(s.ready), "step {i}: message to {} at {} ms", s.chat, s.at);
                    if matches!(s.what, Do::Send) {
                        pacer.record(s.chat, ready);
                    }
                }
                Do::Typing => {
                    let ready = pacer.action_ready_at(&s.chat, now);
                    assert_eq!(ready - t0, ms(s.ready), "step {i}: typing to {} at {} ms", s.chat, s.at);
                    pacer.record_bot(ready);
                }
                Do::Limited(wait) => {
                    pacer.hold_chat(s.chat, now + ms(wait));
                    assert_eq!(pacer.ready_at(&s.chat, now) - t0, ms(s.ready), "step {i}: after a 429 at {}", s.at);
                }
                Do::LimitedBot(wait) => {
                    pacer.hold_bot(now + ms(wait));
                    assert_eq!(pacer.ready_at(&s.chat, now) - t0, ms(s.ready), "step {i}: after a 429 at {}", s.at);
                }
            }
        }
    }

    #[test]
    fn the_parts_of_one_long_answer_go_out_at_once() {
        use Do::*;
        // Three parts, each sent when the previous one's call came back: no gap between them.
        run(
            RULES,
            &[step(0, "a", Send, 0), step(40, "a", Send, 40), step(80, "a", Send, 80), step(120, "a", Ask, 120)],
        );
    }

    #[test]
    fn a_burst_beyond_the_bucket_waits_for_the_refill() {
        use Do::*;
        run(
            RULES,
            &[
                step(0, "a", Send, 0),
                step(0, "a", Send, 0),
                step(0, "a", Send, 0),
                step(0, "a", Send, 0),
                // The bucket (4) is empty: the fifth waits for one refill, the sixth for two.
                step(10, "a", Send, 1000),
                step(10, "a", Send, 2000),
                // Another chat has its own bucket.
                step(10, "b", Send, 10),
                // Half a refill later there is still nothing in a's bucket.
                step(2500, "a", Ask, 3000),
                // A long pause fills the bucket again: four at once.
                step(9000, "a", Send, 9000),
                step(9000, "a", Send, 9000),
                step(9000, "a", Send, 9000),
                step(9000, "a", Send, 9000),
                step(9000, "a", Ask, 10000),
            ],
        );
    }

    #[test]
    fn a_steady_chat_gets_one_message_per_refill() {
        use Do::*;
        // One message every 500 ms: the bucket drains by one every second, then holds the pace.
        let mut steps = Vec::new();
        let expected = [0, 500, 1000, 1500, 2000, 2500, 3000, 4000, 5000, 6000];
        for (i, ready) in expected.iter().enumerate() {
            steps.push(step(i as u64 * 500, "a", Send, *ready));
        }
        run(RULES, &steps);
    }

    #[test]
    fn a_fast_answer_right_after_typing_goes_out_at_once() {
        use Do::*;
        run(
            RULES,
            &[
                // Typing asks nothing of the bucket, even when repeated.
                step(0, "a", Typing, 0),
                step(4, "a", Typing, 4),
                step(5, "a", Send, 5),
                step(8, "a", Typing, 8),
                step(9, "a", Send, 9),
                step(10, "a", Send, 10),
                step(11, "a", Send, 11),
                // Four messages: the bucket is empty, typing is not held back by it.
                step(12, "a", Typing, 12),
                step(12, "a", Ask, 1005),
            ],
        );
    }

    #[test]
    fn retry_after_is_honoured_per_chat_and_other_chats_are_unaffected() {
        use Do::*;
        run(
            RULES,
            &[
                step(0, "a", Send, 0),
                step(10, "a", Limited(3000), 3010),
                // Exactly as long as asked: the full bucket is not made to wait longer.
                step(20, "a", Ask, 3010),
                step(20, "a", Typing, 3010),
                step(20, "b", Send, 20),
                step(20, "b", Typing, 20),
                step(3010, "a", Send, 3010),
                step(3010, "a", Send, 3010),
                // A shorter hold asked later does not shorten the first one.
                step(3020, "c", Limited(5000), 8020),
                step(3030, "c", Limited(100), 8020),
            ],
        );
    }

    #[test]
    fn a_hold_for_the_whole_bot_stops_every_chat() {
        use Do::*;
        run(
            RULES,
            &[
                step(0, "a", Send, 0),
                step(10, "a", LimitedBot(2000), 2010),
                step(20, "b", Ask, 2010),
                step(20, "b", Typing, 2010),
                step(2010, "b", Send, 2010),
                step(2020, "a", Send, 2020),
            ],
        );
    }

    #[test]
    fn bot_budget_spreads_a_burst_over_chats() {
        use Do::*;
        // Three calls per 100 ms for the bot, no per-chat limit to speak of.
        let rules = PacingRules { chat_burst: 1, chat_refill: ms(1), bot_limit: 3, bot_window: ms(100) };
        run(
            rules,
            &[
                step(0, "a", Send, 0),
                step(0, "b", Send, 0),
                step(10, "c", Send, 10),
                // The window is full: the fourth waits until the first leaves it.
                step(20, "d", Send, 100),
                // Now the oldest in the window is b's at 0, then c's at 10.
                step(20, "e", Send, 100),
                step(20, "f", Send, 110),
                // Typing counts against the bot.
                step(120, "a", Typing, 200),
                step(300, "a", Send, 300),
            ],
        );
    }

    #[test]
    fn idle_chats_are_forgotten() {
        let t0 = Instant::now();
        let mut pacer: Pacer<u32> = Pacer::new(RULES);
        for chat in 0..100 {
            pacer.record(chat, t0 + ms(u64::from(chat) * 10));
        }
        assert_eq!(pacer.tracked_chats(), 100);
        // At 1500 ms, chats that sent before 500 ms have a full bucket again.
        pacer.forget_idle(t0 + ms(1500));
        assert_eq!(pacer.tracked_chats(), 49);
        pacer.hold_chat(7, t0 + ms(9000));
        pacer.forget_idle(t0 + ms(5000));
        assert_eq!(pacer.tracked_chats(), 1, "a held chat is remembered until its hold is over");
        pacer.forget_idle(t0 + ms(9000));
        assert_eq!(pacer.tracked_chats(), 0);
    }

    #[test]
    fn thirty_chats_at_once_then_the_bot_window() {
        let t0 = Instant::now();
        let mut pacer: Pacer<u32> = Pacer::new(RULES);
        for chat in 0..30 {
            assert_eq!(pacer.ready_at(&chat, t0), t0, "chat {chat}");
            pacer.record(chat, t0);
        }
        assert_eq!(pacer.ready_at(&30, t0 + ms(1)), t0 + ms(1000));
        assert_eq!(pacer.ready_at(&0, t0 + ms(1)), t0 + ms(1000), "the bot's window, not the chat's bucket");
    }

    #[test]
    fn no_per_chat_limit_and_odd_rules_do_not_panic() {
        let t0 = Instant::now();
        let mut pacer: Pacer<u32> = Pacer::new(PacingRules::UNLIMITED);
        for _ in 0..100 {
            assert_eq!(pacer.ready_at(&1, t0), t0);
            pacer.record(1, t0);
        }
        let mut pacer: Pacer<u32> =
            Pacer::new(PacingRules { chat_burst: 0, chat_refill: Duration::MAX, bot_limit: 0, bot_window: ms(5) });
        pacer.record(1, t0);
        assert!(pacer.ready_at(&1, t0) >= t0);
    }
}
