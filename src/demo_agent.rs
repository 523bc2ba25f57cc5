//! The built-in ACP demo agent (`tether demo-agent`): being written.

/// Run the demo agent on stdin/stdout; returns the exit status.
pub fn run(args: &[String]) -> i32 {
    let _ = args;
    0
}
