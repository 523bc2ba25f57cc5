//! Scheduled loops in the core: `/loop` in a chat, due runs, overlaps, missed runs after a
//! restart, a chat no longer allowed.

use super::*;
use crate::core::loops::{Book, LoopFile, LoopTool};
use crate::vec_map::VecMap;

/// 2026-03-01 10:00:00 UTC.
const T0: u64 = 1_772_359_200_000;
const MINUTE: u64 = 60_000;

fn loop_chat() -> ChatRef {
    chat("111")
}

fn loop_key(id: u32) -> String {
    format!("loop:tg:{id}")
}

fn loop_core() -> Core {
    let mut core = core_with(vec![channel("tg")]);
    core.adopt_loops(Book::new(LoopFile::default(), crate::time_zone::TimeZone::UTC), Instant::now());
    core.set_wall_clock(T0);
    core
}

fn command(core: &mut Core, text: &str, now: Instant) -> String {
    reply(&core.handle(dm("111", text), now))
}

/// The clock moves to `wall` (Unix ms) and ticks.
fn tick_at(core: &mut Core, wall: u64, now: Instant) -> Vec<Action> {
    core.set_wall_clock(wall);
    core.handle(Event::Tick, now)
}

#[test]
fn a_loop_added_in_a_chat_runs_in_its_own_session_and_answers_marked() {
    let now = Instant::now();
    let mut core = loop_core();
    let added = command(&mut core, "/loop add \"*/5 * * * *\" check the deployment", now);
    assert_eq!(
        added,
        "Loop 1 added: \"*/5 * * * *\". Next runs: 2026-03-01 10:05 UTC, 2026-03-01 10:10 UTC, 2026-03-01 10:15 UTC. \
         Answers come here marked [loop 1]."
    );
    assert!(core.loops_to_save().is_some(), "the file is saved after an add");
    assert!(core.next_deadline().is_some_and(|d| d <= now + Duration::from_secs(60)));
    // Not due yet.
    assert_eq!(tick_at(&mut core, T0 + 4 * MINUTE, now), vec![]);
    // Due: its own session, then its own turn.
    assert_eq!(tick_at(&mut core, T0 + 5 * MINUTE, now), vec![new_session(&loop_key(1))]);
    assert_eq!(
        core.handle(created(&loop_key(1), "L1"), now),
        vec![typing("111"), prompt("L1", "check the deployment")]
    );
    // The user's own conversation is another session.
    assert_eq!(core.handle(dm("111", "hello"), now), vec![new_session("tg:111:111")]);
    core.handle(chunk("L1", "all green"), now);
    let actions = core.handle(ended("L1", TurnOutcome::EndTurn), now);
    assert_eq!(actions, vec![text("111", "[loop 1] all green")]);
    let listed = command(&mut core, "/loop list", now);
    assert_eq!(listed, "Loops in this chat:\n1 · \"*/5 * * * *\" · next 2026-03-01 10:10 UTC · check the deployment");
    let inspected = command(&mut core, "/loop inspect 1", now);
    assert!(
        inspected.contains("Last run: 2026-03-01 10:05 UTC; runs: 1; skipped (previous run still going): 0"),
        "{inspected}"
    );
    assert_eq!(command(&mut core, "/loop cancel 1", now), "Loop 1 cancelled.");
    assert_eq!(tick_at(&mut core, T0 + 10 * MINUTE, now), vec![]);
    assert_eq!(
        command(&mut core, "/loop list", now),
        format!("No loops in this chat. {}", crate::core::loops::USAGE_ADD)
    );
}

#[test]
fn a_run_due_while_the_previous_one_runs_is_skipped_and_counted() {
    let now = Instant::now();
    let mut core = loop_core();
    command(&mut core, "/loop add \"* * * * *\" watch", now);
    tick_at(&mut core, T0 + MINUTE, now);
    core.handle(created(&loop_key(1), "L1"), now);
    // Still running a minute later, and the next.
    assert_eq!(tick_at(&mut core, T0 + 2 * MINUTE, now), vec![]);
    assert_eq!(tick_at(&mut core, T0 + 3 * MINUTE, now), vec![]);
    let inspected = command(&mut core, "/loop inspect 1", now);
    assert!(inspected.contains("runs: 1; skipped (previous run still going): 2"), "{inspected}");
    core.handle(ended("L1", TurnOutcome::EndTurn), now);
    // Free again: the next one runs in the same session.
    assert_eq!(tick_at(&mut core, T0 + 4 * MINUTE, now), vec![typing("111"), prompt("L1", "watch")]);
}

