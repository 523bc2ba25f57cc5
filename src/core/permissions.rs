//! Tool permission requests relayed to the chat whose turn asked for them: short ids, the
//! message and buttons shown, answers by text or button, who may answer, timeouts and
//! cancellation. Pure: the core feeds it requests, answers and the clock.
//!
//! Options are chosen by their `kind`, never by label; "allow always" is only ever picked
//! when the agent offered it.

use std::time::{Duration, Instant};

use crate::event::{ChatRef, PermissionKind, PermissionOption, PermissionOutcome, SessionKey, ToolCall};

/// Requests one turn may ask the chat; past this the agent is refused without asking, so a
/// runaway agent cannot bury the chat in questions.
pub const MAX_ASKS_PER_TURN: usize = 20;
/// Requests pending at once, across chats; well under the 999 ids, so an id is always free.
pub const MAX_PENDING: usize = 500;

/// Who may answer a permission request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answerers {
    /// Anyone who passes the channel's gates (a request outside any turn).
    Anyone,
    /// A shared session (`single`, or `thread` in a group) with `allowedUsers`: those users.
    AllowedUsers(Vec<String>),
    /// The senders of the messages the turn answers: the person whose message started the
    /// work decides, not whoever else is in the group.
    Senders(Vec<String>),
}

impl Answerers {
    /// The rule for a turn: `allowedUsers` in a shared session when there are any, else the
    /// turn's senders (anyone, when there is no turn to speak of).
    pub fn for_turn(shared: bool, allowed_users: &[String], senders: &[String]) -> Answerers {
        if shared && !allowed_users.is_empty() {
            Answerers::AllowedUsers(allowed_users.to_vec())
        } else if senders.is_empty() {
            Answerers::Anyone
        } else {
            Answerers::Senders(senders.to_vec())
        }
    }

    /// `None` when `sender` may answer, else why not.
    fn refuse(&self, sender: &str) -> Option<&'static str> {
        match self {
            Answerers::Anyone => None,
            Answerers::AllowedUsers(ids) if ids.iter().any(|a| a == sender) => None,
            Answerers::Senders(ids) if ids.iter().any(|a| a == sender) => None,
            Answerers::AllowedUsers(_) => {
                Some("Only the people in allowedUsers can answer permission requests in a shared session.")
            }
            Answerers::Senders(_) => Some("Only the person whose message started this work can answer this request."),
        }
    }
}

/// What a person decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    AllowOnce,
    AllowAlways,
    Deny,
}

impl Decision {
    fn past_tense(self) -> &'static str {
        match self {
            Decision::AllowOnce => "approved",
            Decision::AllowAlways => "approved always",
            Decision::Deny => "denied",
        }
    }
}

/// A request waiting for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// What people type: `/approve 3`.
    pub id: String,
    pub agent: String,
    /// The ACP connection's handle for the answer.
    pub request: u64,
    pub session: SessionKey,
    /// The agent's id of that session.
    pub session_id: String,
    pub chat: ChatRef,
    /// Who may answer.
    pub answerers: Answerers,
    pub call: ToolCall,
    pub options: Vec<PermissionOption>,
    pub deadline: Instant,
}

impl Pending {
    /// The key adapters use to edit the message they showed for this request.
    pub fn message_key(&self) -> String {
        format!("perm:{}", self.id)
    }

    /// The message that asks: what the tool is, a preview, and how to answer.
    pub fn ask_text(&self) -> String {
        let mut text = format!("🔐 Permission needed ({})\nThe agent wants to run: {}", self.id, title(&self.call));
        if self.call.kind != "other" && !self.call.kind.is_empty() {
            text.push_str(&format!(" [{}]", self.call.kind));
        }
        if !self.call.preview.is_empty() && self.call.preview != self.call.title {
            text.push_str(&format!("\n{}", self.call.preview));
        }
        let id = &self.id;
        text.push_str(&format!("\n\nReply /approve {id} to allow once"));
        if self.offers(PermissionKind::AllowAlways) {
            text.push_str(&format!(", /approve-always {id} to always allow"));
        }
        text.push_str(&format!(", or /deny {id}."));
        text
    }

