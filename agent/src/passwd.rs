//! The image's /etc/passwd and /etc/group, parsed by us: static glibc's
//! getpwnam would load NSS modules at run time, and the files are image
//! content, so hostile. Malformed lines are skipped, never fatal; only the
//! fields we use are parsed.

/// One /etc/passwd entry (the fields we use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// One /etc/group entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Longest line considered; longer ones are skipped.
const MAX_LINE: usize = 64 * 1024;

fn fields(line: &str) -> Option<Vec<&str>> {
    let line = line.trim_end_matches('\r');
    if line.is_empty() || line.starts_with('#') || line.len() > MAX_LINE {
        return None;
    }
    Some(line.split(':').collect())
}

fn id(s: &str) -> Option<u32> {
    // Only plain decimal: no sign, no spaces; u32::MAX is "no id" (-1).
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u32>().ok().filter(|v| *v != u32::MAX)
}

/// Parses /etc/passwd (`name:pw:uid:gid:gecos:home:shell`).
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(fields)
        .filter_map(|f| {
            if f.len() < 7 || f[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: id(f[2])?,
                gid: id(f[3])?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

/// Parses /etc/group (`name:pw:gid:member,member`).
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(fields)
        .filter_map(|f| {
            if f.len() != 4 || f[0].is_empty() {
                return None;
            }
            let members = f[3]
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect();
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: id(f[2])?,
                members,
            })
        })
        .collect()
}

/// A resolved user: ids, supplementary groups and home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("no user {0:?} in the image's /etc/passwd")]
    NoUser(String),
    #[error("no group {0:?} in the image's /etc/group")]
    NoGroup(String),
    #[error("bad user spec {0:?}")]
    BadSpec(String),
}

/// Resolves `user[:group]` (names or numbers) against the image's files,
/// the way runc does: a numeric uid need not exist in /etc/passwd; a name
/// must. Supplementary groups are the groups listing the user by name.
pub fn resolve(
    spec: &str,
    passwd: &[PasswdEntry],
    groups: &[GroupEntry],
) -> Result<User, UserError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || group == Some("") || spec.matches(':').count() > 1 {
        return Err(UserError::BadSpec(spec.to_string()));
    }
    let entry = match id(user) {
        Some(uid) => passwd
            .iter()
            .find(|p| p.uid == uid)
            .cloned()
            .unwrap_or(PasswdEntry {
                name: String::new(),
                uid,
                gid: 0,
                home: "/".into(),
            }),
        None if user.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(UserError::BadSpec(spec.to_string()))
        }
        None => passwd
            .iter()
            .find(|p| p.name == user)
            .cloned()
            .ok_or_else(|| UserError::NoUser(user.to_string()))?,
    };
    let gid = match group {
        None => entry.gid,
        Some(g) => match id(g) {
            Some(gid) => gid,
            None if g.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(UserError::BadSpec(spec.to_string()))
            }
            None => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| UserError::NoGroup(g.to_string()))?,
        },
    };
    let mut supplementary: Vec<u32> = if entry.name.is_empty() {
        Vec::new()
    } else {
        groups
            .iter()
            .filter(|g| g.members.contains(&entry.name))
            .map(|g| g.gid)
            .collect()
    };
    supplementary.sort_unstable();
    supplementary.dedup();
    Ok(User {
        uid: entry.uid,
        gid,
        groups: supplementary,
        home: if entry.home.is_empty() {
            "/".into()
        } else {
            entry.home
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # a comment\n\
        \n\
        daemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n\
        alice:x:1000:1000:Alice,,,:/home/alice:/bin/sh\r\n\
        short:x:5\n\
        neg:x:-1:0::/:/bin/sh\n\
        big:x:4294967296:0::/:/bin/sh\n\
        nobodyid:x:4294967295:0::/:/bin/sh\n\
        spaces:x: 7:0::/:/bin/sh\n\
        :x:9:9::/:/bin/sh\n\
        bob:x:1001:1001::/home/bob:/bin/sh:extra:fields\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:alice,bob\naudio:x:29:alice\nalice:x:1000:\nbadgid:x:zz:alice\ntoo:many:fields:a:b\nstaff:x:50:,,alice,,\n";

    #[test]
    fn malformed_lines_are_skipped_not_fatal() {
        let p = parse_passwd(PASSWD);
        let names: Vec<&str> = p.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["root", "daemon", "alice", "bob"]);
        assert_eq!(
            p[2],
            PasswdEntry {
                name: "alice".into(),
                uid: 1000,
                gid: 1000,
                home: "/home/alice".into()
            }
        );
        let g = parse_group(GROUP);
        let names: Vec<&str> = g.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["root", "wheel", "audio", "alice", "staff"]);
        assert_eq!(g[4].members, ["alice"]);
    }

    #[test]
    fn users_resolve_by_name_and_number() {
        let (p, g) = (parse_passwd(PASSWD), parse_group(GROUP));
        let alice = resolve("alice", &p, &g).unwrap();
        assert_eq!(
            (
                alice.uid,
                alice.gid,
                alice.groups.clone(),
                alice.home.as_str()
            ),
            (1000, 1000, vec![10, 29, 50], "/home/alice")
        );
        assert_eq!(resolve("alice:wheel", &p, &g).unwrap().gid, 10);
        assert_eq!(resolve("1000:29", &p, &g).unwrap().groups, vec![10, 29, 50]);
        let anon = resolve("4242", &p, &g).unwrap();
        assert_eq!(
            (anon.uid, anon.gid, anon.groups.len(), anon.home.as_str()),
            (4242, 0, 0, "/")
        );
        assert_eq!(resolve("bob:7", &p, &g).unwrap().gid, 7);
    }

    #[test]
    fn bad_specs_and_unknown_names_are_errors() {
        let (p, g) = (parse_passwd(PASSWD), parse_group(GROUP));
        assert_eq!(
            resolve("mallory", &p, &g),
            Err(UserError::NoUser("mallory".into()))
        );
        assert_eq!(
            resolve("alice:nogroup", &p, &g),
            Err(UserError::NoGroup("nogroup".into()))
        );
        for bad in [
            "",
            ":",
            "alice:",
            ":0",
            "a:b:c",
            "99999999999",
            "0:4294967295",
        ] {
            assert!(
                matches!(resolve(bad, &p, &g), Err(UserError::BadSpec(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn binary_junk_parses_to_nothing_much() {
        let junk: String = (0u8..=255).map(char::from).cycle().take(10_000).collect();
        let _ = parse_passwd(&junk);
        let _ = parse_group(&junk);
        assert!(parse_passwd(&"x".repeat(MAX_LINE + 10)).is_empty());
    }
}
