//! Crafted hostile layers against the unpacker. Each case unpacks into
//! `root/` beside a `canary/` directory (and symlinks aim at the canary by
//! absolute path): the case must end in the expected typed error or the
//! documented safe handling, and the canary's hash must not change.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod layer_kit;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use bulkhead_images::unpack::{Limits, UnpackError, Unpacker};
use layer_kit::{apply, run, tree_hash, Layer, Scene};
use sha2::{Digest, Sha256};
use tar::EntryType;

#[test]
fn m01_absolute_path() {
    expect_err!(
        run(&[Layer::default().file("/etc/passwd", "x").end()]).1,
        UnpackError::AbsolutePath(_)
    );
}

#[test]
fn m02_dotdot_at_the_start() {
    expect_err!(
        run(&[Layer::default().file("../escape", "x").end()]).1,
        UnpackError::Escape(_)
    );
}

#[test]
fn m03_dotdot_in_the_middle() {
    expect_err!(
        run(&[Layer::default().dir("a/").file("a/../../escape", "x").end()]).1,
        UnpackError::Escape(_)
    );
}

#[test]
fn m04_symlink_then_a_file_through_it() {
    let s = Scene::new();
    let l = Layer::default()
        .symlink("evil", &s.c())
        .file("evil/pwned", "x")
        .end();
    expect_err!(
        apply(&s, &[l], Limits::default()),
        UnpackError::ThroughSymlink(_)
    );
}

#[test]
fn m05_symlink_to_dotdot_then_through_it() {
    expect_err!(
        run(&[Layer::default().symlink("up", "..").file("up/x", "x").end()]).1,
        UnpackError::ThroughSymlink(_)
    );
}

#[test]
fn m06_symlink_in_one_layer_file_through_it_in_the_next() {
    let s = Scene::new();
    let l1 = Layer::default().symlink("lib", &s.c()).end();
    let l2 = Layer::default().file("lib/secret", "overwritten").end();
    expect_err!(
        apply(&s, &[l1, l2], Limits::default()),
        UnpackError::ThroughSymlink(_)
    );
}

#[test]
fn m07_symlink_named_like_a_later_directory_is_replaced_by_it() {
    let s = Scene::new();
    let l = Layer::default()
        .symlink("dir", &s.c())
        .dir("dir/")
        .file("dir/file", "inside")
        .end();
    apply(&s, &[l], Limits::default()).unwrap();
    assert!(
        s.root.join("dir").symlink_metadata().unwrap().is_dir(),
        "the directory replaced the symlink"
    );
    assert_eq!(
        std::fs::read_to_string(s.root.join("dir/file")).unwrap(),
        "inside"
    );
}

#[test]
fn m08_hardlink_to_an_absolute_path() {
    expect_err!(
        run(&[Layer::default().hardlink("h", "/etc/passwd").end()]).1,
        UnpackError::Hardlink { .. }
    );
}

#[test]
fn m09_hardlink_climbing_out() {
    expect_err!(
        run(&[Layer::default().hardlink("h", "../canary/secret").end()]).1,
        UnpackError::Hardlink { .. }
    );
}

#[test]
fn m10_hardlink_through_a_symlink() {
    let s = Scene::new();
    let l = Layer::default()
        .symlink("s", &s.c())
        .hardlink("h", "s/secret")
        .end();
    expect_err!(
        apply(&s, &[l], Limits::default()),
        UnpackError::ThroughSymlink(_)
    );
}

#[test]
fn m11_hardlink_to_a_directory() {
    expect_err!(
        run(&[Layer::default().dir("d/").hardlink("h", "d").end()]).1,
        UnpackError::Hardlink { .. }
    );
}

#[test]
fn m12_whiteout_of_dotdot() {
    expect_err!(
        run(&[Layer::default().dir("a/").file("a/.wh..", "").end()]).1,
        UnpackError::BadWhiteout(_)
    );
}

#[test]
fn m13_whiteout_through_a_symlink() {
    let s = Scene::new();
    let l = Layer::default()
        .symlink("s", &s.c())
        .file("s/.wh.secret", "")
        .end();
    expect_err!(
        apply(&s, &[l], Limits::default()),
        UnpackError::ThroughSymlink(_)
    );
}

#[test]
fn m14_opaque_whiteout_through_a_symlink() {
    let s = Scene::new();
    let l = Layer::default()
        .symlink("s", &s.c())
        .file("s/.wh..wh..opq", "")
        .end();
    expect_err!(
        apply(&s, &[l], Limits::default()),
        UnpackError::ThroughSymlink(_)
    );
}

