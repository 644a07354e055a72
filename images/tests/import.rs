//! Images built by someone else's tools (umoci, skopeo) from a busybox
//! root: imported as an OCI layout directory, an OCI layout tar and a
//! `docker save` tarball, they unpack to the same tree, with the image's
//! owners and modes; root disks build and come back cached.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use bulkhead_images::rootdisk::{self, Format};
use bulkhead_images::store::{import, Store, StoreError};
use common::{unpack, Fixture};

#[test]
fn docker_save_oci_tar_and_oci_dir_give_the_same_tree_with_the_images_owners() {
    let f = Fixture::new();
    let stores: Vec<(Store, &str)> = vec![
        (Store::open(f.path("s-docker")).unwrap(), "docker.tar"),
        (Store::open(f.path("s-ocitar")).unwrap(), "oci.tar"),
        (Store::open(f.path("s-ocidir")).unwrap(), "layout"),
    ];
    let mut trees = Vec::new();
    for (store, src) in &stores {
        let name = if *src == "docker.tar" {
            None
        } else {
            Some("busybox:t")
        };
        let imported = import::import(store, &f.path(src), name).unwrap();
        assert_eq!(imported.names, ["busybox:t"], "{src}");
        let img = store.image(&imported.manifest).unwrap();
        let spec = img.config.config.process_spec();
        assert_eq!(
            (spec.args, spec.cwd.as_deref()),
            (vec!["/bin/sh".to_string()], Some("/home/alice")),
            "{src}"
        );
        assert!(spec.env.contains(&"GREETING=hi".to_string()), "{src}");
        trees.push(unpack(store, "busybox:t", &f.path(&format!("tree-{src}"))));
    }
    assert_eq!(trees[0], trees[1], "docker save vs OCI tar");
    assert_eq!(trees[1], trees[2], "OCI tar vs OCI dir");
    let notes = std::fs::metadata(f.path("tree-docker.tar/home/alice/notes")).unwrap();
    assert_eq!((notes.uid(), notes.gid()), (1000, 1000));
    let su = std::fs::metadata(f.path("tree-docker.tar/bin/su")).unwrap();
    assert_eq!(su.mode() & 0o7777, 0o4755);

    // A root disk keeps them too; the second request is the cached file.
    let store = &stores[0].0;
    let d = store.resolve("busybox:t").unwrap();
    let disk = rootdisk::build(store, &d, Format::Ext4, &mut |_| {}).unwrap();
    let stat = Command::new("debugfs")
        .args(["-R", "stat /home/alice/notes"])
        .arg(&disk)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&stat.stdout);
    assert!(
        text.contains("User:  1000") && text.contains("Group:  1000"),
        "{text}"
    );
    let stat = Command::new("debugfs")
        .args(["-R", "stat /bin/su"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&stat.stdout).contains("Mode:  04755"),
        "{}",
        String::from_utf8_lossy(&stat.stdout)
    );
    let mtime = std::fs::metadata(&disk).unwrap().modified().unwrap();
    assert_eq!(
        rootdisk::build(store, &d, Format::Ext4, &mut |m| panic!("rebuilt: {m}")).unwrap(),
        disk
    );
    assert_eq!(std::fs::metadata(&disk).unwrap().modified().unwrap(), mtime);
    let erofs = rootdisk::build(store, &d, Format::Erofs, &mut |_| {}).unwrap();
    assert!(erofs.is_file() && erofs != disk);

    // gc keeps what a name reaches (it may drop side files of the docker
    // save tarball), then frees it all once the name goes.
    let r = store.gc().unwrap();
    assert_eq!(r.disks_removed, 0, "{r:?}");
    let img = store.image(&d).unwrap();
    assert!(img
        .manifest
        .layers
        .iter()
        .all(|l| store.has_blob(&l.digest)));
    store.remove_ref("busybox:t").unwrap();
    let r = store.gc().unwrap();
    assert!(r.blobs_removed >= 3 && r.disks_removed == 2, "{r:?}");
}

#[test]
fn a_blob_that_does_not_match_its_digest_is_refused() {
    let f = Fixture::new();
    // Flip a byte in the largest blob (the layer) of a copy of the layout.
    let blobs = f.path("layout/blobs/sha256");
    let biggest = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&biggest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&biggest, bytes).unwrap();
    let store = Store::open(f.path("s")).unwrap();
    match import::import(&store, &f.path("layout"), Some("x")) {
        Err(StoreError::DigestMismatch { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(store.refs().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
        0,
        "no temp file left"
    );
}
