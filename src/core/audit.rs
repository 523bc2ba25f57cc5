//! The audit records the core decides (`Action::Audit`): a message accepted or refused by
//! the gates, a pairing code given, a permission asked, answered or timed out. Pure
//! constructors from the core's own types; the writer thread formats and writes them.

use super::Action;
use super::gate::Verdict;
use super::permissions::Pending;
use crate::audit::AuditEvent;
use crate::event::{InboundMessage, PermissionOption, PermissionOutcome};

/// The message passed the gates and belongs to session `key`.
pub(super) fn accepted(m: &InboundMessage, key: &str) -> Action {
    Action::Audit(AuditEvent::MessageAccepted {
        channel: m.channel.clone(),
        chat: m.chat_id.clone(),
        sender: m.sender_id.clone(),
        sender_name: m.sender_name.clone(),
        message: m.message_id.clone(),
        session: key.to_string(),
        text: m.text.clone(),
    })
}

/// What the gates' `verdict` on a message they did not let through is worth recording;
/// `replies` are the actions the gates returned (a pairing request to save).
pub(super) fn refused(m: &InboundMessage, verdict: &Verdict, replies: &[Action]) -> Vec<Action> {
    let gate = match verdict {
        Verdict::Drop(reason) => reason.to_string(),
        Verdict::Pair => "unpaired sender (senderPolicy pairing)".to_string(),
        Verdict::PairGroup => "group not approved (groupPolicy pairing)".to_string(),
        // `/start` from someone allowed (answered with a welcome), or a group message kept as
        // context: nothing refused.
        Verdict::Pass | Verdict::Overheard => return Vec::new(),
    };
    let mut out = vec![Action::Audit(AuditEvent::MessageRefused {
        channel: m.channel.clone(),
        chat: m.chat_id.clone(),
        sender: m.sender_id.clone(),
        sender_name: m.sender_name.clone(),
        message: m.message_id.clone(),
        gate,
        text: m.text.clone(),
    })];
    for reply in replies {
        if let Action::SavePairingRequest { channel, request } = reply {
            out.push(Action::Audit(AuditEvent::PairingRequested {
                channel: channel.clone(),
                sender: request.sender_id.clone(),
                sender_name: request.sender_name.clone(),
                chat: m.chat_id.clone(),
            }));
        }
    }
    out
}

pub(super) fn asked(p: &Pending) -> Action {
    Action::Audit(AuditEvent::PermissionAsked {
        channel: p.chat.channel.clone(),
        chat: p.chat.chat_id.clone(),
        session: p.session.clone(),
        request: p.id.clone(),
        tool: p.call.title.clone(),
        kind: p.call.kind.clone(),
        preview: p.call.preview.clone(),
    })
}

/// `by`: the sender who answered, or `policy`.
pub(super) fn answered(p: &Pending, by: &str, outcome: &PermissionOutcome) -> Action {
    Action::Audit(AuditEvent::PermissionAnswered {
        channel: p.chat.channel.clone(),
        chat: p.chat.chat_id.clone(),
        session: p.session.clone(),
        request: p.id.clone(),
        tool: p.call.title.clone(),
        by: by.to_string(),
        option: option_name(&p.options, outcome),
    })
}

pub(super) fn timed_out(p: &Pending) -> Action {
    Action::Audit(AuditEvent::PermissionTimedOut {
        channel: p.chat.channel.clone(),
        chat: p.chat.chat_id.clone(),
        session: p.session.clone(),
        request: p.id.clone(),
        tool: p.call.title.clone(),
    })
}

/// A decision by the channel's `permissions` policy (no one was asked).
pub(super) fn by_policy(
    chat: &crate::event::ChatRef,
    session: &str,
    call: &crate::event::ToolCall,
    options: &[PermissionOption],
    outcome: &PermissionOutcome,
) -> Action {
    Action::Audit(AuditEvent::PermissionAnswered {
        channel: chat.channel.clone(),
        chat: chat.chat_id.clone(),
        session: session.to_string(),
        request: String::new(),
        tool: call.title.clone(),
        by: "policy".to_string(),
        option: option_name(options, outcome),
    })
}

