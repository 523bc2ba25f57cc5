//! Named tasks in the core: selection, labels, limits, close and reopen, a restart.

use super::*;

fn multi() -> ChannelConfig {
    let mut ch = open_channel(DispatchMode::Followup);
    ch.multi_session = true;
    ch
}

fn command(core: &mut Core, event: Event, now: Instant) -> String {
    reply(&core.handle(event, now))
}

const BASE: &str = "tg:111:111";

fn task(name: &str) -> String {
    format!("{BASE}#{name}")
}

#[test]
fn the_selected_task_gets_the_message_others_keep_running_and_answers_are_labelled() {
    let now = Instant::now();
    let mut core = core_with(vec![multi()]);
    let reply = command(&mut core, dm("111", "/session new Deploy"), now);
    assert!(reply.starts_with("Task \"Deploy\" created and selected"), "{reply}");
    assert_eq!(core.handle(dm("111", "ship it"), now), vec![new_session(&task("deploy"))]);
    assert_eq!(core.handle(created(&task("deploy"), "S1"), now), vec![typing("111"), prompt("S1", "ship it")]);
    command(&mut core, dm("111", "/session new docs"), now);
    assert_eq!(core.handle(dm("111", "write the readme"), now), vec![new_session(&task("docs"))]);
    assert_eq!(core.handle(created(&task("docs"), "S2"), now), vec![typing("111"), prompt("S2", "write the readme")]);
    // Both run at once; each answer says which task it is.
    core.handle(chunk("S2", "readme done"), now);
    assert_eq!(core.handle(ended("S2", TurnOutcome::EndTurn), now), vec![text("111", "[docs] readme done")]);
    core.handle(chunk("S1", "shipped"), now);
    assert_eq!(core.handle(ended("S1", TurnOutcome::EndTurn), now), vec![text("111", "[Deploy] shipped")]);
    assert_eq!(command(&mut core, dm("111", "/session current"), now), "Current task: \"docs\".");
    assert_eq!(command(&mut core, dm("111", "/session use deploy"), now), "Now on task \"Deploy\".");
    assert_eq!(core.handle(dm("111", "again"), now), vec![typing("111"), prompt("S1", "again")]);
    assert_eq!(command(&mut core, dm("111", "/sessions"), now), "Tasks:\n▶ Deploy — working\n· docs — idle");
    // Back to the main conversation: no label.
    assert_eq!(command(&mut core, dm("111", "/session use"), now), "Back to your main conversation.");
    assert_eq!(core.handle(dm("111", "plain"), now), vec![new_session(BASE)]);
}

#[test]
fn in_a_group_the_label_names_the_sender_and_the_task() {
    let now = Instant::now();
    let mut core = core_with(vec![multi()]);
    let key = "tg:111:-5#fix";
    command(&mut core, inbound(group_msg("111", "-5", None, "/session new fix")), now);
    assert_eq!(core.handle(inbound(group_msg("111", "-5", None, "go")), now), vec![new_session(key)]);
    core.handle(created(key, "G1"), now);
    core.handle(chunk("G1", "fixed"), now);
    assert_eq!(core.handle(ended("G1", TurnOutcome::EndTurn), now), vec![text("-5", "[Ada · fix] fixed")]);
}

#[test]
fn task_names_and_limits() {
    let now = Instant::now();
    let mut core = core_with(vec![multi()]);
    let table: &[(&str, &str)] = &[
        ("/session new", "A task name has 1–32 letters, digits, _ or - (got \"\")."),
        ("/session new a b", "A task name has 1–32 letters, digits, _ or - (got \"a b\")."),
        ("/session new héllo", "A task name has 1–32 letters, digits, _ or - (got \"héllo\")."),
        ("/session new x23456789012345678901234567890123", "A task name has 1–32"),
        ("/session new ok_1-x", "Task \"ok_1-x\" created"),
        ("/session new OK_1-X", "There is a task \"ok_1-x\" already: /session use ok_1-x switches to it."),
        ("/session use nope", "There is no task \"nope\""),
        ("/session close nope", "There is no open task \"nope\""),
        ("/session frob", "Unknown /session command \"frob\"."),
    ];
    for (input, start) in table {
        let got = command(&mut core, dm("111", input), now);
        assert!(got.starts_with(start), "{input}: {got}");
    }
    for i in 2..=8 {
        assert!(command(&mut core, dm("111", &format!("/session new t{i}")), now).starts_with("Task "));
    }
    let ninth = command(&mut core, dm("111", "/session new t9"), now);
    assert_eq!(ninth, "You have 8 open tasks, the most allowed here: /session close one first.");
    // Another person in the same chat has their own eight.
    let mut other = dm_msg("222", "/session new t9");
    other.chat_id = "111".into();
    assert!(command(&mut core, inbound(other), now).starts_with("Task \"t9\" created"));
    // Without multiSession there are no tasks.
    let mut plain = core_with(vec![open_channel(DispatchMode::Steer)]);
    let got = command(&mut plain, dm("111", "/session new x"), now);
    assert_eq!(got, "Named tasks are off in this channel (the operator can set \"multiSession\": true).");
}