#[test]
fn m15_huge_declared_size_fails_before_writing() {
    let s = Scene::new();
    let l = Layer::default()
        .raw(
            b"sparse",
            EntryType::Regular,
            b"",
            b"",
            0o644,
            Some(1 << 40),
        )
        .end();
    expect_err!(apply(&s, &[l], Limits::default()), UnpackError::TooLarge(_));
    assert!(!s.root.join("sparse").exists(), "nothing written for it");
}

#[test]
fn m16_decompression_bomb_stops_at_the_size_cap() {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 8 << 20];
    gz.write_all(
        &Layer::default()
            .raw(b"bomb", EntryType::Regular, &zeros, b"", 0o644, None)
            .end(),
    )
    .unwrap();
    let blob = gz.finish().unwrap();
    assert!(
        blob.len() < 64 * 1024,
        "a real bomb: {} bytes compressed",
        blob.len()
    );
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&blob)));
    let s = Scene::new();
    let before = tree_hash(&s.canary);
    let mut u = Unpacker::new(
        &s.root,
        Limits {
            max_bytes: 1 << 20,
            max_entries: 100,
            ..Limits::default()
        },
    )
    .unwrap();
    expect_err!(u.apply_blob(&blob[..], &digest), UnpackError::TooLarge(_));
    assert_eq!(tree_hash(&s.canary), before);
}

#[test]
fn m17_duplicate_entries_the_later_wins() {
    let (s, r) = run(&[Layer::default()
        .file("a", "first")
        .file("a", "second")
        .end()]);
    r.unwrap();
    assert_eq!(std::fs::read_to_string(s.root.join("a")).unwrap(), "second");
}

#[test]
fn m18_non_utf8_names_are_kept_as_bytes() {
    use std::os::unix::ffi::OsStrExt;
    let (s, r) = run(&[Layer::default()
        .raw(b"caf\xe9", EntryType::Regular, b"x", b"", 0o644, None)
        .end()]);
    r.unwrap();
    assert!(s
        .root
        .join(std::ffi::OsStr::from_bytes(b"caf\xe9"))
        .is_file());
}

#[test]
fn m19_too_many_entries() {
    let mut l = Layer::default();
    for i in 0..11 {
        l = l.file(&format!("f{i}"), "");
    }
    let s = Scene::new();
    expect_err!(
        apply(
            &s,
            &[l.end()],
            Limits {
                max_bytes: 1 << 20,
                max_entries: 10,
                ..Limits::default()
            }
        ),
        UnpackError::TooManyEntries(10)
    );
}

#[test]
fn m20_component_name_too_long() {
    let long = vec![b'n'; 300];
    expect_err!(
        run(&[Layer::default().pax_path(&long).file("short", "x").end()]).1,
        UnpackError::NameTooLong(_)
    );
}

#[test]
fn m21_device_nodes_are_skipped_and_reported() {
    let s = Scene::new();
    let mut u = Unpacker::new(&s.root, Limits::default()).unwrap();
    let l = Layer::default()
        .dir("dev/")
        .raw(b"dev/mem", EntryType::Char, b"", b"", 0o600, None)
        .raw(b"dev/sda", EntryType::Block, b"", b"", 0o600, None)
        .end();
    u.apply(&l[..]).unwrap();
    assert!(!s.root.join("dev/mem").exists() && !s.root.join("dev/sda").exists());
    assert_eq!(u.report().skipped.len(), 2, "{:?}", u.report());
}

#[test]
fn m22_absolute_symlink_is_stored_not_followed_and_a_later_file_replaces_it() {
    let s = Scene::new();
    let secret = format!("{}/secret", s.c());
    let l = Layer::default()
        .dir("etc/")
        .symlink("etc/link", &secret)
        .end();
    let l2 = Layer::default()
        .file("etc/link", "a regular file now")
        .end();
    apply(&s, &[l], Limits::default()).unwrap();
    assert_eq!(
        std::fs::read_link(s.root.join("etc/link")).unwrap(),
        PathBuf::from(&secret)
    );
    apply(&s, &[l2], Limits::default()).unwrap();
    assert_eq!(
        std::fs::read_to_string(s.root.join("etc/link")).unwrap(),
        "a regular file now"
    );
}

