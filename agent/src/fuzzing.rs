//! Fuzz entry point for the image's /etc/passwd and /etc/group parser
//! (agent/fuzz) and its corpus replay.

use crate::passwd;

/// `data` is `passwd \0 group \0 user-spec`: all image- or host-controlled.
pub fn passwd_files(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\0');
    let (p, g, spec) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("0"),
    );
    let users = passwd::parse_passwd(p);
    let groups = passwd::parse_group(g);
    for u in &users {
        assert!(!u.name.is_empty() && u.uid != u32::MAX && u.gid != u32::MAX);
    }
    for spec in [spec, "root", "0", "1000:1000", "nobody:nogroup"] {
        if let Ok(user) = passwd::resolve(spec, &users, &groups) {
            assert!(user.uid != u32::MAX && user.gid != u32::MAX);
            assert!(
                user.groups.windows(2).all(|w| w[0] < w[1]),
                "groups sorted and unique"
            );
        }
    }
}
