//! A container's user namespace, with its network namespace made inside
//! it. The network namespace must belong to the container's user namespace:
//! the OCI runtime mounts `/sys` as the container's root, and the kernel
//! lets a sysfs be mounted only by the owner of the network namespace it
//! shows (a bind of the host's `/sys` instead would show the node's
//! interfaces, other tenants' bridges among them). Kubernetes' user
//! namespace pods make their pod network namespace the same way.
//!
//! The container's root never gets `CAP_NET_ADMIN` for it: its runtime
//! drops every capability but three from the bounding set, and the seccomp
//! allowlist refuses new namespaces.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};

use super::NetError;

/// A new user namespace mapping ids `0..size` to `base..base+size` (uids
/// and gids alike), and a new network namespace it owns, each held by its
/// fd. A short-lived child makes both (a threaded process cannot enter a
/// new user namespace itself); this process writes the maps and keeps the
/// namespaces once the child is gone.
pub fn new_user_and_net(base: u32, size: u32) -> Result<(OwnedFd, OwnedFd), NetError> {
    let what = "create the container's user and network namespaces";
    if base == 0 || size == 0 || base.checked_add(size - 1).is_none() {
        return Err(NetError::host(
            what,
            format!("no ids to map: {base}+{size}"),
        ));
    }
    let err = |e: std::io::Error| NetError::host(what, e);
    let (ready_r, ready_w) = pipe().map_err(err)?;
    let (go_r, go_w) = pipe().map_err(err)?;
    let (ready_w_fd, go_r_fd, go_w_fd, ready_r_fd) = (
        ready_w.as_raw_fd(),
        go_r.as_raw_fd(),
        go_w.as_raw_fd(),
        ready_r.as_raw_fd(),
    );
    // SAFETY: the child calls only close, unshare, write, read and _exit,
    // raw syscalls that are async-signal-safe, on fds made before the fork;
    // it never returns into this process's code or drops anything.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: see above; the buffers are this frame's locals.
        unsafe {
            libc::close(go_w_fd);
            libc::close(ready_r_fd);
            let errno: i32 = if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) == 0 {
                0
            } else {
                *libc::__errno_location()
            };
            let bytes = errno.to_ne_bytes();
            libc::write(ready_w_fd, bytes.as_ptr().cast(), bytes.len());
            let mut b = 0u8;
            // Until the parent closes its end: EOF.
            libc::read(go_r_fd, std::ptr::from_mut(&mut b).cast(), 1);
            libc::_exit(0);
        }
    }
    drop((ready_w, go_r));
    let made = (|| -> std::io::Result<(OwnedFd, OwnedFd)> {
        let mut bytes = [0u8; 4];
        std::fs::File::from(ready_r).read_exact(&mut bytes)?;
        match i32::from_ne_bytes(bytes) {
            0 => {}
            errno => return Err(std::io::Error::from_raw_os_error(errno)),
        }
        let map = format!("0 {base} {size}\n");
        std::fs::write(format!("/proc/{pid}/uid_map"), &map)?;
        std::fs::write(format!("/proc/{pid}/gid_map"), &map)?;
        let user = std::fs::File::open(format!("/proc/{pid}/ns/user"))?;
        let net = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
        Ok((user.into(), net.into()))
    })();
    drop(go_w);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    made.map_err(err)
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root only (writing another process's maps needs CAP_SETUID), as the
    /// runtime itself.
    #[test]
    fn the_namespaces_map_the_block_and_the_network_belongs_to_the_user_namespace() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("not root: the maps cannot be written; skipped");
            return;
        }
        let (user, net) = new_user_and_net(3_000_000_000, 65536).unwrap_or_else(|e| panic!("{e}"));
        // NS_GET_USERNS on the network namespace: its owner.
        const NS_GET_USERNS: libc::c_ulong = 0xb701;
        // SAFETY: the ioctl takes no argument and returns a new fd or -1.
        let owner = unsafe { libc::ioctl(net.as_raw_fd(), NS_GET_USERNS) };
        assert!(owner >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: a new fd that nothing else owns.
        let owner = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(owner) };
        let ino = |fd: &OwnedFd| {
            nix::sys::stat::fstat(fd)
                .map(|s| s.st_ino)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(
            ino(&owner),
            ino(&user),
            "the net namespace is the user namespace's"
        );
        let host = std::fs::File::open("/proc/self/ns/user").unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(ino(&user), ino(&host.into()), "a new user namespace");
        for bad in [(0, 65536), (1, 0), (u32::MAX, 2)] {
            assert!(new_user_and_net(bad.0, bad.1).is_err(), "{bad:?}");
        }
    }
}
