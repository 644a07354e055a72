use super::*;
use std::os::unix::fs::symlink;

fn root() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn write(p: &Path, body: &str, mode: u32) {
    std::fs::write(p, body).expect("write");
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn resolution_stays_in_the_root_and_refuses_to_climb_out() {
    let t = root();
    let r = t.path();
    std::fs::create_dir_all(r.join("a/b")).expect("mkdir");
    symlink("/a", r.join("abs")).expect("symlink");
    symlink("b", r.join("a/rel")).expect("symlink");
    symlink("../../..", r.join("a/up")).expect("symlink");
    symlink("/../etc", r.join("rootup")).expect("symlink");
    symlink("loop2", r.join("loop1")).expect("symlink");
    symlink("loop1", r.join("loop2")).expect("symlink");
    write(&r.join("a/file"), "x", 0o644);
    assert_eq!(resolve(r, "/abs/b", true).expect("abs"), r.join("a/b"));
    assert_eq!(resolve(r, "/abs/rel", true).expect("rel"), r.join("a/b"));
    assert_eq!(
        resolve(r, "/abs/rel", false).expect("kept"),
        r.join("a/rel")
    );
    assert_eq!(
        resolve(r, "/a/b/../b/./", true).expect("dots"),
        r.join("a/b")
    );
    assert_eq!(
        resolve(r, "/a/new", true).expect("missing last"),
        r.join("a/new")
    );
    assert_eq!(resolve(r, "/", true).expect("root"), r.to_path_buf());
    for (path, follow) in [
        ("/a/up", true),
        ("/a/up/x", false),
        ("/rootup", true),
        ("/..", true),
        ("/a/../../etc/passwd", true),
    ] {
        assert!(
            matches!(resolve(r, path, follow), Err(CopyError::Escapes(_))),
            "{path} not refused"
        );
    }
    // Not followed, a symlink at the end is just a name.
    assert_eq!(
        resolve(r, "/a/up", false).expect("unfollowed"),
        r.join("a/up")
    );
    assert!(matches!(
        resolve(r, "/loop1", true),
        Err(CopyError::Loop(_))
    ));
    assert!(matches!(
        resolve(r, "/nope/x", true),
        Err(CopyError::NotFound(_))
    ));
    assert!(matches!(
        resolve(r, "/a/file/x", true),
        Err(CopyError::NotADirectory(_))
    ));
}

fn hdr(name: &str, dir: bool, contents_only: bool) -> CopyHeader {
    CopyHeader {
        name: name.into(),
        dir,
        contents_only,
    }
}

#[test]
fn placement_follows_docker_cp() {
    use DestState::{Dir, File, Missing};
    use Placement::{As, Contents, Into};
    let file = hdr("f", false, false);
    let dir = hdr("d", true, false);
    let contents = hdr("d", true, true);
    let bare = hdr("", true, true);
    let ok = [
        (&file, "/x", Dir, Into),
        (&file, "/x", File, As),
        (&file, "/x", Missing, As),
        (&dir, "/x", Dir, Into),
        (&dir, "/x/", Dir, Into),
        (&dir, "/x", Missing, As),
        (&contents, "/x", Dir, Contents),
        (&contents, "/x", Missing, As),
        (&bare, "/x", Dir, Contents),
    ];
    for (h, dest, state, want) in ok {
        assert_eq!(
            placement(h, dest, state).expect("placed"),
            want,
            "{h:?} {dest} {state:?}"
        );
    }
    let refused = [
        (&file, "/x/", File),
        (&file, "/x/", Missing),
        (&dir, "/x", File),
        (&contents, "/x", File),
        (&bare, "/x", File),
        (&bare, "/x", Missing),
    ];
    for (h, dest, state) in refused {
        assert!(
            placement(h, dest, state).is_err(),
            "{h:?} {dest} {state:?} placed"
        );
    }
}

#[test]
fn stream_names_land_under_their_top_or_are_refused() {
    let to = Rename::To(b"new".to_vec());
    assert_eq!(
        land(b"d/x/y", "d", &Rename::Keep).expect("keep"),
        Some("d/x/y".into())
    );
    assert_eq!(land(b"./d/x", "d", &to).expect("to"), Some("new/x".into()));
    assert_eq!(
        land(b"d/x", "d", &Rename::Drop).expect("drop"),
        Some("x".into())
    );
    assert_eq!(land(b"d/", "d", &Rename::Drop).expect("top"), None);
    assert_eq!(
        land(b"a/b", "", &Rename::Drop).expect("bare"),
        Some("a/b".into())
    );
    for bad in [
        &b"/etc/passwd"[..],
        b"d/../../x",
        b"e/x",
        b"dd/x",
        b"..",
        b"d/\0",
    ] {
        assert!(
            land(bad, "d", &Rename::Keep).is_err(),
            "{:?} landed",
            String::from_utf8_lossy(bad)
        );
    }
    assert!(land(b"../x", "", &Rename::Drop).is_err());
}

#[test]
fn a_copy_travels_under_the_name_it_was_asked_by() {
    for (path, name, contents) in [
        ("/srv/data", "data", false),
        ("/srv/data/", "data", false),
        ("/srv/data/.", "data", true),
        ("/link", "link", false),
        ("/", "rootfs", true),
        ("/a/..", "rootfs", false),
    ] {
        assert_eq!(
            (top_name(path), contents_only(path)),
            (name.to_string(), contents),
            "{path}"
        );
    }
}

#[test]
fn ids_shift_by_the_base_and_stay_in_its_range() {
    let p = Path::new("/x");
    let s = IdShift(100_000);
    assert_eq!(s.outward(100_000), 0);
    assert_eq!(s.outward(165_535), 65_535);
    assert_eq!(s.outward(165_536), OVERFLOW_ID);
    assert_eq!(s.outward(5), OVERFLOW_ID);
    assert_eq!(s.inward(7, p).expect("mapped"), 100_007);
    assert!(s.inward(65_536, p).is_err());
    assert!(IdShift(0).inward(u64::from(u32::MAX) + 1, p).is_err());
    assert_eq!(IdShift(0).outward(1234), 1234);
}

/// Type, mode, owner, content or link target of every entry under `p`.
fn listing(p: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = p.join(&rel);
        let m = std::fs::symlink_metadata(&full).expect("lstat");
        let what = if m.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&full)
                .expect("readdir")
                .map(|e| e.expect("entry").file_name())
                .collect();
            names.sort();
            stack.extend(names.into_iter().map(|n| rel.join(n)));
            "dir".to_string()
        } else if m.file_type().is_symlink() {
            format!(
                "-> {}",
                std::fs::read_link(&full).expect("readlink").display()
            )
        } else if m.file_type().is_fifo() {
            "fifo".into()
        } else {
            format!("file {:?}", std::fs::read_to_string(&full).expect("read"))
        };
        let mode = if m.file_type().is_symlink() {
            0
        } else {
            m.mode() & 0o7777
        };
        out.push(format!(
            "{} {what} {mode:o} {}:{}",
            rel.display(),
            m.uid(),
            m.gid()
        ));
    }
    out.sort();
    out
}

