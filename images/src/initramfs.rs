//! Initramfs archives: newc cpio written on top of the `cpio` crate:
//! parent directories are added once, inode numbers are unique, and every
//! entry is owned by root whatever the host file's owner.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::Path;

use cpio::newc::{trailer, Builder, ModeFileType};

/// An archive being written. Paths are absolute guest paths ("/bin/sh").
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    dirs: BTreeSet<String>,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            next_ino: 1,
            dirs: BTreeSet::new(),
        }
    }

    /// Adds `path` as a directory (and any missing parents).
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        let name = archive_name(path)?;
        if name.is_empty() || self.dirs.contains(&name) {
            return Ok(());
        }
        self.parents(&name)?;
        self.entry(&name, ModeFileType::Directory, mode, &[])?;
        self.dirs.insert(name);
        Ok(())
    }

    /// Adds a regular file with `data`.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let name = archive_name(path)?;
        self.parents(&name)?;
        self.entry(&name, ModeFileType::Regular, mode, data)
    }

    /// Adds a regular file read from the host (symlinks followed).
    pub fn host_file(&mut self, path: &str, mode: u32, src: &Path) -> io::Result<()> {
        let data = std::fs::read(src)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", src.display())))?;
        self.file(path, mode, &data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let name = archive_name(path)?;
        self.parents(&name)?;
        self.entry(&name, ModeFileType::Symlink, 0o777, target.as_bytes())
    }

    /// Adds a character device node (no privileges needed: it is only a header).
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        let name = archive_name(path)?;
        self.parents(&name)?;
        let ino = self.take_ino();
        let w = Builder::new(&name)
            .ino(ino)
            .mode(mode & 0o7777)
            .set_mode_file_type(ModeFileType::Char)
            .nlink(1)
            .rdev_major(major)
            .rdev_minor(minor)
            .write(&mut self.out, 0);
        w.finish()?;
        Ok(())
    }

    /// Writes the trailer. Every newc entry is padded to 4 bytes, so another
    /// archive can be appended (the kernel unpacks concatenated archives).
    pub fn finish(mut self) -> io::Result<W> {
        trailer(&mut self.out)?;
        Ok(self.out)
    }

    fn parents(&mut self, name: &str) -> io::Result<()> {
        if let Some((parent, _)) = name.rsplit_once('/') {
            if !self.dirs.contains(parent) {
                self.dir(&format!("/{parent}"), 0o755)?;
            }
        }
        Ok(())
    }

    fn entry(&mut self, name: &str, kind: ModeFileType, mode: u32, data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::other(format!("{name}: over 4 GiB")))?;
        let ino = self.take_ino();
        let nlink = if matches!(kind, ModeFileType::Directory) {
            2
        } else {
            1
        };
        let mut w = Builder::new(name)
            .ino(ino)
            .mode(mode & 0o7777)
            .set_mode_file_type(kind)
            .nlink(nlink)
            .write(&mut self.out, size);
        w.write_all(data)?;
        w.finish()?;
        Ok(())
    }

    fn take_ino(&mut self) -> u32 {
        self.next_ino += 1;
        self.next_ino
    }
}

/// The in-archive name: relative, normalised, no `..`.
fn archive_name(path: &str) -> io::Result<String> {
    let mut parts = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{path:?}: `..` not allowed"),
                ))
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(archive: &[u8]) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        let mut rest = archive;
        loop {
            let r = cpio::NewcReader::new(rest).unwrap();
            if r.entry().is_trailer() {
                break;
            }
            out.push((r.entry().name().to_string(), r.entry().mode()));
            rest = r.finish().unwrap();
        }
        out
    }

    #[test]
    fn adds_parents_once_and_pads_to_four_bytes() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("/a/b/c", 0o644, b"hello").unwrap();
        w.file("/a/b/d", 0o755, b"x").unwrap();
        w.symlink("/bin/sh", "busybox").unwrap();
        w.char_device("/dev/console", 0o600, 5, 1).unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let got: Vec<String> = names(&bytes).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            got,
            [
                "a",
                "a/b",
                "a/b/c",
                "a/b/d",
                "bin",
                "bin/sh",
                "dev",
                "dev/console"
            ]
        );
    }

    #[test]
    fn refuses_paths_that_climb() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file("/a/../../etc/passwd", 0o644, b"").is_err());
        assert_eq!(archive_name("//x/./y/").unwrap(), "x/y");
    }
}
