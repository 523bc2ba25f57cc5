//! `/session new NAME --worktree`: a git worktree for a task under the channel's `cwd`, made
//! with the `git` command on its own thread (bounded in time), so the task's agent session
//! works on its own checkout and branch.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one git command may take.
pub const GIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Run `git -C repo worktree add -b task/NAME path`; the error says what to do.
pub fn create(repo: &Path, path: &Path, name: &str) -> Result<PathBuf, String> {
    let top = git(repo, &["rev-parse", "--show-toplevel"])
        .map_err(|_| format!("{} is not a git repository, so a task cannot have a worktree there.", repo.display()))?;
    log::debug!(target: "tether", "worktree for task {name} in repository {}", top.trim());
    let branch = format!("task/{name}");
    let target = path.to_string_lossy().to_string();
    git(repo, &["worktree", "add", "-b", &branch, &target, "HEAD"])
        .map_err(|e| format!("git could not make the worktree {target} (branch {branch}): {e}"))?;
    Ok(path.to_path_buf())
}

/// Run git in `dir`; its stdout, or its stderr's last line as the error.
fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let mut child = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run git: {e}"))?;
    let deadline = Instant::now() + GIT_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("git {} took longer than {} s", args.join(" "), GIT_TIMEOUT.as_secs()));
            }
            Err(e) => return Err(format!("waiting for git: {e}")),
        }
    }
    let output = child.wait_with_output().map_err(|e| format!("reading git's output: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.success() {
        true => Ok(String::from_utf8_lossy(&output.stdout).to_string()),
        false => Err(stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("failed").trim().to_string()),
    }
}
