//! Names from layer tarballs: split into components and checked before
//! anything touches the disk. Absolute paths and `..` are refused, not
//! "cleaned": an image that has them is broken or hostile.

use super::UnpackError;

/// Longest path and path component accepted (Linux's PATH_MAX / NAME_MAX).
pub const MAX_PATH: usize = 4096;
pub const MAX_COMPONENT: usize = 255;

/// Splits a tar path into its components: `./` and empty components are
/// dropped (`./a//b/` is `a/b`); an empty result is the root itself.
pub fn components(raw: &[u8]) -> Result<Vec<&[u8]>, UnpackError> {
    let shown = || String::from_utf8_lossy(raw).into_owned();
    if raw.len() > MAX_PATH {
        return Err(UnpackError::NameTooLong(shown()));
    }
    if raw.first() == Some(&b'/') {
        return Err(UnpackError::AbsolutePath(shown()));
    }
    if raw.contains(&0) {
        return Err(UnpackError::Escape(shown()));
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => continue,
            b".." => return Err(UnpackError::Escape(shown())),
            c if c.len() > MAX_COMPONENT => return Err(UnpackError::NameTooLong(shown())),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// What a layer entry's last component means.
#[derive(Debug, PartialEq, Eq)]
pub enum Whiteout<'a> {
    /// Not a whiteout: an ordinary name.
    None,
    /// `.wh.NAME`: delete NAME from the layers below.
    Remove(&'a [u8]),
    /// `.wh..wh..opq`: the directory hides everything below it.
    Opaque,
}

pub fn whiteout(name: &[u8]) -> Result<Whiteout<'_>, UnpackError> {
    if name == b".wh..wh..opq" {
        return Ok(Whiteout::Opaque);
    }
    match name.strip_prefix(b".wh.") {
        None => Ok(Whiteout::None),
        Some(b"" | b"." | b"..") => Err(UnpackError::BadWhiteout(
            String::from_utf8_lossy(name).into_owned(),
        )),
        Some(target) => Ok(Whiteout::Remove(target)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise_or_fail() {
        assert_eq!(
            components(b"./a//b/./c/").unwrap(),
            vec![&b"a"[..], b"b", b"c"]
        );
        assert!(components(b"./").unwrap().is_empty());
        assert_eq!(
            components(b"\xff\xfe").unwrap(),
            vec![&b"\xff\xfe"[..]],
            "non-UTF-8 names are bytes, kept"
        );
        assert!(matches!(
            components(b"/etc/passwd"),
            Err(UnpackError::AbsolutePath(_))
        ));
        assert!(matches!(
            components(b"a/../../x"),
            Err(UnpackError::Escape(_))
        ));
        assert!(matches!(components(b".."), Err(UnpackError::Escape(_))));
        assert!(matches!(
            components(&[b'a'; 256]),
            Err(UnpackError::NameTooLong(_))
        ));
        assert!(matches!(
            components(&b"a/".repeat(2100)),
            Err(UnpackError::NameTooLong(_))
        ));
    }

    #[test]
    fn whiteouts_are_recognised_and_checked() {
        assert_eq!(whiteout(b".wh.foo").unwrap(), Whiteout::Remove(b"foo"));
        assert_eq!(whiteout(b".wh..wh..opq").unwrap(), Whiteout::Opaque);
        assert_eq!(whiteout(b"foo").unwrap(), Whiteout::None);
        for bad in [&b".wh."[..], b".wh..", b".wh..."] {
            assert!(
                matches!(whiteout(bad), Err(UnpackError::BadWhiteout(_))),
                "{bad:?}"
            );
        }
    }
}
