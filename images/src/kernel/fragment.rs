//! Kconfig fragments and `.config` files: parse them, and check that every
//! symbol a fragment asks for survived `make olddefconfig`.

use std::collections::HashMap;
use std::fmt;

/// What a fragment line asks of one symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// `CONFIG_X=value` (value as written: `y`, `m`, `64`, `"str"`).
    Value(String),
    /// `# CONFIG_X is not set`.
    Unset,
}

/// One line of a fragment: symbol name without the `CONFIG_` prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub symbol: String,
    pub want: Want,
}

/// A requirement that the final `.config` does not meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub requirement: Requirement,
    /// What the `.config` has instead (`None`: unset or absent).
    pub found: Option<String>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let want = match &self.requirement.want {
            Want::Value(v) => v.as_str(),
            Want::Unset => "not set",
        };
        let found = self.found.as_deref().unwrap_or("not set");
        write!(
            f,
            "CONFIG_{}: wanted {want}, got {found}",
            self.requirement.symbol
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FragmentError {
    #[error("line {line}: not a Kconfig assignment: {text:?}")]
    Syntax { line: usize, text: String },
    #[error("line {line}: CONFIG_{symbol} is listed twice")]
    Duplicate { line: usize, symbol: String },
}

/// Parses a config fragment. Blank lines and comments are skipped, except the
/// `# CONFIG_X is not set` form, which is a requirement.
pub fn parse_fragment(text: &str) -> Result<Vec<Requirement>, FragmentError> {
    let mut out: Vec<Requirement> = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        match parse_line(raw) {
            Line::Blank => {}
            Line::Bad => {
                return Err(FragmentError::Syntax {
                    line,
                    text: raw.to_string(),
                })
            }
            Line::Req(req) => {
                if out.iter().any(|r| r.symbol == req.symbol) {
                    return Err(FragmentError::Duplicate {
                        line,
                        symbol: req.symbol,
                    });
                }
                out.push(req);
            }
        }
    }
    Ok(out)
}

/// Parses a `.config` into symbol -> value; unset symbols are absent.
/// Lines that are neither assignments nor comments are ignored: this reads
/// Kconfig's own output, and the check fails closed (a symbol we cannot
/// read counts as missing).
pub fn parse_dot_config(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| match parse_line(l) {
            Line::Req(Requirement {
                symbol,
                want: Want::Value(v),
            }) => Some((symbol, v)),
            _ => None,
        })
        .collect()
}

/// Every requirement the `.config` does not meet.
pub fn check(requirements: &[Requirement], config: &HashMap<String, String>) -> Vec<Mismatch> {
    requirements
        .iter()
        .filter_map(|req| {
            let found = config.get(&req.symbol);
            let ok = match (&req.want, found) {
                (Want::Value(v), Some(f)) => v == f,
                (Want::Unset, None) => true,
                (Want::Unset, Some(f)) => f == "n",
                (Want::Value(_), None) => false,
            };
            (!ok).then(|| Mismatch {
                requirement: req.clone(),
                found: found.cloned(),
            })
        })
        .collect()
}

enum Line {
    Blank,
    Bad,
    Req(Requirement),
}

fn parse_line(raw: &str) -> Line {
    let line = raw.trim();
    if line.is_empty() {
        return Line::Blank;
    }
    if let Some(comment) = line.strip_prefix('#') {
        let comment = comment.trim();
        return match comment
            .strip_prefix("CONFIG_")
            .and_then(|r| r.strip_suffix(" is not set"))
        {
            Some(sym) if valid_symbol(sym) => Line::Req(Requirement {
                symbol: sym.to_string(),
                want: Want::Unset,
            }),
            _ if comment.starts_with("CONFIG_") => Line::Bad,
            _ => Line::Blank,
        };
    }
    let Some((name, value)) = line.split_once('=') else {
        return Line::Bad;
    };
    match name.strip_prefix("CONFIG_") {
        Some(sym) if valid_symbol(sym) && valid_value(value) => Line::Req(Requirement {
            symbol: sym.to_string(),
            want: Want::Value(value.to_string()),
        }),
        _ => Line::Bad,
    }
}

fn valid_symbol(sym: &str) -> bool {
    !sym.is_empty()
        && sym
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

fn valid_value(v: &str) -> bool {
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        return true;
    }
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(sym: &str, want: Want) -> Requirement {
        Requirement {
            symbol: sym.into(),
            want,
        }
    }

    #[test]
    fn parses_values_unset_and_skips_comments() {
        let text = "# a comment\n\nCONFIG_SMP=y\nCONFIG_NR_CPUS=64\nCONFIG_CMDLINE=\"console=ttyS0\"\n# CONFIG_PCI is not set\n";
        assert_eq!(
            parse_fragment(text).unwrap(),
            vec![
                req("SMP", Want::Value("y".into())),
                req("NR_CPUS", Want::Value("64".into())),
                req("CMDLINE", Want::Value("\"console=ttyS0\"".into())),
                req("PCI", Want::Unset),
            ]
        );
    }

    #[test]
    fn rejects_malformed_lines_with_their_number() {
        for (text, line) in [
            ("CONFIG_SMP=y\nSMP=y\n", 2),
            ("CONFIG_=y\n", 1),
            ("CONFIG_smp=y\n", 1),
            ("CONFIG_SMP\n", 1),
            ("CONFIG_SMP=\n", 1),
            ("CONFIG_SMP=y y\n", 1),
            ("CONFIG_SMP=\"\n", 1),
            ("# CONFIG_PCI is unset\n", 1),
            ("garbage\u{0}\n", 1),
        ] {
            match parse_fragment(text) {
                Err(FragmentError::Syntax { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn rejects_a_symbol_listed_twice() {
        assert_eq!(
            parse_fragment("CONFIG_SMP=y\n# CONFIG_SMP is not set\n"),
            Err(FragmentError::Duplicate {
                line: 2,
                symbol: "SMP".into()
            })
        );
    }

    #[test]
    fn check_reports_dropped_changed_and_unwanted_symbols() {
        let frag = parse_fragment(
            "CONFIG_A=y\nCONFIG_B=y\nCONFIG_C=64\n# CONFIG_D is not set\n# CONFIG_E is not set\n",
        )
        .unwrap();
        let cfg = parse_dot_config("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=8\nCONFIG_D=y\n");
        let bad: Vec<String> = check(&frag, &cfg).iter().map(|m| m.to_string()).collect();
        assert_eq!(
            bad,
            vec![
                "CONFIG_B: wanted y, got not set",
                "CONFIG_C: wanted 64, got 8",
                "CONFIG_D: wanted not set, got y",
            ]
        );
    }

    #[test]
    fn the_project_fragment_parses_and_lists_what_the_guest_needs() {
        let frag = parse_fragment(super::super::MICROVM_FRAGMENT).unwrap();
        for sym in [
            "PVH",
            "VIRTIO_MMIO",
            "VIRTIO_VSOCKETS",
            "OVERLAY_FS",
            "TMPFS_XATTR",
            "PVPANIC_MMIO",
            "X86_MPPARSE",
        ] {
            assert!(
                frag.iter()
                    .any(|r| r.symbol == sym && r.want == Want::Value("y".into())),
                "{sym}"
            );
        }
        assert!(frag
            .iter()
            .any(|r| r.symbol == "MODULES" && r.want == Want::Unset));
    }
}
