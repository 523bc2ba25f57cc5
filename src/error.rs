//! The crate's one error type, with messages a person can act on.

use std::fmt;
use std::path::PathBuf;

use crate::config::ConfigError;

/// Everything that can stop a command. Daemon loops log and retry transient failures
/// themselves; what reaches this type ends the command.
#[derive(Debug)]
pub enum Error {
    /// Bad command line (exit status 2).
    Usage(String),
    /// Invalid configuration (exit status 2).
    Config(ConfigError),
    /// A file could not be read or written.
    File { path: PathBuf, action: &'static str, source: std::io::Error },
    /// The agent could not be started or died before it was ready.
    Agent(String),
    /// Anything else worth one line to the user (exit status 1).
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Config(_) => 2,
            _ => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(msg) => write!(f, "{msg}"),
            Error::Config(e) => write!(f, "{e}"),
            Error::File { path, action, source } => {
                write!(f, "cannot {action} {}: {source}", path.display())
            }
            Error::Agent(msg) => write!(f, "{msg}"),
            Error::Other(msg) => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Error {
        Error::Config(e)
    }
}

impl From<lexopt::Error> for Error {
    fn from(e: lexopt::Error) -> Error {
        Error::Usage(e.to_string())
    }
}
