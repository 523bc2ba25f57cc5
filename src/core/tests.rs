//! Core tests: sequences of (event, time) in, actions out.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::*;
use crate::core::{Action, Core, Event};
use crate::event::*;

pub(crate) fn channel(name: &str) -> ChannelConfig {
    ChannelConfig {
        name: name.into(),
        kind: ChannelKind::Telegram,
        token: Some(Secret::new("123:abc".into(), None)),
        client_id: None,
        client_secret: None,
        model: None,
        sender_policy: SenderPolicy::Allowlist,
        allowed_users: vec!["111".into()],
        session_scope: SessionScope::User,
        cwd: PathBuf::from("/work"),
        instructions: None,
        approval_mode: None,
        group_policy: GroupPolicy::Disabled,
        groups: BTreeMap::new(),
        dispatch_mode: DispatchMode::Steer,
        block_streaming: false,
        block_min_chars: 400,
        block_max_chars: 1000,
        block_idle: Duration::from_millis(1500),
        permissions: PermissionPolicy::Relay,
        permission_timeout: Duration::from_secs(300),
        show_tool_calls: ToolCallDisplay::Off,
        agent: DEFAULT_AGENT.into(),
        api_base: "http://127.0.0.1:1".into(),
        turn_timeout: Duration::from_secs(1800),
        listen: "127.0.0.1:8787".into(),
        extra: BTreeMap::new(),
    }
}

fn core_with(channels: Vec<ChannelConfig>) -> Core {
    let config = Config {
        path: PathBuf::from("/t/config.json"),
        agents: BTreeMap::new(),
        channels: channels.into_iter().map(|c| (c.name.clone(), c)).collect(),
        env: BTreeMap::new(),
    };
    Core::new(&config)
}

fn dm(sender: &str, text: &str) -> Event {
    Event::Inbound(Inbound::Message(InboundMessage {
        channel: "tg".into(),
        sender_id: sender.into(),
        sender_name: "Ada".into(),
        chat_id: sender.into(),
        is_mentioned: true,
        text: text.into(),
        ..Default::default()
    }))
}

fn agent(event: AgentEvent) -> Event {
    Event::Agent { agent: DEFAULT_AGENT.into(), event }
}

fn chat(id: &str) -> ChatRef {
    ChatRef { channel: "tg".into(), chat_id: id.into(), thread_id: None }
}

fn new_session(key: &str) -> Action {
    Action::Agent {
        agent: DEFAULT_AGENT.into(),
        request: AgentRequest::NewSession { key: key.into(), cwd: PathBuf::from("/work"), model: None },
    }
}

fn prompt(session: &str, text: &str) -> Action {
    Action::Agent {
        agent: DEFAULT_AGENT.into(),
        request: AgentRequest::Prompt { session_id: session.into(), text: text.into() },
    }
}

fn typing(id: &str) -> Action {
    Action::Send(Outbound::Typing { chat: chat(id) })
}

fn text(id: &str, t: &str) -> Action {
    Action::Send(Outbound::Text { chat: chat(id), text: t.into() })
}

/// Run a script of (event, expected actions) against one core, all at time `t0`.
fn check(core: &mut Core, t0: Instant, script: Vec<(Event, Vec<Action>)>) {
    for (i, (event, expected)) in script.into_iter().enumerate() {
        let got = core.handle(event.clone(), t0);
        assert_eq!(got, expected, "step {i}: {event:?}");
    }
}

#[test]
fn allowed_dm_round_trip() {
    let t0 = Instant::now();
    let mut core = core_with(vec![channel("tg")]);
    check(
        &mut core,
        t0,
        vec![
            (dm("111", "hello"), vec![new_session("tg:111:111")]),
            (
                agent(AgentEvent::SessionCreated { key: "tg:111:111".into(), session_id: "s1".into() }),
                vec![typing("111"), prompt("s1", "hello")],
            ),
            (agent(AgentEvent::TextChunk { session_id: "s1".into(), text: "echo: ".into() }), vec![]),
            (agent(AgentEvent::TextChunk { session_id: "s1".into(), text: "hello".into() }), vec![]),
            (
                agent(AgentEvent::TurnEnded { session_id: "s1".into(), outcome: TurnOutcome::EndTurn }),
                vec![text("111", "echo: hello")],
            ),
            // The session is reused.
            (dm("111", "again"), vec![typing("111"), prompt("s1", "again")]),
        ],
    );
}

#[test]
fn strangers_never_reach_the_agent() {
    let t0 = Instant::now();
    let mut open = channel("tg");
    open.sender_policy = SenderPolicy::Open;
    for (channels, sender, reaches) in
        [(vec![channel("tg")], "999", false), (vec![channel("tg")], "111", true), (vec![open.clone()], "999", true)]
    {
        let mut core = core_with(channels);
        let got = core.handle(dm(sender, "hi"), t0);
        assert_eq!(!got.is_empty(), reaches, "sender {sender}");
    }
}