#[test]
fn runs_missed_while_stopped_run_once_at_start() {
    let now = Instant::now();
    let mut core = loop_core();
    command(&mut core, "/loop add \"*/10 * * * *\" report", now);
    let file = core.loops_to_save().unwrap();
    assert_eq!(file.loops[0].next_run_ms, Some(T0 + 10 * MINUTE));
    // tether was stopped for an hour: six runs missed.
    let mut restarted = core_with(vec![channel("tg")]);
    restarted.set_wall_clock(T0 + 65 * MINUTE);
    restarted.adopt_loops(Book::new(file, crate::time_zone::TimeZone::UTC), now);
    assert_eq!(restarted.next_deadline(), Some(now), "due at once");
    assert_eq!(restarted.handle(Event::Tick, now), vec![new_session(&loop_key(1))]);
    assert_eq!(restarted.handle(Event::Tick, now), vec![], "once, not once per missed slot");
    let saved = restarted.loops_to_save().unwrap();
    assert_eq!((saved.loops[0].runs, saved.loops[0].next_run_ms), (1, Some(T0 + 70 * MINUTE)));
}

#[test]
fn a_loop_whose_chat_is_no_longer_allowed_is_disabled_and_listed_so() {
    let now = Instant::now();
    let mut core = loop_core();
    command(&mut core, "/loop add \"0 * * * *\" hourly", now);
    // The operator removes the creator from allowedUsers.
    let mut changed = channel("tg");
    changed.allowed_users = vec!["222".into()];
    let config = Config {
        path: PathBuf::from("/t/config.json"),
        agents: VecMap::new(),
        channels: [("tg".to_string(), changed)].into_iter().collect(),
        env: VecMap::new(),
        disabled: Default::default(),
        allowed_channel_types: None,
        audit: None,
    };
    core.set_channels(&config);
    assert_eq!(tick_at(&mut core, T0 + 60 * MINUTE, now), vec![]);
    let file = core.loops_to_save().unwrap();
    assert!(!file.loops[0].enabled);
    assert_eq!(
        core.loops.list(&loop_chat()),
        "Loops in this chat:\n1 · \"0 * * * *\" · disabled: this chat or its creator is no longer allowed to use the bot · hourly"
    );
    assert_eq!(core.next_deadline(), None, "a disabled loop needs no clock");
}

#[test]
fn loop_commands_refuse_what_is_wrong() {
    let now = Instant::now();
    let mut core = loop_core();
    let table: &[(&str, &str)] = &[
        ("/loop add */5 * * * * x", "Put the schedule in double quotes."),
        ("/loop add \"*/5 * * *\" x", "That schedule is not valid: a schedule has 5 fields"),
        ("/loop add \"61 * * * *\" x", "That schedule is not valid: minute field \"61\": 61 is outside 0–59."),
        ("/loop add \"0 0 30 2 *\" x", "The schedule \"0 0 30 2 *\" never comes due"),
        ("/loop add \"@daily\"", "The loop needs a prompt after the schedule."),
        ("/loop inspect 9", "There is no loop 9 in this chat; /loop list shows them."),
        ("/loop cancel x", "\"x\" is not a loop id; /loop list shows them."),
        ("/loop frobnicate", "Unknown /loop command \"frobnicate\"."),
    ];
    for (input, start) in table {
        let got = command(&mut core, input, now);
        assert!(got.starts_with(start), "{input}: {got}");
    }
    let long = "x".repeat(4001);
    let got = command(&mut core, &format!("/loop add \"@hourly\" {long}"), now);
    assert_eq!(got, "The prompt has 4001 characters; a loop's prompt may have at most 4000.");
    for i in 0..10 {
        assert!(command(&mut core, &format!("/loop add \"@hourly\" p{i}"), now).starts_with("Loop "));
    }
    let got = command(&mut core, "/loop add \"@hourly\" one more", now);
    assert!(got.starts_with("This chat has 10 loops already"), "{got}");
    // Another chat has its own ten.
    let mut other = dm_msg("111", "/loop list");
    other.chat_id = "555".into();
    assert!(reply(&core.handle(inbound(other), now)).starts_with("No loops in this chat."));
}

