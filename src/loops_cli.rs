//! `tether loops list|cancel`: the scheduled loops in `loops.json`, from the command line.
//! `cancel` asks a running service through its control socket (the service owns the file and
//! would otherwise write its own copy over the change); with no service, it edits the file.

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
            // A running service owns the file: it is asked, so that its next save keeps the change.
            if let Some(answer) = ask_service(&home.join(crate::control::SOCKET_FILE), *id) {
                return answer.map(|text| format!("{text}\n")).map_err(Error::Other);
            }
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

/// How long the command waits for the service's answer.
const SERVICE_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Ask the service listening on `socket` to cancel loop `id`: its answer, or `None` when no
/// service listens there (no socket, or a stale one: the file is edited instead).
fn ask_service(socket: &Path, id: u32) -> Option<Result<String, String>> {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    let asked = stream
        .set_read_timeout(Some(SERVICE_WAIT))
        .and_then(|()| stream.set_write_timeout(Some(SERVICE_WAIT)))
        .and_then(|()| stream.write_all(crate::control::operator_cancel_line(id).as_bytes()));
    let shown = socket.display();
    if let Err(e) = asked {
        return Some(Err(format!("the service did not take the request on {shown}: {e}")));
    }
    let mut line = String::new();
    let mut reader = BufReader::new(std::io::Read::take(stream, 64 * 1024));
    if let Err(e) = reader.read_line(&mut line) {
        return Some(Err(format!("the service did not answer on {shown}: {e}")));
    }
    let answer: serde_json::Value = match serde_json::from_slice(line.as_bytes()) {
        Ok(answer) => answer,
        Err(_) => return Some(Err(format!("the service's answer on {shown} is not JSON; is it tether?"))),
    };
    let text = answer["text"].as_str().unwrap_or_default().to_string();
    Some(if answer["ok"] == true { Ok(text) } else { Err(text) })
}