#[test]
fn groups_are_ignored_by_default() {
    let t0 = Instant::now();
    let mut core = core_with(vec![channel("tg")]);
    let msg = InboundMessage {
        channel: "tg".into(),
        sender_id: "111".into(),
        chat_id: "-100".into(),
        is_group: true,
        is_mentioned: true,
        text: "hi".into(),
        ..Default::default()
    };
    assert_eq!(core.handle(Event::Inbound(Inbound::Message(msg)), t0), vec![]);
}

#[test]
fn one_prompt_in_flight_per_session_and_messages_wait_their_turn() {
    let t0 = Instant::now();
    let mut core = core_with(vec![channel("tg")]);
    check(
        &mut core,
        t0,
        vec![
            (dm("111", "one"), vec![new_session("tg:111:111")]),
            // A second message before the session exists shares it (no second session/new).
            (dm("111", "two"), vec![]),
            (
                agent(AgentEvent::SessionCreated { key: "tg:111:111".into(), session_id: "s1".into() }),
                vec![typing("111"), prompt("s1", "one")],
            ),
            (dm("111", "three"), vec![]),
            (
                agent(AgentEvent::TurnEnded { session_id: "s1".into(), outcome: TurnOutcome::EndTurn }),
                vec![text("111", "(The agent finished without a text answer.)"), typing("111"), prompt("s1", "two")],
            ),
            (
                agent(AgentEvent::TurnEnded { session_id: "s1".into(), outcome: TurnOutcome::Failed("boom".into()) }),
                vec![text("111", "Sorry, the agent failed: boom"), typing("111"), prompt("s1", "three")],
            ),
        ],
    );
}

#[test]
fn typing_is_refreshed_while_a_turn_runs() {
    let t0 = Instant::now();
    let mut core = core_with(vec![channel("tg")]);
    core.handle(dm("111", "hi"), t0);
    core.handle(agent(AgentEvent::SessionCreated { key: "tg:111:111".into(), session_id: "s1".into() }), t0);
    assert_eq!(core.next_deadline(), Some(t0 + Duration::from_secs(4)));
    assert_eq!(core.handle(Event::Tick, t0 + Duration::from_secs(3)), vec![]);
    assert_eq!(core.handle(Event::Tick, t0 + Duration::from_secs(4)), vec![typing("111")]);
    assert_eq!(core.next_deadline(), Some(t0 + Duration::from_secs(8)));
    core.handle(agent(AgentEvent::TurnEnded { session_id: "s1".into(), outcome: TurnOutcome::EndTurn }), t0);
    assert_eq!(core.next_deadline(), None);
}

#[test]
fn instructions_go_with_the_first_prompt_only() {
    let t0 = Instant::now();
    let mut ch = channel("tg");
    ch.instructions = Some("Be brief.".into());
    let mut core = core_with(vec![ch]);
    core.handle(dm("111", "one"), t0);
    let got = core.handle(agent(AgentEvent::SessionCreated { key: "tg:111:111".into(), session_id: "s1".into() }), t0);
    assert_eq!(got[1], prompt("s1", "Be brief.\n\none"));
    core.handle(agent(AgentEvent::TurnEnded { session_id: "s1".into(), outcome: TurnOutcome::EndTurn }), t0);
    assert_eq!(core.handle(dm("111", "two"), t0)[1], prompt("s1", "two"));
}

#[test]
fn agent_exit_tells_waiting_users_and_forgets_sessions() {
    let t0 = Instant::now();
    let mut core = core_with(vec![channel("tg")]);
    core.handle(dm("111", "hi"), t0);
    core.handle(agent(AgentEvent::SessionCreated { key: "tg:111:111".into(), session_id: "s1".into() }), t0);
    let got = core.handle(agent(AgentEvent::Exited { reason: "exited with status 3".into() }), t0);
    assert_eq!(
        got,
        vec![text(
            "111",
            "The agent stopped (exited with status 3). Your message was not answered; please send it again."
        )]
    );
    // Late events of the dead session are ignored; the next message opens a new session.
    assert_eq!(core.handle(agent(AgentEvent::TextChunk { session_id: "s1".into(), text: "x".into() }), t0), vec![]);
    assert_eq!(core.handle(dm("111", "again"), t0), vec![new_session("tg:111:111")]);
}

#[test]
fn session_failure_is_reported_to_the_chat() {
    let t0 = Instant::now();
    let mut core = core_with(vec![channel("tg")]);
    core.handle(dm("111", "hi"), t0);
    let got = core.handle(
        agent(AgentEvent::SessionFailed { key: "tg:111:111".into(), error: "Authentication required (-32000)".into() }),
        t0,
    );
    assert_eq!(got, vec![text("111", "The agent could not start a conversation: Authentication required (-32000)")]);
}