#[test]
fn loops_are_refused_in_single_scope() {
    let now = Instant::now();
    let mut ch = channel("tg");
    ch.session_scope = SessionScope::Single;
    let mut core = core_with(vec![ch]);
    core.set_wall_clock(T0);
    let got = reply(&core.handle(dm("111", "/loop add \"@hourly\" x"), now));
    assert!(got.starts_with("Loops are not available in this channel"), "{got}");
}

/// The agent's loop tools (`tether mcp`) in the session of user 111's DM, opened.
fn core_with_open_dm(now: Instant) -> Core {
    let mut core = loop_core();
    core.handle(dm("111", "hello"), now);
    core.handle(created("tg:111:111", "S1"), now);
    core.handle(ended("S1", TurnOutcome::EndTurn), now);
    core
}

#[test]
fn the_agent_creates_lists_and_cancels_loops_of_its_sessions_chat() {
    let now = Instant::now();
    let mut core = core_with_open_dm(now);
    let create = LoopTool::Create { cron: "*/5 * * * *".into(), prompt: "check the deployment".into() };
    let (result, actions) = core.loop_tool("tg:111:111", create, now);
    assert_eq!(
        result.as_deref(),
        Ok("Loop 1 added: \"*/5 * * * *\". Next runs: 2026-03-01 10:05 UTC, 2026-03-01 10:10 UTC, \
            2026-03-01 10:15 UTC. Answers come here marked [loop 1].")
    );
    assert_eq!(actions, vec![]);
    let saved = core.loops_to_save().expect("saved after the agent's add");
    let l = &saved.loops[0];
    assert_eq!((l.chat_id.as_str(), l.sender_id.as_str(), l.is_group), ("111", "111", false));
    // The same loop as `/loop add` made: listed in the chat, run at its time.
    assert_eq!(
        core.loop_tool("tg:111:111", LoopTool::List, now).0.as_deref(),
        Ok("Loops in this chat:\n1 · \"*/5 * * * *\" · next 2026-03-01 10:05 UTC · check the deployment")
    );
    assert!(command(&mut core, "/loop list", now).starts_with("Loops in this chat:\n1 · "));
    assert_eq!(tick_at(&mut core, T0 + 5 * MINUTE, now), vec![new_session(&loop_key(1))]);
    core.handle(created(&loop_key(1), "L1"), now);
    // Cancelled while its run goes on: the run is cancelled too.
    let (result, actions) = core.loop_tool("tg:111:111", LoopTool::Cancel { id: 1 }, now);
    assert_eq!(result.as_deref(), Ok("Loop 1 cancelled."));
    assert_eq!(actions, vec![cancel("L1")]);
    assert_eq!(
        core.loop_tool("tg:111:111", LoopTool::List, now).0,
        Ok(format!("No loops in this chat. {}", crate::core::loops::USAGE_ADD))
    );
}

#[test]
fn the_agents_loop_tools_refuse_what_is_wrong() {
    let now = Instant::now();
    let mut core = core_with_open_dm(now);
    // A loop of another chat (555) of the same person.
    let mut other = dm_msg("111", "/loop add \"@hourly\" elsewhere");
    other.chat_id = "555".into();
    assert!(reply(&core.handle(inbound(other), now)).starts_with("Loop 1 added"));
    let create = |cron: &str, prompt: &str| LoopTool::Create { cron: cron.into(), prompt: prompt.into() };
    let long = "x".repeat(4001);
    let table: Vec<(&str, LoopTool, &str)> = vec![
        ("tg:999:999", LoopTool::List, "tether has no conversation \"tg:999:999\" now"),
        ("tg:111:111", create("*/5 * * *", "x"), "That schedule is not valid: a schedule has 5 fields"),
        ("tg:111:111", create("0 0 30 2 *", "x"), "The schedule \"0 0 30 2 *\" never comes due"),
        ("tg:111:111", create("@hourly", "  "), "The loop needs a prompt after the schedule."),
        ("tg:111:111", create("@hourly", &long), "The prompt has 4001 characters"),
        ("tg:111:111", LoopTool::Cancel { id: 1 }, "There is no loop 1 in this chat"),
    ];
    for (key, tool, start) in table {
        let (result, actions) = core.loop_tool(key, tool.clone(), now);
        let error = result.expect_err(&format!("{key} {tool:?}"));
        assert!(error.starts_with(start), "{key} {tool:?}: {error}");
        assert_eq!(actions, vec![]);
    }
    for i in 0..10 {
        assert!(core.loop_tool("tg:111:111", create("@hourly", &format!("p{i}")), now).0.is_ok());
    }
    let error = core.loop_tool("tg:111:111", create("@hourly", "one more"), now).0.unwrap_err();
    assert!(error.starts_with("This chat has 10 loops already"), "{error}");
    // The other chat's loop is still there.
    assert_eq!(core.loops.file().loops.iter().filter(|l| l.chat_id == "555").count(), 1);
}