#[test]
fn m23_a_file_replaces_a_directory_from_a_lower_layer() {
    let (s, r) = run(&[
        Layer::default()
            .dir("x/")
            .dir("x/y/")
            .file("x/y/z", "deep")
            .end(),
        Layer::default().file("x", "flat").end(),
    ]);
    r.unwrap();
    assert_eq!(std::fs::read_to_string(s.root.join("x")).unwrap(), "flat");
}

#[test]
fn m24_whiteouts_delete_below_opaque_keeps_this_layer() {
    let lower = Layer::default()
        .dir("d/")
        .file("d/old", "1")
        .file("d/keep-not", "2")
        .file("gone", "3")
        .end();
    let upper = Layer::default()
        .dir("d/")
        .file("d/new", "4")
        .file("d/.wh..wh..opq", "")
        .file(".wh.gone", "")
        .file(".wh.never-existed", "")
        .end();
    let (s, r) = run(&[lower, upper]);
    r.unwrap();
    let mut names: Vec<String> = std::fs::read_dir(s.root.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["new"]);
    assert!(!s.root.join("gone").exists() && !s.root.join(".wh.gone").exists());
}

#[test]
fn m25_owners_modes_setuid_and_mtimes_are_the_images() {
    let mut l = Layer::default();
    let mut h = tar::Header::new_gnu();
    h.set_path("usr/bin/su").unwrap();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o4755);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(1_600_000_000);
    h.set_size(2);
    h.set_cksum();
    l.0.extend_from_slice(h.as_bytes());
    l.0.extend_from_slice(b"su");
    l.0.resize(l.0.len().div_ceil(512) * 512, 0);
    let (s, r) = run(&[l.end()]);
    r.unwrap();
    let md = std::fs::metadata(s.root.join("usr/bin/su")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777, md.mtime()),
        (1000, 1000, 0o4755, 1_600_000_000)
    );
}

#[test]
fn m26_digest_mismatch_is_refused() {
    let blob = Layer::default().file("a", "x").end();
    let s = Scene::new();
    let mut u = Unpacker::new(&s.root, Limits::default()).unwrap();
    expect_err!(
        u.apply_blob(
            &blob[..],
            "sha256:0000000000000000000000000000000000000000000000000000000000000000"
        ),
        UnpackError::DigestMismatch { .. }
    );
    let good = format!("sha256:{}", hex::encode(Sha256::digest(&blob)));
    Unpacker::new(&s.root, Limits::default())
        .unwrap()
        .apply_blob(&blob[..], &good)
        .unwrap();
}

#[test]
fn m27_truncated_archive() {
    let mut l = Layer::default()
        .raw(b"short", EntryType::Regular, b"abc", b"", 0o644, Some(4096))
        .0;
    l.truncate(512 + 3);
    expect_err!(run(&[l]).1, UnpackError::Tar(_));
}

#[test]
fn m28_file_under_a_regular_file() {
    expect_err!(
        run(&[Layer::default().file("f", "x").file("f/child", "y").end()]).1,
        UnpackError::NotADirectory(_)
    );
}

#[test]
fn m29_hardlinks_inside_share_the_inode() {
    let (s, r) = run(&[Layer::default()
        .file("a", "same")
        .hardlink("b", "a")
        .hardlink("./c", "./a")
        .end()]);
    r.unwrap();
    let (a, b, c) = (
        std::fs::metadata(s.root.join("a")).unwrap(),
        std::fs::metadata(s.root.join("b")).unwrap(),
        std::fs::metadata(s.root.join("c")).unwrap(),
    );
    assert!(a.ino() == b.ino() && b.ino() == c.ino());
}

