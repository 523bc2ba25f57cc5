//! Outbound pacing for platforms that throttle bots: a minimum gap between messages to the
//! same chat and a cap on messages per second for the whole bot. Pure: it is told when each
//! send went out and answers when the next one to a chat may go.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Telegram's informal limits: about one message a second per chat, 30 a second per bot.
pub const TELEGRAM_CHAT_GAP: Duration = Duration::from_secs(1);
pub const TELEGRAM_BOT_PER_SECOND: usize = 30;

/// When the next send to a chat may go out.
#[derive(Debug, Clone)]
pub struct Pacer<K: Ord> {
    chat_gap: Duration,
    bot_limit: usize,
    window: Duration,
    /// When the last message to each chat went out (chats idle longer than the gap are
    /// forgotten by [`Pacer::forget_idle`]).
    last_to_chat: BTreeMap<K, Instant>,
    /// The bot's most recent sends, oldest first; at most `bot_limit` of them.
    recent: VecDeque<Instant>,
}

impl<K: Ord + Clone> Pacer<K> {
    /// At least `chat_gap` between two messages to one chat, at most `bot_limit` sends of any
    /// kind in any `window`.
    pub fn new(chat_gap: Duration, bot_limit: usize, window: Duration) -> Pacer<K> {
        Pacer { chat_gap, bot_limit: bot_limit.max(1), window, last_to_chat: BTreeMap::new(), recent: VecDeque::new() }
    }

    pub fn telegram() -> Pacer<K> {
        Pacer::new(TELEGRAM_CHAT_GAP, TELEGRAM_BOT_PER_SECOND, Duration::from_secs(1))
    }

    /// The earliest moment, not before `now`, a message to `chat` may go out.
    pub fn ready_at(&self, chat: &K, now: Instant) -> Instant {
        let chat_ready = self.last_to_chat.get(chat).map_or(now, |last| *last + self.chat_gap);
        chat_ready.max(self.bot_ready_at(now))
    }

    /// The earliest moment, not before `now`, the bot may make any send (a typing indicator
    /// is not held back by the chat's gap, only by the bot's budget).
    pub fn bot_ready_at(&self, now: Instant) -> Instant {
        if self.recent.len() < self.bot_limit {
            return now;
        }
        // The window holds `bot_limit` sends: the next may go when the oldest leaves it.
        self.recent.front().map_or(now, |oldest| (*oldest + self.window).max(now))
    }

    /// A message to `chat` went out at `at`.
    pub fn record(&mut self, chat: K, at: Instant) {
        self.last_to_chat.insert(chat, at);
        self.record_bot(at);
    }

    /// A send that is not a chat message (a typing indicator) went out at `at`.
    pub fn record_bot(&mut self, at: Instant) {
        // Kept sorted, so the front is the oldest even if a caller records out of order.
        let position = self.recent.iter().rposition(|t| *t <= at).map_or(0, |i| i + 1);
        self.recent.insert(position, at);
        while self.recent.len() > self.bot_limit {
            self.recent.pop_front();
        }
    }

    /// Drop the chats whose gap has passed, so that memory stays bounded by the chats active
    /// in the last gap.
    pub fn forget_idle(&mut self, now: Instant) {
        let gap = self.chat_gap;
        self.last_to_chat.retain(|_, last| *last + gap > now);
    }

    /// How many chats are remembered (for tests and bounds).
    pub fn tracked_chats(&self) -> usize {
        self.last_to_chat.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A step of a pacing scenario: at `at` ms, ask about `chat`, expect it may send at
    /// `ready` ms; when `send` is true it then sends at `max(at, ready)`.
    struct Step {
        at: u64,
        chat: &'static str,
        ready: u64,
        send: bool,
    }

    fn run(pacer: &mut Pacer<&'static str>, steps: &[Step]) {
        let t0 = Instant::now();
        for (i, step) in steps.iter().enumerate() {
            let now = t0 + ms(step.at);
            let ready = pacer.ready_at(&step.chat, now);
            assert_eq!(ready - t0, ms(step.ready), "step {i}: {} at {} ms", step.chat, step.at);
            if step.send {
                pacer.record(step.chat, ready);
            }
        }
    }

    #[test]
    fn one_message_a_second_per_chat() {
        let s = |at, chat, ready, send| Step { at, chat, ready, send };
        let mut pacer = Pacer::new(ms(1000), 30, ms(1000));
        run(
            &mut pacer,
            &[
                s(0, "a", 0, true),
                // The same chat waits out the gap; another chat does not.
                s(10, "a", 1000, false),
                s(10, "b", 10, true),
                s(999, "a", 1000, false),
                s(1000, "a", 1000, true),
                s(1500, "a", 2000, false),
                // After a long pause, at once.
                s(5000, "a", 5000, true),
                s(5000, "b", 5000, true),
            ],
        );
    }

    #[test]
    fn bot_budget_spreads_a_burst_over_chats() {
        let s = |at, chat, ready, send| Step { at, chat, ready, send };
        // Three sends per 100 ms for the bot, no per-chat gap to speak of.
        let mut pacer = Pacer::new(ms(1), 3, ms(100));
        run(
            &mut pacer,
            &[
                s(0, "a", 0, true),
                s(0, "b", 0, true),
                s(10, "c", 10, true),
                // The window is full: the fourth waits until the first leaves it.
                s(20, "d", 100, true),
                // Now the oldest in the window is b's at 0, then c's at 10.
                s(20, "e", 100, true),
                s(20, "f", 110, true),
                s(300, "a", 300, true),
            ],
        );
    }

    #[test]
    fn typing_counts_against_the_bot_but_not_the_chat() {
        let t0 = Instant::now();
        let mut pacer: Pacer<&str> = Pacer::new(ms(1000), 2, ms(1000));
        pacer.record("a", t0);
        assert_eq!(pacer.bot_ready_at(t0 + ms(5)), t0 + ms(5), "one send in the window leaves room");
        pacer.record_bot(t0 + ms(5));
        assert_eq!(pacer.bot_ready_at(t0 + ms(6)), t0 + ms(1000));
        assert_eq!(pacer.ready_at(&"b", t0 + ms(6)), t0 + ms(1000));
        assert_eq!(pacer.ready_at(&"a", t0 + ms(1001)), t0 + ms(1001));
    }

    #[test]
    fn idle_chats_are_forgotten() {
        let t0 = Instant::now();
        let mut pacer: Pacer<u32> = Pacer::telegram();
        for chat in 0..100 {
            pacer.record(chat, t0 + ms(u64::from(chat) * 10));
        }
        assert_eq!(pacer.tracked_chats(), 100);
        // At 1500 ms, chats that sent before 500 ms are past their gap.
        pacer.forget_idle(t0 + ms(1500));
        assert_eq!(pacer.tracked_chats(), 49);
        assert_eq!(pacer.ready_at(&99, t0 + ms(1500)), t0 + ms(1990));
        pacer.forget_idle(t0 + ms(5000));
        assert_eq!(pacer.tracked_chats(), 0);
    }

    #[test]
    fn telegram_limits() {
        let t0 = Instant::now();
        let mut pacer: Pacer<u32> = Pacer::telegram();
        // 30 chats at once may all go; the 31st waits for the window.
        for chat in 0..30 {
            assert_eq!(pacer.ready_at(&chat, t0), t0, "chat {chat}");
            pacer.record(chat, t0);
        }
        assert_eq!(pacer.ready_at(&30, t0 + ms(1)), t0 + ms(1000));
        assert_eq!(pacer.ready_at(&0, t0 + ms(1)), t0 + TELEGRAM_CHAT_GAP);
    }
}
