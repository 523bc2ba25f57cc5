//! The command line: being written.

/// Run tether with the process arguments; returns the exit status.
pub fn main() -> i32 {
    0
}