/// The option chosen, as the agent named it: its id, and its kind.
fn option_name(options: &[PermissionOption], outcome: &PermissionOutcome) -> String {
    match outcome {
        PermissionOutcome::Cancelled => "cancelled".to_string(),
        PermissionOutcome::Selected(id) => match options.iter().find(|o| o.id == *id) {
            Some(option) => format!("{id} ({:?})", option.kind),
            None => id.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use crate::audit::{AuditConfig, AuditEvent, Content};
    use crate::config::{Config, DEFAULT_AGENT, SenderPolicy};
    use crate::core::pairing::Entropy;
    use crate::core::tests::channel;
    use crate::core::{Action, Core, Event};
    use crate::event::*;

    fn core(sender_policy: SenderPolicy, audit: bool) -> Core {
        let mut ch = channel("tg");
        ch.sender_policy = sender_policy;
        let config = Config {
            path: PathBuf::from("/t/config.json"),
            agents: Default::default(),
            channels: [("tg".to_string(), ch)].into(),
            env: Default::default(),
            disabled: Default::default(),
            allowed_channel_types: None,
            audit: audit.then(|| AuditConfig {
                path: PathBuf::from("/t/audit.jsonl"),
                content: Content::Full,
                max_bytes: 1000,
                max_files: 2,
            }),
        };
        let mut core = Core::new(&config);
        core.set_entropy(Entropy::new(|| Some([7; 8])));
        core
    }

    fn dm(sender: &str, text: &str) -> Event {
        Event::Inbound(Inbound::Message(InboundMessage {
            channel: "tg".into(),
            sender_id: sender.into(),
            sender_name: "Ada".into(),
            chat_id: sender.into(),
            message_id: Some(format!("m-{text}")),
            text: text.into(),
            ..Default::default()
        }))
    }

    fn agent(event: AgentEvent) -> Event {
        Event::Agent { agent: DEFAULT_AGENT.into(), event }
    }

    fn permission_request(request: u64) -> Event {
        agent(AgentEvent::PermissionRequested {
            session_id: "s1".into(),
            request,
            call: ToolCall {
                id: "c1".into(),
                title: "touch demo.txt".into(),
                kind: "execute".into(),
                status: "pending".into(),
                preview: "touch demo.txt".into(),
            },
            options: vec![
                PermissionOption { id: "proceed_once".into(), name: "Allow".into(), kind: PermissionKind::AllowOnce },
                PermissionOption { id: "cancel".into(), name: "Reject".into(), kind: PermissionKind::RejectOnce },
            ],
        })
    }

    fn accepted(sender: &str, text: &str) -> AuditEvent {
        AuditEvent::MessageAccepted {
            channel: "tg".into(),
            chat: sender.into(),
            sender: sender.into(),
            sender_name: "Ada".into(),
            message: Some(format!("m-{text}")),
            session: format!("tg:{sender}:{sender}"),
            text: text.into(),
        }
    }

    fn refused(sender: &str, text: &str, gate: &str) -> AuditEvent {
        AuditEvent::MessageRefused {
            channel: "tg".into(),
            chat: sender.into(),
            sender: sender.into(),
            sender_name: "Ada".into(),
            message: Some(format!("m-{text}")),
            gate: gate.into(),
            text: text.into(),
        }
    }

    fn asked(request: &str) -> AuditEvent {
        AuditEvent::PermissionAsked {
            channel: "tg".into(),
            chat: "111".into(),
            session: "tg:111:111".into(),
            request: request.into(),
            tool: "touch demo.txt".into(),
            kind: "execute".into(),
            preview: "touch demo.txt".into(),
        }
    }

    fn records(actions: Vec<Action>) -> Vec<AuditEvent> {
        actions
            .into_iter()
            .filter_map(|a| match a {
                Action::Audit(event) => Some(event),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_core_records_what_it_decides() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(300);
        let script: Vec<(Instant, Event, Vec<AuditEvent>)> = vec![
            (t0, dm("111", "please touch"), vec![accepted("111", "please touch")]),
            (t0, agent(AgentEvent::SessionCreated { key: "tg:111:111".into(), session_id: "s1".into() }), vec![]),
            (t0, permission_request(7), vec![asked("1")]),
            (t0, dm("999", "/approve"), vec![refused("999", "/approve", "sender not in allowedUsers")]),
            (
                t0,
                dm("111", "/approve"),
                vec![
                    accepted("111", "/approve"),
                    AuditEvent::PermissionAnswered {
                        channel: "tg".into(),
                        chat: "111".into(),
                        session: "tg:111:111".into(),
                        request: "1".into(),
                        tool: "touch demo.txt".into(),
                        by: "111".into(),
                        option: "proceed_once (AllowOnce)".into(),
                    },
                ],
            ),
            (t0, permission_request(8), vec![asked("2")]),
            (
                later,
                Event::Tick,
                vec![AuditEvent::PermissionTimedOut {
                    channel: "tg".into(),
                    chat: "111".into(),
                    session: "tg:111:111".into(),
                    request: "2".into(),
                    tool: "touch demo.txt".into(),
                }],
            ),
        ];
        let mut on = core(SenderPolicy::Allowlist, true);
        let mut off = core(SenderPolicy::Allowlist, false);
        for (i, (now, event, expected)) in script.into_iter().enumerate() {
            assert_eq!(records(on.handle(event.clone(), now)), expected, "step {i}");
            assert_eq!(records(off.handle(event, now)), vec![], "step {i}: no audit log, no records");
        }
    }

    #[test]
    fn a_strangers_button_press_is_refused_with_its_gate() {
        let mut core = core(SenderPolicy::Allowlist, true);
        let press = ButtonPress {
            channel: "tg".into(),
            sender_id: "999".into(),
            sender_name: "Eve".into(),
            chat_id: "999".into(),
            data: "perm:1:once".into(),
            callback_id: "cb".into(),
            ..Default::default()
        };
        let expected = AuditEvent::MessageRefused {
            channel: "tg".into(),
            chat: "999".into(),
            sender: "999".into(),
            sender_name: "Eve".into(),
            message: None,
            gate: "sender not in allowedUsers".into(),
            text: String::new(),
        };
        assert_eq!(records(core.handle(Event::Inbound(Inbound::Button(press)), Instant::now())), vec![expected]);
    }

    #[test]
    fn a_stranger_under_pairing_is_refused_and_asks_for_pairing_once() {
        let t0 = Instant::now();
        let mut core = core(SenderPolicy::Pairing, true);
        let gate = "unpaired sender (senderPolicy pairing)";
        let requested = AuditEvent::PairingRequested {
            channel: "tg".into(),
            sender: "999".into(),
            sender_name: "Ada".into(),
            chat: "999".into(),
        };
        let cases = [
            (dm("999", "hi"), vec![refused("999", "hi", gate), requested]),
            (dm("999", "again"), vec![refused("999", "again", gate)]),
        ];
        for (event, expected) in cases {
            assert_eq!(records(core.handle(event, t0)), expected);
        }
    }
}
