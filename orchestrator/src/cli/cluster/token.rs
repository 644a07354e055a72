//! `token`: every token the server knows, by id (admin): list and revoke.

use super::*;

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Every token by id (the start of its hash; never the token): kind,
    /// tenant or node, made, expires.
    Ls(Conn),
    /// Revoke a token by its id (or 8+ leading hex digits of it). The admin
    /// token cannot be revoked; a node's takes its name's binding along, so
    /// that node joins again with a join token.
    Rm {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

pub fn tokens(cmd: TokensCommand) -> Result<()> {
    match cmd {
        TokensCommand::Ls(conn) => {
            let v = conn.call(reqwest::Method::GET, "/v1/tokens", None)?;
            conn.print(&v, |rows: Vec<crate::cluster::auth::TokenInfo>| {
                let mut t = table(&["ID", "KIND", "NAME", "MADE", "EXPIRES"]);
                for r in rows {
                    let expires = match (r.expires_ms, r.expired) {
                        (None, _) => "never".to_string(),
                        (Some(_), true) => "expired".to_string(),
                        (Some(ms), false) => wall_time(ms),
                    };
                    t.add_row(vec![
                        r.id,
                        r.kind,
                        r.name.unwrap_or_default(),
                        if r.created_ms == 0 {
                            String::new()
                        } else {
                            wall_time(r.created_ms)
                        },
                        expires,
                    ]);
                }
                t
            })
        }
        TokensCommand::Rm { id, conn } => {
            let v = conn.call(
                reqwest::Method::DELETE,
                &format!("/v1/tokens/{}", path_segment(&id)?),
                None,
            )?;
            let r: crate::cluster::auth::TokenInfo = typed(&v)?;
            let name = r.name.map(|n| format!(" ({n})")).unwrap_or_default();
            println!("{}: revoked, a {} token{name}", r.id, r.kind);
            Ok(())
        }
    }
}

/// Wall-clock ms as UTC `YYYY-MM-DD HH:MM`.
pub(super) fn wall_time(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    let days = secs.div_euclid(86_400);
    let rest = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_times_are_utc_dates() {
        assert_eq!(wall_time(0), "1970-01-01 00:00 UTC");
        assert_eq!(wall_time(951_782_400_000), "2000-02-29 00:00 UTC");
        assert_eq!(wall_time(1_796_560_020_000), "2026-12-06 12:27 UTC");
    }
}