    /// The buttons, for platforms that have them: (label, callback data).
    pub fn buttons(&self) -> Vec<(String, String)> {
        let mut buttons = vec![("✅ Allow".to_string(), format!("perm:{}:once", self.id))];
        if self.offers(PermissionKind::AllowAlways) {
            buttons.push(("♾️ Always".to_string(), format!("perm:{}:always", self.id)));
        }
        buttons.push(("❌ Deny".to_string(), format!("perm:{}:deny", self.id)));
        buttons
    }

    /// The asking message once settled: what was asked and what came of it.
    pub fn settled_text(&self, outcome: &str) -> String {
        format!("🔐 {} — {outcome}", title(&self.call))
    }

    fn offers(&self, kind: PermissionKind) -> bool {
        self.options.iter().any(|o| o.kind == kind)
    }

    /// The agent's option for a decision; `None` when it offered none that fits.
    pub fn outcome(&self, decision: Decision) -> Option<PermissionOutcome> {
        let pick = |kinds: &[PermissionKind]| {
            kinds.iter().find_map(|k| self.options.iter().find(|o| o.kind == *k)).map(|o| o.id.clone())
        };
        match decision {
            Decision::AllowOnce => pick(&[PermissionKind::AllowOnce]).map(PermissionOutcome::Selected),
            Decision::AllowAlways => pick(&[PermissionKind::AllowAlways]).map(PermissionOutcome::Selected),
            Decision::Deny => Some(
                pick(&[PermissionKind::RejectOnce, PermissionKind::RejectAlways])
                    .map_or(PermissionOutcome::Cancelled, PermissionOutcome::Selected),
            ),
        }
    }

    /// What to answer the agent when nobody decided in time or the turn went away.
    pub fn refusal(&self) -> PermissionOutcome {
        self.outcome(Decision::Deny).unwrap_or(PermissionOutcome::Cancelled)
    }
}

fn title(call: &ToolCall) -> &str {
    if call.title.is_empty() { "a tool" } else { &call.title }
}

/// An answer as typed or pressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub decision: Decision,
    /// The request's id, when given.
    pub id: Option<String>,
}

/// Read an answer from a message: `/approve [id]`, `/approve-always [id]`, `/deny [id]` (also
/// with `@botname`), or `yes <id>` / `no <id>` (the id is required there, so a plain "yes"
/// stays a chat message).
pub fn parse_text_answer(text: &str) -> Option<Answer> {
    let mut words = text.split_whitespace();
    let first = words.next()?.to_lowercase();
    let id = words.next().map(|w| w.trim_start_matches('#').to_string());
    if words.next().is_some() {
        return None;
    }
    let command = first.split('@').next().unwrap_or_default();
    let decision = match command {
        "/approve" | "/allow" => Decision::AllowOnce,
        "/approve-always" | "/approve_always" => Decision::AllowAlways,
        "/deny" | "/reject" => Decision::Deny,
        "yes" | "y" if id.is_some() => Decision::AllowOnce,
        "no" | "n" if id.is_some() => Decision::Deny,
        _ => return None,
    };
    Some(Answer { decision, id })
}

/// Read an answer from a button's callback data (`perm:<id>:once|always|deny`).
pub fn parse_button_answer(data: &str) -> Option<Answer> {
    let mut parts = data.split(':');
    if parts.next()? != "perm" {
        return None;
    }
    let id = parts.next()?.to_string();
    let decision = match parts.next()? {
        "once" => Decision::AllowOnce,
        "always" => Decision::AllowAlways,
        "deny" => Decision::Deny,
        _ => return None,
    };
    Some(Answer { decision, id: Some(id) })
}

/// What became of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Settled: tell the agent `outcome`, update the asking message, confirm to the chat.
    Settled { pending: Box<Pending>, outcome: PermissionOutcome, reply: String },
    /// Nothing happened; tell the person why.
    Refused(String),
}

