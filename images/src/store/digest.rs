//! `sha256:<64 hex>` digests, checked on the way in (they become file names).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

#[derive(Debug, thiserror::Error)]
#[error("not a sha256 digest: {0:?}")]
pub struct BadDigest(pub String);

impl Digest {
    pub fn parse(s: &str) -> Result<Self, BadDigest> {
        match s.strip_prefix("sha256:") {
            Some(hex)
                if hex.len() == 64
                    && hex
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
            {
                Ok(Self(s.to_string()))
            }
            _ => Err(BadDigest(s.chars().take(100).collect())),
        }
    }

    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        Self(format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(bytes))
        ))
    }

    pub(crate) fn from_hasher(h: sha2::Sha256) -> Self {
        use sha2::Digest as _;
        Self(format!("sha256:{}", hex::encode(h.finalize())))
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_sha256_digests_parse() {
        let good = Digest::of(b"x");
        assert_eq!(
            Digest::parse(good.as_str()).unwrap_or_else(|e| panic!("{e}")),
            good
        );
        for bad in [
            "",
            "sha256:",
            "sha512:00",
            "sha256:../../etc/passwd",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:{}", "0".repeat(63)),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
    }
}
