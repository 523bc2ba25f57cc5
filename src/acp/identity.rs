//! Who the agent runs as (`agent.user`, `agent.group`): names resolved from `/etc/passwd` and
//! `/etc/group` text (pure parsing here; the caller reads the files), so tether started as
//! root can start the agent as an unprivileged user with std's `CommandExt::uid`/`gid`.
//! Then the agent cannot read tether's config file or `/proc/<tether pid>/environ`.

/// The user (and group) to run the agent as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// The user's home directory, for the agent's `HOME`.
    pub home: String,
}

/// Resolve `user` (a name or a numeric id) and `group` (likewise; default: the user's
/// primary group) against the text of `/etc/passwd` and `/etc/group`.
pub fn resolve(user: &str, group: Option<&str>, passwd: &str, groups: &str) -> Result<RunAs, String> {
    let entry = passwd_entry(passwd, user).ok_or_else(|| {
        format!("agent.user \"{user}\" is not a user in /etc/passwd: create it (e.g. `useradd --system {user}`) or name an existing one")
    })?;
    let gid = match group {
        None => entry.gid,
        Some(group) => group_id(groups, group).ok_or_else(|| {
            format!("agent.group \"{group}\" is not a group in /etc/group: name an existing one, or leave it out to use the user's own")
        })?,
    };
    Ok(RunAs { user: entry.name, uid: entry.uid, gid, home: entry.home })
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

/// `name:x:uid:gid:gecos:home:shell` lines; `who` is a name or a uid.
fn passwd_entry(passwd: &str, who: &str) -> Option<PasswdEntry> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let [name, _, uid, gid, _, home, ..] = fields.as_slice() else { return None };
        let (uid, gid) = (uid.parse::<u32>().ok()?, gid.parse::<u32>().ok()?);
        (*name == who || who.parse::<u32>() == Ok(uid)).then(|| PasswdEntry {
            name: name.to_string(),
            uid,
            gid,
            home: home.to_string(),
        })
    })
}

/// `name:x:gid:members` lines; `who` is a name or a gid.
fn group_id(groups: &str, who: &str) -> Option<u32> {
    let by_name = groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let gid = fields.nth(1)?.parse::<u32>().ok()?;
        (name == who).then_some(gid)
    });
    by_name.or_else(|| who.parse::<u32>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        # a comment line\n\
        broken line\n\
        agent:x:998:997:Agent:/var/lib/agent:/usr/sbin/nologin\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nagents:x:997:\nnogroup:x:65534:\n";

    #[test]
    fn resolve_table() {
        let run_as = |uid, gid, name: &str, home: &str| RunAs { user: name.into(), uid, gid, home: home.into() };
        let cases: Vec<(&str, Option<&str>, Result<RunAs, &str>)> = vec![
            ("agent", None, Ok(run_as(998, 997, "agent", "/var/lib/agent"))),
            ("998", None, Ok(run_as(998, 997, "agent", "/var/lib/agent"))),
            ("agent", Some("nogroup"), Ok(run_as(998, 65534, "agent", "/var/lib/agent"))),
            ("nobody", Some("1234"), Ok(run_as(65534, 1234, "nobody", "/nonexistent"))),
            ("ghost", None, Err("agent.user \"ghost\" is not a user in /etc/passwd")),
            ("agent", Some("ghosts"), Err("agent.group \"ghosts\" is not a group in /etc/group")),
        ];
        for (user, group, expected) in cases {
            let got = resolve(user, group, PASSWD, GROUP);
            match expected {
                Ok(want) => assert_eq!(got, Ok(want), "{user} {group:?}"),
                Err(start) => assert!(got.as_ref().unwrap_err().starts_with(start), "{user}: {got:?}"),
            }
        }
    }
}