/// Every request waiting for a person, across channels.
#[derive(Debug, Default)]
pub struct PermissionRelay {
    pending: Vec<Pending>,
    next_id: u32,
}

/// Where a new request goes and who may answer it.
#[derive(Debug, Clone)]
pub struct Asker {
    pub agent: String,
    pub session: SessionKey,
    pub session_id: String,
    pub chat: ChatRef,
    pub answerers: Answerers,
    pub timeout: Duration,
}

impl PermissionRelay {
    /// Record a new request; returns it (for the message to send), or `None` when
    /// [`MAX_PENDING`] requests already wait (the caller refuses it).
    pub fn ask(
        &mut self,
        asker: Asker,
        request: u64,
        call: ToolCall,
        options: Vec<PermissionOption>,
        now: Instant,
    ) -> Option<Pending> {
        if self.pending.len() >= MAX_PENDING {
            return None;
        }
        // Ids run 1..=999 and wrap, skipping any still pending: an answer never reaches a
        // newer request that took an older one's id.
        loop {
            self.next_id = self.next_id % 999 + 1;
            let id = self.next_id.to_string();
            if !self.pending.iter().any(|p| p.id == id) {
                break;
            }
        }
        let pending = Pending {
            id: self.next_id.to_string(),
            agent: asker.agent,
            request,
            session: asker.session,
            session_id: asker.session_id,
            chat: asker.chat,
            answerers: asker.answerers,
            call,
            options,
            deadline: now + asker.timeout,
        };
        self.pending.push(pending.clone());
        Some(pending)
    }

    /// Apply an answer from `sender` in `chat`.
    pub fn answer(&mut self, chat: &ChatRef, sender: &str, answer: &Answer) -> Resolution {
        let in_chat: Vec<usize> = (0..self.pending.len()).filter(|i| self.pending[*i].chat == *chat).collect();
        let index = match (&answer.id, in_chat.as_slice()) {
            (None, []) => return Resolution::Refused("No permission request is pending in this chat.".into()),
            (None, [only]) => *only,
            (None, several) => {
                let ids: Vec<&str> = several.iter().map(|i| self.pending[*i].id.as_str()).collect();
                return Resolution::Refused(format!(
                    "Several permission requests are pending ({}): add the id, e.g. /approve {}.",
                    ids.join(", "),
                    ids[0]
                ));
            }
            (Some(id), _) => match in_chat.iter().find(|i| self.pending[**i].id == *id) {
                Some(i) => *i,
                None => return Resolution::Refused(format!("Permission request {id} is no longer pending.")),
            },
        };
        let pending = &self.pending[index];
        if let Some(why) = pending.answerers.refuse(sender) {
            return Resolution::Refused(why.into());
        }
        let Some(outcome) = pending.outcome(answer.decision) else {
            return Resolution::Refused(format!(
                "The agent did not offer \"always\" for this request: use /approve {} or /deny {}.",
                pending.id, pending.id
            ));
        };
        let pending = self.pending.remove(index);
        let reply = format!("Permission {}.", answer.decision.past_tense());
        Resolution::Settled { pending: Box::new(pending), outcome, reply }
    }

    /// Requests whose time ran out.
    pub fn expire(&mut self, now: Instant) -> Vec<Pending> {
        self.take(|p| p.deadline <= now)
    }

    /// Requests of a session whose turn ended, was cancelled or cleared.
    pub fn cancel_session(&mut self, session: &str) -> Vec<Pending> {
        self.take(|p| p.session == session)
    }

    /// Requests of the agent's session `session_id` (cancelled, or cleared).
    pub fn cancel_session_id(&mut self, agent: &str, session_id: &str) -> Vec<Pending> {
        self.take(|p| p.agent == agent && p.session_id == session_id)
    }

    /// Requests of an agent that died (it will not read answers any more).
    pub fn cancel_agent(&mut self, agent: &str) -> Vec<Pending> {
        self.take(|p| p.agent == agent)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.iter().map(|p| p.deadline).min()
    }

