//! `tether loops list|cancel`: the scheduled loops in `loops.json`, from the command line. A
//! running service notices the changed file within a second and takes it over.

use std::path::Path;

use crate::core::loops::{Book, LoopFile};
use crate::daemon::LOOPS_FILE;
use crate::error::Error;
use crate::store;

/// What `tether loops` was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoopsCommand {
    List,
    Cancel { id: u32 },
}

pub const USAGE: &str = "usage: tether loops list | tether loops cancel ID";

pub fn parse(words: &[String]) -> Result<LoopsCommand, Error> {
    match words {
        [] => Ok(LoopsCommand::List),
        [verb] if verb == "list" => Ok(LoopsCommand::List),
        [verb, id] if verb == "cancel" => {
            id.trim_start_matches('#').parse().map(|id| LoopsCommand::Cancel { id }).map_err(|_| {
                Error::Usage(format!("`{id}` is not a loop id (a number, as `tether loops list` shows)\n{USAGE}"))
            })
        }
        _ => Err(Error::Usage(USAGE.to_string())),
    }
}

/// Run it; returns what to print.
pub fn run(command: &LoopsCommand, home: &Path) -> Result<String, Error> {
    let path = home.join(LOOPS_FILE);
    let file: LoopFile = store::read_json(&path)?.unwrap_or_default();
    let tz = std::env::var("TZ").ok();
    let zone = crate::local_zone::zone_from(tz.as_deref()).map_err(Error::Other)?;
    let mut book = Book::new(file, zone);
    match command {
        LoopsCommand::List => {
            let rows = book.overview();
            if rows.is_empty() {
                return Ok(format!("No loops in {}.\n", path.display()));
            }
            let mut out = String::new();
            for row in rows {
                let field = |name: &str| row[name].as_str().map(str::to_string);
                let state = match (field("disabled"), field("nextRun")) {
                    (Some(why), _) => format!("disabled: {why}"),
                    (None, Some(next)) => format!("next {next}"),
                    (None, None) => "no next run".to_string(),
                };
                let chat = match field("threadId") {
                    Some(thread) => format!("{}/{}", row["chatId"].as_str().unwrap_or_default(), thread),
                    None => row["chatId"].as_str().unwrap_or_default().to_string(),
                };
                out.push_str(&format!(
                    "{}  {} {}  \"{}\"  {state}  last {}  runs {} skipped {}  {}\n",
                    row["id"],
                    row["channel"].as_str().unwrap_or_default(),
                    chat,
                    row["cron"].as_str().unwrap_or_default(),
                    field("lastRun").unwrap_or_else(|| "never".to_string()),
                    row["runs"],
                    row["skipped"],
                    row["prompt"].as_str().unwrap_or_default(),
                ));
            }
            Ok(out)
        }
        LoopsCommand::Cancel { id } => {
            if !book.remove(*id) {
                return Err(Error::Other(format!(
                    "there is no loop {id} in {}; `tether loops list` shows them",
                    path.display()
                )));
            }
            store::write_json_atomic(&path, book.file())?;
            Ok(format!("Loop {id} cancelled.\n"))
        }
    }
}