#[test]
fn a_closed_task_keeps_its_conversation_and_use_reopens_it_with_session_load() {
    let now = Instant::now();
    let mut core = core_with(vec![multi()]);
    core.handle(agent(AgentEvent::Ready { load_session: true }), now);
    command(&mut core, dm("111", "/session new deploy"), now);
    core.handle(dm("111", "ship it"), now);
    core.handle(created(&task("deploy"), "S1"), now);
    core.handle(ended("S1", TurnOutcome::EndTurn), now);
    let closed = command(&mut core, dm("111", "/session close deploy"), now);
    assert_eq!(closed, "Task \"deploy\" closed; its conversation is kept: /session use deploy reopens it.");
    assert!(core.sessions_snapshot().contains_key(&task("deploy")), "kept for sessions.json");
    assert_eq!(
        command(&mut core, dm("111", "/sessions all"), now),
        "Tasks:\n· deploy — closed\n(no task selected: messages go to your main conversation)"
    );
    // The tasks and sessions survive a restart.
    let saved = core.tasks_to_save().unwrap();
    let snapshot = core.sessions_snapshot();
    let mut core = core_with(vec![multi()]);
    core.handle(agent(AgentEvent::Ready { load_session: true }), now);
    core.adopt(snapshot);
    core.adopt_tasks(saved);
    let reopened = command(&mut core, dm("111", "/session use deploy"), now);
    assert_eq!(reopened, "Task \"deploy\" reopened and selected: it goes on where it was closed.");
    let load = Action::Agent {
        agent: DEFAULT_AGENT.into(),
        request: AgentRequest::LoadSession {
            key: task("deploy"),
            session_id: "S1".into(),
            cwd: PathBuf::from("/work"),
            model: None,
        },
    };
    assert_eq!(core.handle(dm("111", "status?"), now), vec![load]);
    assert_eq!(core.handle(created(&task("deploy"), "S1"), now), vec![typing("111"), prompt("S1", "status?")]);
}

#[test]
fn session_cancel_cancels_a_task_by_name() {
    let now = Instant::now();
    let mut core = core_with(vec![multi()]);
    command(&mut core, dm("111", "/session new a"), now);
    core.handle(dm("111", "work"), now);
    core.handle(created(&task("a"), "S1"), now);
    command(&mut core, dm("111", "/session new b"), now);
    let actions = core.handle(dm("111", "/session cancel a"), now);
    assert!(actions.contains(&cancel("S1")), "{actions:?}");
    assert!(actions.contains(&text("111", "Cancelled the request of task \"a\".")), "{actions:?}");
    assert_eq!(command(&mut core, dm("111", "/session cancel"), now), "Task \"b\" has no request running.");
}

#[test]
fn a_worktree_task_works_in_its_worktree_once_git_made_it() {
    let now = Instant::now();
    let mut core = core_with(vec![multi()]);
    let actions = core.handle(dm("111", "/session new wt --worktree"), now);
    let path = PathBuf::from("/work/.worktrees/wt");
    let make = Action::CreateWorktree {
        base: BASE.into(),
        name: "wt".into(),
        chat: chat("111"),
        repo: PathBuf::from("/work"),
        path: path.clone(),
    };
    assert_eq!(actions, vec![make, text("111", "Making a git worktree for task \"wt\"…")]);
    // Not selectable meanwhile; messages still go to the main conversation.
    let got = command(&mut core, dm("111", "/session use wt"), now);
    assert_eq!(got, "Task \"wt\" is still waiting for its git worktree.");
    let done =
        Event::WorktreeDone { base: BASE.into(), name: "wt".into(), chat: chat("111"), result: Ok(path.clone()) };
    assert_eq!(
        core.handle(done, now),
        vec![text("111", "Task \"wt\" created and selected; it works in the git worktree /work/.worktrees/wt.")]
    );
    let open = Action::Agent {
        agent: DEFAULT_AGENT.into(),
        request: AgentRequest::NewSession { key: task("wt"), cwd: path, model: None },
    };
    assert_eq!(core.handle(dm("111", "hi"), now), vec![open]);
    // Where git fails, the task is not made and the chat is told why.
    core.handle(dm("111", "/session new other --worktree"), now);
    let failed = Event::WorktreeDone {
        base: BASE.into(),
        name: "other".into(),
        chat: chat("111"),
        result: Err("/work is not a git repository, so a task cannot have a worktree there.".into()),
    };
    assert_eq!(
        core.handle(failed, now),
        vec![text(
            "111",
            "Task \"other\" was not created: /work is not a git repository, so a task cannot have a worktree there."
        )]
    );
    assert_eq!(command(&mut core, dm("111", "/sessions all"), now), "Tasks:\n▶ wt — waiting");
}