    pub fn pending_in(&self, chat: &ChatRef) -> impl Iterator<Item = &Pending> {
        self.pending.iter().filter(move |p| p.chat == *chat)
    }

    fn take(&mut self, matches: impl Fn(&Pending) -> bool) -> Vec<Pending> {
        let (taken, kept) = std::mem::take(&mut self.pending).into_iter().partition(|p| matches(p));
        self.pending = kept;
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(id: &str) -> ChatRef {
        ChatRef { channel: "tg".into(), chat_id: id.into(), thread_id: None }
    }

    fn options(kinds: &[(&str, PermissionKind)]) -> Vec<PermissionOption> {
        kinds
            .iter()
            .map(|(id, kind)| PermissionOption { id: id.to_string(), name: id.to_string(), kind: *kind })
            .collect()
    }

    fn qwen_options() -> Vec<PermissionOption> {
        options(&[
            ("proceed_always", PermissionKind::AllowAlways),
            ("proceed_once", PermissionKind::AllowOnce),
            ("cancel", PermissionKind::RejectOnce),
        ])
    }

    fn asker(chat_id: &str, answerers: &[&str]) -> Asker {
        Asker {
            agent: "default".into(),
            session: format!("tg:{chat_id}"),
            session_id: format!("s-{chat_id}"),
            chat: chat(chat_id),
            answerers: if answerers.is_empty() {
                Answerers::Anyone
            } else {
                Answerers::AllowedUsers(answerers.iter().map(|a| a.to_string()).collect())
            },
            timeout: Duration::from_secs(300),
        }
    }

    fn call(title: &str) -> ToolCall {
        ToolCall {
            id: "t1".into(),
            title: title.into(),
            kind: "execute".into(),
            status: "pending".into(),
            preview: title.into(),
        }
    }

    #[test]
    fn text_answers_table() {
        let a = |decision, id: Option<&str>| Some(Answer { decision, id: id.map(str::to_string) });
        let cases = [
            ("/approve", a(Decision::AllowOnce, None)),
            ("/approve 3", a(Decision::AllowOnce, Some("3"))),
            ("/APPROVE@tether_bot #3", a(Decision::AllowOnce, Some("3"))),
            ("/approve-always", a(Decision::AllowAlways, None)),
            ("/deny 12", a(Decision::Deny, Some("12"))),
            ("yes 2", a(Decision::AllowOnce, Some("2"))),
            ("No 2", a(Decision::Deny, Some("2"))),
            ("yes", None),
            ("yes please do it", None),
            ("/approved", None),
            ("approve", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_text_answer(text), expected, "{text}");
        }
        assert_eq!(parse_button_answer("perm:4:always"), a(Decision::AllowAlways, Some("4")));
        assert_eq!(parse_button_answer("perm:4:maybe"), None);
        assert_eq!(parse_button_answer("other:4:once"), None);
    }

    #[test]
    fn options_are_chosen_by_kind_and_always_only_when_offered() {
        let t0 = Instant::now();
        let mut relay = PermissionRelay::default();
        let p = relay.ask(asker("1", &[]), 7, call("touch a"), qwen_options(), t0).unwrap();
        assert_eq!(p.outcome(Decision::AllowOnce), Some(PermissionOutcome::Selected("proceed_once".into())));
        assert_eq!(p.outcome(Decision::AllowAlways), Some(PermissionOutcome::Selected("proceed_always".into())));
        assert_eq!(p.outcome(Decision::Deny), Some(PermissionOutcome::Selected("cancel".into())));
        let sdk = relay
            .ask(
                asker("1", &[]),
                8,
                call("edit"),
                options(&[("allow", PermissionKind::AllowOnce), ("reject", PermissionKind::RejectOnce)]),
                t0,
            )
            .unwrap();
        assert_eq!(sdk.outcome(Decision::AllowAlways), None);
        assert!(!sdk.ask_text().contains("approve-always"));
        assert_eq!(sdk.buttons().len(), 2);
        let no_reject =
            relay.ask(asker("1", &[]), 9, call("x"), options(&[("ok", PermissionKind::AllowOnce)]), t0).unwrap();
        assert_eq!(no_reject.refusal(), PermissionOutcome::Cancelled);
    }

    #[test]
    fn answers_resolve_the_right_request() {
        let t0 = Instant::now();
        let mut relay = PermissionRelay::default();
        let first = relay.ask(asker("1", &[]), 1, call("touch a"), qwen_options(), t0).unwrap();
        let answer = |d, id: Option<&str>| Answer { decision: d, id: id.map(str::to_string) };
        // Nothing pending elsewhere.
        assert!(
            matches!(relay.answer(&chat("2"), "u", &answer(Decision::AllowOnce, None)), Resolution::Refused(m) if m.starts_with("No permission"))
        );
        // One pending: no id needed.
        match relay.answer(&chat("1"), "u", &answer(Decision::AllowOnce, None)) {
            Resolution::Settled { pending, outcome, reply } => {
                assert_eq!(pending.id, first.id);
                assert_eq!(outcome, PermissionOutcome::Selected("proceed_once".into()));
                assert_eq!(reply, "Permission approved.");
            }
            other => panic!("{other:?}"),
        }
        // A repeated answer: no longer pending.
        let again = relay.answer(&chat("1"), "u", &answer(Decision::Deny, Some(&first.id)));
        assert_eq!(again, Resolution::Refused(format!("Permission request {} is no longer pending.", first.id)));
        // Two pending: the id is needed.
        let a = relay.ask(asker("1", &[]), 2, call("a"), qwen_options(), t0).unwrap();
        let b = relay.ask(asker("1", &[]), 3, call("b"), qwen_options(), t0).unwrap();
        assert!(
            matches!(relay.answer(&chat("1"), "u", &answer(Decision::Deny, None)), Resolution::Refused(m) if m.contains("Several"))
        );
        match relay.answer(&chat("1"), "u", &answer(Decision::Deny, Some(&b.id))) {
            Resolution::Settled { pending, outcome, .. } => {
                assert_eq!((pending.request, outcome), (3, PermissionOutcome::Selected("cancel".into())));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(relay.pending_in(&chat("1")).map(|p| p.id.clone()).collect::<Vec<_>>(), vec![a.id]);
    }

    #[test]
    fn shared_sessions_take_answers_only_from_answerers() {
        let t0 = Instant::now();
        let mut relay = PermissionRelay::default();
        relay.ask(asker("-100", &["111"]), 1, call("rm"), qwen_options(), t0).unwrap();
        let answer = Answer { decision: Decision::AllowOnce, id: None };
        assert!(
            matches!(relay.answer(&chat("-100"), "999", &answer), Resolution::Refused(m) if m.contains("allowedUsers"))
        );
        assert!(matches!(relay.answer(&chat("-100"), "111", &answer), Resolution::Settled { .. }));
    }

    #[test]
    fn only_the_turns_senders_answer_in_a_group() {
        let t0 = Instant::now();
        let mut relay = PermissionRelay::default();
        let mut group = asker("-100", &[]);
        group.answerers = Answerers::for_turn(false, &[], &["42".to_string()]);
        relay.ask(group, 1, call("rm -rf build"), qwen_options(), t0).unwrap();
        let answer = Answer { decision: Decision::AllowOnce, id: None };
        match relay.answer(&chat("-100"), "666", &answer) {
            Resolution::Refused(m) => assert!(m.contains("whose message started"), "{m}"),
            other => panic!("another group member approved: {other:?}"),
        }
        assert!(matches!(relay.answer(&chat("-100"), "42", &answer), Resolution::Settled { .. }));

        let cases: [(bool, &[&str], &[&str], Answerers); 4] = [
            (true, &["1"], &["2"], Answerers::AllowedUsers(vec!["1".into()])),
            (true, &[], &["2"], Answerers::Senders(vec!["2".into()])),
            (false, &["1"], &["2", "3"], Answerers::Senders(vec!["2".into(), "3".into()])),
            (false, &[], &[], Answerers::Anyone),
        ];
        for (shared, allowed, senders, expected) in cases {
            let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            assert_eq!(Answerers::for_turn(shared, &owned(allowed), &owned(senders)), expected);
        }
    }

    #[test]
    fn ids_do_not_wrap_onto_pending_requests_and_floods_are_capped() {
        let t0 = Instant::now();
        let mut relay = PermissionRelay::default();
        let first = relay.ask(asker("1", &[]), 0, call("old"), qwen_options(), t0).unwrap();
        assert_eq!(first.id, "1");
        // 998 more come and go; the next id would wrap onto the one still pending.
        for n in 1..999u64 {
            let p = relay.ask(asker("2", &[]), n, call("x"), qwen_options(), t0).unwrap();
            relay.cancel_session(&p.session);
        }
        let next = relay.ask(asker("1", &[]), 999, call("new"), qwen_options(), t0).unwrap();
        assert_ne!(next.id, "1", "a newer request must not take a pending one's id");
        let answer = Answer { decision: Decision::AllowOnce, id: Some("1".into()) };
        match relay.answer(&chat("1"), "7", &answer) {
            Resolution::Settled { pending, .. } => assert_eq!(pending.call.title, "old"),
            other => panic!("{other:?}"),
        }
        let mut relay = PermissionRelay::default();
        let asked = (0..MAX_PENDING as u64 + 10)
            .filter_map(|n| relay.ask(asker("3", &[]), n, call("f"), qwen_options(), t0))
            .count();
        assert_eq!(asked, MAX_PENDING);
    }

    #[test]
    fn timeouts_and_cancellation() {
        let t0 = Instant::now();
        let mut relay = PermissionRelay::default();
        relay.ask(asker("1", &[]), 1, call("a"), qwen_options(), t0).unwrap();
        let mut later = asker("2", &[]);
        later.timeout = Duration::from_secs(600);
        relay.ask(later, 2, call("b"), qwen_options(), t0).unwrap();
        assert_eq!(relay.next_deadline(), Some(t0 + Duration::from_secs(300)));
        assert!(relay.expire(t0 + Duration::from_secs(299)).is_empty());
        let expired = relay.expire(t0 + Duration::from_secs(300));
        assert_eq!(expired.iter().map(|p| p.request).collect::<Vec<_>>(), vec![1]);
        assert_eq!(expired[0].refusal(), PermissionOutcome::Selected("cancel".into()));
        assert_eq!(relay.cancel_session_id("default", "s-1").len(), 0, "already expired");
        assert_eq!(relay.cancel_session("tg:2").len(), 1);
        assert_eq!(relay.next_deadline(), None);
        relay.ask(asker("3", &[]), 3, call("c"), qwen_options(), t0).unwrap();
        assert_eq!(relay.cancel_agent("default").len(), 1);
    }

    #[test]
    fn the_asking_message_shows_tool_preview_and_choices() {
        let mut relay = PermissionRelay::default();
        let mut c = call("touch demo.txt");
        c.preview = "touch demo.txt && echo hi".into();
        let p = relay.ask(asker("1", &[]), 1, c, qwen_options(), Instant::now()).unwrap();
        assert_eq!(
            p.ask_text(),
            "🔐 Permission needed (1)\nThe agent wants to run: touch demo.txt [execute]\ntouch demo.txt && echo hi\n\n\
             Reply /approve 1 to allow once, /approve-always 1 to always allow, or /deny 1."
        );
        let data: Vec<String> = p.buttons().into_iter().map(|(_, d)| d).collect();
        assert_eq!(data, vec!["perm:1:once", "perm:1:always", "perm:1:deny"]);
        assert!(data.iter().all(|d| d.len() <= 64), "Telegram's callback_data limit");
        assert_eq!(p.settled_text("approved"), "🔐 touch demo.txt — approved");
    }
}
