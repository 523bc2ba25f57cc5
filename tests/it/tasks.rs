//! Named tasks end to end (fake Bot API ⇄ tether ⇄ demo agent, `multiSession: true`): two
//! tasks run at once and answer labelled; a restart keeps the tasks and which is selected.

use std::time::Duration;

use serde_json::json;

use crate::support::fake_telegram::{FakeTelegram, TOKEN};
use crate::support::{Service, TempDir, demo_agent, wait_until};

const WAIT: Duration = Duration::from_secs(20);
const USER: i64 = 111;
const TICKS: &str = "tick 0 tick 1 tick 2 tick 3 tick 4 tick 5 tick 6 tick 7 tick 8 tick 9";

/// Wait for a text to `USER` after the first `skip` that satisfies `want`.
fn wait_text(fake: &FakeTelegram, skip: usize, want: impl Fn(&str) -> bool) -> bool {
    wait_until(WAIT, || fake.texts_to(USER).iter().skip(skip).any(|t| want(t)))
}

#[test]
fn two_named_tasks_answer_labelled_and_survive_a_restart() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("tasks");
    let channel = json!({
        "type": "telegram", "token": TOKEN, "apiBase": fake.url(),
        "senderPolicy": "allowlist", "allowedUsers": [USER.to_string()], "multiSession": true,
    });
    home.write_config(&json!({"agent": demo_agent(), "channels": {"phone": channel}}));
    let mut service = Service::start(&home, &[]);
    fake.send_dm(USER, "/session new build");
    assert!(
        wait_text(&fake, 0, |t| t.starts_with("Task \"build\" created")),
        "{:?}\n{}",
        fake.texts_to(USER),
        service.log()
    );
    // A slow turn in "build"; meanwhile "notes" answers.
    fake.send_dm(USER, "slow=300");
    fake.send_dm(USER, "/session new notes");
    fake.send_dm(USER, "hello");
    assert!(wait_text(&fake, 0, |t| t == format!("[build] {TICKS}")), "{:?}\n{}", fake.texts_to(USER), service.log());
    let texts = fake.texts_to(USER);
    let notes = texts.iter().position(|t| t == "[notes] echo: hello");
    let build = texts.iter().position(|t| t.starts_with("[build] tick"));
    assert!(notes.is_some() && notes < build, "notes answered while build still ran: {texts:?}");

    service.signal("TERM");
    assert!(service.wait_exit(WAIT).is_some(), "did not stop");
    let service = Service::start(&home, &[]);
    let before = fake.texts_to(USER).len();
    fake.send_dm(USER, "/sessions");
    assert!(
        wait_text(&fake, before, |t| t == "Tasks:\n· build — idle\n▶ notes — idle"),
        "{:?}\n{}",
        fake.texts_to(USER),
        service.log()
    );
    fake.send_dm(USER, "again");
    assert!(wait_text(&fake, before, |t| t == "[notes] echo: again"), "{:?}", fake.texts_to(USER));
}

#[test]
fn a_worktree_task_gets_its_own_git_worktree_under_cwd() {
    let fake = FakeTelegram::start();
    let home = TempDir::new("worktree");
    let repo = home.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    for args in [
        &["init", "-q"][..],
        &["-c", "user.email=t@e.st", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "init"],
    ] {
        let status = std::process::Command::new("git").arg("-C").arg(&repo).args(args).status().unwrap();
        assert!(status.success(), "git {args:?}");
    }
    let channel = json!({
        "type": "telegram", "token": TOKEN, "apiBase": fake.url(), "cwd": repo,
        "senderPolicy": "allowlist", "allowedUsers": [USER.to_string()], "multiSession": true,
    });
    home.write_config(&json!({"agent": demo_agent(), "channels": {"phone": channel}}));
    let service = Service::start(&home, &[]);
    fake.send_dm(USER, "/session new wt --worktree");
    let made = format!(
        "Task \"wt\" created and selected; it works in the git worktree {}.",
        repo.join(".worktrees/wt").display()
    );
    assert!(wait_text(&fake, 0, |t| t == made), "{:?}\n{}", fake.texts_to(USER), service.log());
    assert!(repo.join(".worktrees/wt/.git").exists(), "no worktree checkout");
    fake.send_dm(USER, "hi");
    assert!(wait_text(&fake, 0, |t| t == "[wt] echo: hi"), "{:?}", fake.texts_to(USER));
    // A second worktree task gets its own checkout and branch.
    fake.send_dm(USER, "/session close wt");
    fake.send_dm(USER, "/session new WT2 --worktree");
    assert!(wait_text(&fake, 0, |t| t.starts_with("Task \"WT2\" created and selected")), "{:?}", fake.texts_to(USER));
}