#[test]
fn the_agents_loop_tools_are_refused_in_single_scope() {
    let now = Instant::now();
    let mut ch = channel("tg");
    ch.session_scope = SessionScope::Single;
    let mut core = core_with(vec![ch]);
    core.set_wall_clock(T0);
    core.handle(dm("111", "hello"), now);
    core.handle(created("tg:__single__", "S1"), now);
    let create = LoopTool::Create { cron: "@hourly".into(), prompt: "x".into() };
    let error = core.loop_tool("tg:__single__", create, now).0.unwrap_err();
    assert!(error.starts_with("Loops are not available in this channel"), "{error}");
    assert_eq!(core.loops.file().loops.len(), 0);
}

#[test]
fn a_loop_the_agent_creates_in_a_shared_group_session_is_the_running_turns_writers() {
    let now = Instant::now();
    let mut ch = open_channel(DispatchMode::Followup);
    ch.session_scope = SessionScope::Thread;
    let mut core = core_with(vec![ch]);
    core.set_wall_clock(T0);
    core.adopt_loops(Book::new(LoopFile::default(), crate::time_zone::TimeZone::UTC), now);
    core.handle(inbound(group_msg("111", "-100", None, "watch the build")), now);
    core.handle(created("tg:-100", "G1"), now);
    // 222 writes while 111's turn runs: the agent works for 111 in that turn.
    core.handle(inbound(group_msg("222", "-100", None, "and me")), now);
    let create = |prompt: &str| LoopTool::Create { cron: "@hourly".into(), prompt: prompt.into() };
    assert!(core.loop_tool("tg:-100", create("build"), now).0.is_ok());
    // 222's turn next.
    core.handle(ended("G1", TurnOutcome::EndTurn), now);
    assert!(core.loop_tool("tg:-100", create("mine"), now).0.is_ok());
    let saved = core.loops_to_save().unwrap();
    let owners: Vec<(&str, &str, bool)> =
        saved.loops.iter().map(|l| (l.chat_id.as_str(), l.sender_id.as_str(), l.is_group)).collect();
    assert_eq!(owners, vec![("-100", "111", true), ("-100", "222", true)]);
}

#[test]
fn the_operator_cancels_any_loop_by_id_and_its_running_turn() {
    let now = Instant::now();
    let mut core = core_with_open_dm(now);
    let create = LoopTool::Create { cron: "*/5 * * * *".into(), prompt: "check".into() };
    assert!(core.loop_tool("tg:111:111", create, now).0.is_ok());
    core.loops_to_save();
    assert_eq!(tick_at(&mut core, T0 + 5 * MINUTE, now), vec![new_session(&loop_key(1))]);
    core.handle(created(&loop_key(1), "L1"), now);
    let table: Vec<(LoopTool, Result<&str, &str>, Vec<Action>)> = vec![
        (LoopTool::List, Err("the command line may only cancel loops through the service"), vec![]),
        (LoopTool::Cancel { id: 9 }, Err("there is no loop 9; `tether loops list` shows them"), vec![]),
        (LoopTool::Cancel { id: 1 }, Ok("Loop 1 cancelled."), vec![cancel("L1")]),
        (LoopTool::Cancel { id: 1 }, Err("there is no loop 1; `tether loops list` shows them"), vec![]),
    ];
    for (tool, expected, expected_actions) in table {
        let (result, actions) = core.operator_loop_tool(tool.clone(), now);
        assert_eq!(result.as_deref().map_err(String::as_str), expected, "{tool:?}");
        assert_eq!(actions, expected_actions, "{tool:?}");
    }
    assert_eq!(core.loops_to_save().map(|f| f.loops.len()), Some(0), "saved without it");
}