#[test]
fn m30_missing_parents_are_created_and_fifos_made() {
    let (s, r) = run(&[Layer::default()
        .file("./a//b/./c", "x")
        .raw(b"run/pipe", EntryType::Fifo, b"", b"", 0o600, None)
        .end()]);
    r.unwrap();
    assert_eq!(std::fs::read_to_string(s.root.join("a/b/c")).unwrap(), "x");
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(s.root.join("run/pipe"))
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn m31_user_xattrs_apply_and_others_are_counted_not_applied() {
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([
        ("SCHILY.xattr.user.origin", &b"image"[..]),
        ("SCHILY.xattr.trusted.evil", &b"x"[..]),
    ])
    .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_path("f").unwrap();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
    let s = Scene::new();
    let mut u = Unpacker::new(&s.root, Limits::default()).unwrap();
    u.apply(&b.into_inner().unwrap()[..]).unwrap();
    assert_eq!(u.report().skipped_xattrs, 1);
    let path = std::ffi::CString::new(s.root.join("f").display().to_string()).unwrap();
    let mut buf = [0u8; 16];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"user.origin".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(&buf[..usize::try_from(n).unwrap()], b"image");
}

#[test]
fn m32_zstd_layers_unpack_and_a_zstd_bomb_stops_at_the_cap() {
    let layer = Layer::default().file("hello", "from zstd").end();
    let blob = zstd::stream::encode_all(&layer[..], 3).unwrap();
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&blob)));
    let s = Scene::new();
    Unpacker::new(&s.root, Limits::default())
        .unwrap()
        .apply_blob(&blob[..], &digest)
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(s.root.join("hello")).unwrap(),
        "from zstd"
    );
    let zeros = vec![0u8; 8 << 20];
    let bomb = zstd::stream::encode_all(
        &Layer::default()
            .raw(b"bomb", EntryType::Regular, &zeros, b"", 0o644, None)
            .end()[..],
        19,
    )
    .unwrap();
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bomb)));
    let s = Scene::new();
    let mut u = Unpacker::new(
        &s.root,
        Limits {
            max_bytes: 1 << 20,
            max_entries: 100,
            ..Limits::default()
        },
    )
    .unwrap();
    expect_err!(u.apply_blob(&bomb[..], &digest), UnpackError::TooLarge(_));
}

#[test]
fn m33_a_huge_pax_header_is_refused_before_it_is_held_in_memory() {
    // 64 MiB of "extended header" zeros, a few KiB compressed: the tar
    // reader would hold it all for the next entry.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let pax = vec![b'0'; 64 << 20];
    gz.write_all(
        &Layer::default()
            .raw(
                b"././@PaxHeader",
                EntryType::XHeader,
                &pax,
                b"",
                0o644,
                None,
            )
            .file("after", "x")
            .end(),
    )
    .unwrap();
    let blob = gz.finish().unwrap();
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&blob)));
    let s = Scene::new();
    let mut u = Unpacker::new(&s.root, Limits::default()).unwrap();
    match u.apply_blob(&blob[..], &digest) {
        Err(UnpackError::Tar(m)) => assert!(m.contains("metadata"), "{m}"),
        other => panic!("{other:?}"),
    }
    // A directory entry carrying data is drained, not counted as metadata.
    let l = Layer::default()
        .raw(
            b"d",
            EntryType::Directory,
            &vec![7u8; 6 << 20],
            b"",
            0o755,
            None,
        )
        .file("d/f", "ok")
        .end();
    let (s, r) = run(&[l]);
    r.unwrap();
    assert_eq!(std::fs::read_to_string(s.root.join("d/f")).unwrap(), "ok");
}

/// A layer bigger than the disk it lands on stops with a clear error while
/// the disk still has the reserve free, not when it is full. The target is
/// a 64 MiB tmpfs mounted here (as root, as the unpacker runs).
#[test]
fn m34_a_layer_larger_than_the_disk_stops_before_the_reserve() {
    struct Mounted(PathBuf);
    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "mounting the small disk needs root"
    );
    let s = Scene::new();
    nix::mount::mount(
        Some("tmpfs"),
        &s.root,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=64m"),
    )
    .unwrap();
    let _m = Mounted(s.root.clone());
    let big = vec![7u8; 24 << 20];
    let mut layer = Layer(Vec::new());
    for i in 0..5 {
        layer = layer.raw(
            format!("f{i}").as_bytes(),
            EntryType::Regular,
            &big,
            b"",
            0o644,
            None,
        );
    }
    let limits = Limits {
        min_free: 8 << 20,
        ..Limits::default()
    };
    let r = apply(&s, &[layer.end()], limits);
    match &r {
        Err(e @ UnpackError::NoSpace { .. }) => {
            assert!(e.to_string().contains("not enough disk space"), "{e}");
        }
        other => panic!("expected NoSpace, got {other:?}"),
    }
    let st = nix::sys::statvfs::statvfs(&s.root).unwrap();
    let free = st.blocks_available() * st.fragment_size();
    assert!(free >= 8 << 20, "the reserve is left: {free} bytes free");
    // The control: with room, the same kind of layer unpacks whole.
    let small = Layer(Vec::new())
        .raw(b"f", EntryType::Regular, &big, b"", 0o644, None)
        .end();
    let s2 = Scene::new();
    assert!(apply(&s2, &[small], limits).is_ok());
}