fn tree(r: &Path) -> PathBuf {
    let d = r.join("srv/data");
    std::fs::create_dir_all(d.join("sub/empty")).expect("mkdir");
    write(&d.join("a.txt"), "alpha\n", 0o640);
    write(&d.join("sub/run"), "#!/bin/sh\n", 0o4755);
    symlink("../a.txt", d.join("sub/rel")).expect("symlink");
    symlink("/etc/passwd", d.join("abs")).expect("symlink");
    nix::unistd::mkfifo(
        &d.join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("mkfifo");
    std::os::unix::fs::lchown(d.join("a.txt"), Some(1234), Some(2345)).expect("chown");
    std::os::unix::fs::lchown(d.join("sub/rel"), Some(7), Some(8)).expect("chown");
    std::os::unix::fs::lchown(d.join("sub"), Some(1000), Some(1000)).expect("chown");
    std::fs::set_permissions(d.join("sub"), std::fs::Permissions::from_mode(0o750)).expect("chmod");
    // chown cleared the setuid bit: again.
    std::fs::set_permissions(d.join("sub/run"), std::fs::Permissions::from_mode(0o4755))
        .expect("chmod");
    d
}

fn stream_of(r: &Path, path: &str) -> Vec<u8> {
    let mut notes = Vec::new();
    let mut out = Vec::new();
    send(r, path, false, IdShift(0), &mut out, &mut |n| notes.push(n)).expect("send");
    assert!(notes.is_empty(), "{notes:?}");
    out
}

#[test]
fn a_tree_round_trips_with_owners_modes_symlinks_and_fifos() {
    let (a, b) = (root(), root());
    let src = tree(a.path());
    let stream = stream_of(a.path(), "/srv/data");
    std::fs::create_dir(b.path().join("in")).expect("mkdir");
    // Into an existing directory: under its own name; owners kept.
    receive(b.path(), "/in", true, IdShift(0), &stream[..], &mut |_| {}).expect("receive");
    assert_eq!(listing(&src), listing(&b.path().join("in/data")));
    // To a new name, owners the workload's root.
    receive(
        b.path(),
        "/copy",
        false,
        IdShift(0),
        &stream[..],
        &mut |_| {},
    )
    .expect("receive");
    let rooted: Vec<String> = listing(&src)
        .iter()
        .map(|l| {
            let (rest, _) = l.rsplit_once(' ').expect("owner");
            format!("{rest} 0:0")
        })
        .collect();
    assert_eq!(rooted, listing(&b.path().join("copy")));
    // Its contents only, into an existing directory.
    let contents = stream_of(a.path(), "/srv/data/.");
    std::fs::create_dir(b.path().join("flat")).expect("mkdir");
    receive(
        b.path(),
        "/flat",
        true,
        IdShift(0),
        &contents[..],
        &mut |_| {},
    )
    .expect("receive");
    assert_eq!(listing(&src)[1..], listing(&b.path().join("flat"))[1..]);
}

#[test]
fn a_stopped_containers_ids_are_shifted_both_ways() {
    let (a, b) = (root(), root());
    std::fs::create_dir(a.path().join("d")).expect("mkdir");
    write(&a.path().join("d/f"), "x", 0o600);
    std::os::unix::fs::lchown(a.path().join("d/f"), Some(100_033), Some(100_044)).expect("chown");
    let mut out = Vec::new();
    send(
        a.path(),
        "/d/f",
        false,
        IdShift(100_000),
        &mut out,
        &mut |_| {},
    )
    .expect("send");
    receive(b.path(), "/g", true, IdShift(0), &out[..], &mut |_| {}).expect("receive");
    let m = std::fs::metadata(b.path().join("g")).expect("stat");
    assert_eq!((m.uid(), m.gid()), (33, 44));
    receive(
        b.path(),
        "/h",
        true,
        IdShift(200_000),
        &out[..],
        &mut |_| {},
    )
    .expect("receive");
    let m = std::fs::metadata(b.path().join("h")).expect("stat");
    assert_eq!((m.uid(), m.gid()), (200_033, 200_044));
}

#[test]
fn files_land_as_docker_cp_puts_them() {
    let (a, b) = (root(), root());
    write(&a.path().join("f"), "new", 0o644);
    let stream = stream_of(a.path(), "/f");
    write(&b.path().join("old"), "old", 0o600);
    receive(
        b.path(),
        "/old",
        false,
        IdShift(0),
        &stream[..],
        &mut |_| {},
    )
    .expect("over a file");
    assert_eq!(
        std::fs::read_to_string(b.path().join("old")).expect("read"),
        "new"
    );
    std::fs::create_dir(b.path().join("d")).expect("mkdir");
    receive(b.path(), "/d/", false, IdShift(0), &stream[..], &mut |_| {}).expect("into a dir");
    assert_eq!(
        std::fs::read_to_string(b.path().join("d/f")).expect("read"),
        "new"
    );
    symlink("/d", b.path().join("link")).expect("symlink");
    receive(
        b.path(),
        "/link/g",
        false,
        IdShift(0),
        &stream[..],
        &mut |_| {},
    )
    .expect("through a link");
    assert_eq!(
        std::fs::read_to_string(b.path().join("d/g")).expect("read"),
        "new"
    );
    assert!(receive(
        b.path(),
        "/nodir/",
        false,
        IdShift(0),
        &stream[..],
        &mut |_| {}
    )
    .is_err());
    assert!(receive(
        b.path(),
        "/no/such/x",
        false,
        IdShift(0),
        &stream[..],
        &mut |_| {}
    )
    .is_err());
    // A directory never lands on a file, nor a file on a directory.
    std::fs::create_dir_all(a.path().join("dd")).expect("mkdir");
    let dir_stream = stream_of(a.path(), "/dd");
    assert!(matches!(
        receive(
            b.path(),
            "/old",
            false,
            IdShift(0),
            &dir_stream[..],
            &mut |_| {}
        ),
        Err(CopyError::DirOntoFile(_))
    ));
    std::fs::create_dir_all(b.path().join("e/f")).expect("mkdir");
    assert!(matches!(
        receive(b.path(), "/e", false, IdShift(0), &stream[..], &mut |_| {}),
        Err(CopyError::FileOntoDir(_))
    ));
    // Sending refuses what is not there or climbs out.
    let mut sink = Vec::new();
    assert!(matches!(
        send(
            a.path(),
            "/missing",
            false,
            IdShift(0),
            &mut sink,
            &mut |_| {}
        ),
        Err(CopyError::NotFound(_))
    ));
    symlink("../../../../etc", a.path().join("out")).expect("symlink");
    assert!(matches!(
        send(a.path(), "/out", true, IdShift(0), &mut sink, &mut |_| {}),
        Err(CopyError::Escapes(_))
    ));
    assert!(matches!(
        send(a.path(), "/f/.", false, IdShift(0), &mut sink, &mut |_| {}),
        Err(CopyError::NotADirectory(_))
    ));
}

#[test]
fn a_hostile_stream_writes_nothing_outside_its_place() {
    let b = root();
    std::fs::create_dir(b.path().join("in")).expect("mkdir");
    let mut stream = hdr("top", true, false).to_line();
    let mut tar = tar::Builder::new(Vec::new());
    for (name, body) in [("top/ok", &b"fine"[..]), ("other/evil", b"evil")] {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, body).expect("append");
    }
    stream.extend(tar.into_inner().expect("tar"));
    assert!(matches!(
        receive(b.path(), "/in", false, IdShift(0), &stream[..], &mut |_| {}),
        Err(CopyError::Stream(_))
    ));
    assert!(!b.path().join("in/other").exists());
    assert!(!b.path().join("other").exists());
    // Garbage after the header, and a stream cut short.
    let mut junk = hdr("top", true, false).to_line();
    junk.extend(vec![0x41; 1500]);
    assert!(receive(b.path(), "/in", false, IdShift(0), &junk[..], &mut |_| {}).is_err());
    assert!(receive(b.path(), "/in", false, IdShift(0), &b"{"[..], &mut |_| {}).is_err());
}
