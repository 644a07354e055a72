//! A container root filesystem made of static busybox: what the agent
//! tests use as "the image" (a directory for the namespace tests, an ext4
//! disk for the VM tests).

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

/// Users of the test image: root, alice (1000, also in wheel and audio), bob.
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\nbob:x:1001:1001::/home/bob:/bin/sh\n";
pub const GROUP: &str =
    "root:x:0:\nwheel:x:10:alice\naudio:x:29:alice,bob\nalice:x:1000:\nbob:x:1001:\n";

/// Fills `dir` with /bin/busybox, a symlink per applet, /etc/passwd and
/// /etc/group, home directories, and `/notexec` (a file without the
/// execute bit).
pub fn build(dir: &Path) -> std::io::Result<()> {
    for d in [
        "bin",
        "etc",
        "root",
        "home/alice",
        "home/bob",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
    ] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox"))?;
    let list = Command::new("/bin/busybox").arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        symlink("busybox", dir.join("bin").join(applet))?;
    }
    std::fs::write(dir.join("etc/passwd"), PASSWD)?;
    std::fs::write(dir.join("etc/group"), GROUP)?;
    std::fs::write(dir.join("notexec"), "#!/bin/sh\necho should not run\n")?;
    std::fs::set_permissions(dir.join("notexec"), std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// [`build`]'s tree as a `docker save` tarball at `out`, tagged `tag`,
/// whose config sets no environment at all (no PATH: the runtime's
/// default must do).
pub fn docker_save_without_env(dir: &Path, out: &Path, tag: &str) -> std::io::Result<()> {
    use sha2::Digest;
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree)?;
    build(&tree)?;
    let layer_path = dir.join("layer.tar");
    let mut layer = tar::Builder::new(std::fs::File::create(&layer_path)?);
    layer.follow_symlinks(false);
    layer.append_dir_all(".", &tree)?;
    layer.into_inner()?.sync_all()?;
    let diff_id = format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(std::fs::read(&layer_path)?))
    );
    let config = serde_json::json!({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]}, "rootfs": {"type": "layers", "diff_ids": [diff_id]}});
    let manifest =
        serde_json::json!([{"Config": "config.json", "RepoTags": [tag], "Layers": ["layer.tar"]}]);
    let mut outer = tar::Builder::new(std::fs::File::create(out)?);
    for (name, bytes) in [
        ("config.json", config.to_string().into_bytes()),
        ("manifest.json", manifest.to_string().into_bytes()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        outer.append_data(&mut h, name, bytes.as_slice())?;
    }
    outer.append_path_with_name(&layer_path, "layer.tar")?;
    outer.into_inner()?.sync_all()
}

/// An erofs image of [`build`]'s tree (mkfs.erofs as `bulkhead` makes an
/// image's root disk).
pub fn erofs(dir: &Path, image: &Path) -> std::io::Result<()> {
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree)?;
    build(&tree)?;
    let status = Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(image)
        .arg(&tree)
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "mkfs.erofs failed: {status}"
        )));
    }
    Ok(())
}

/// An ext4 image of [`build`]'s tree.
pub fn ext4(dir: &Path, image: &Path) -> std::io::Result<()> {
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree)?;
    build(&tree)?;
    std::fs::File::create(image)?; // an existing file keeps mkfs quiet
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-d"])
        .arg(&tree)
        .arg(image)
        .arg("16M")
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!("mkfs.ext4 failed: {status}")));
    }
    Ok(())
}
