//! The spawn server and its helpers. `berthd --spawn-machine` is the server: single-threaded,
//! started once by berthd with a socket as its standard input, it forks one spawn helper per
//! machine start ([`server_main`], see [`super::spawn_server`]). The helper builds the
//! machine's mount tree in a private mount namespace, clones the machine's PID 1 into new
//! user, mount, PID, UTS and IPC namespaces (as a child of berthd, so no helper process stays
//! around), reports its PID and exits.
//!
//! PID 1 then waits for berthd (ID maps, scope, machined), mounts /proc and cgroup2, pivots
//! into the root and execs the init. Protocol, one line per message on the helper's socket:
//! berthd → helper: config JSON; helper → berthd: `pid N`; berthd → PID 1: `maps`;
//! PID 1 → berthd: `proc`; berthd → PID 1: `go`; PID 1 execs (berthd sees EOF). Either side
//! of the machine may send `error: MESSAGE` instead and exit.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::mount::{
    MountFlags, MountPropagationFlags, MoveMountFlags, OpenTreeFlags, UnmountFlags,
};

use super::{Payload, RuntimeError, SpawnConfig, StdioMode};
use crate::machine::RANGE_SIZE;
use crate::sys::process::{
    CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER, CLONE_NEWUTS,
    CLONE_PARENT, Forked,
};

/// Entry point of `berthd --spawn-machine`, the spawn server: for each byte berthd sends with
/// a socket attached, forks a spawn helper on that socket and answers `pid N`; ends when
/// berthd closes its end.
pub fn server_main() -> ExitCode {
    let socket = match io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => UnixStream::from(fd),
        Err(e) => {
            eprintln!("berthd --spawn-machine: no socket on stdin: {e}");
            return ExitCode::FAILURE;
        }
    };
    loop {
        let mut byte = [0u8; 1];
        let fds = match super::fdpass::receive(&socket, &mut byte) {
            Ok((0, _)) => return ExitCode::SUCCESS,
            Ok((_, fds)) => fds,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("berthd --spawn-machine: cannot read from berthd: {e}");
                return ExitCode::FAILURE;
            }
        };
        let Some(helper_socket) = fds.into_iter().next() else {
            if writeln!(&socket, "error: no socket for the spawn helper").is_err() {
                return ExitCode::FAILURE;
            }
            continue;
        };
        // A plain fork, but the helper is berthd's child, not the server's.
        let answer = match crate::sys::process::clone_process(CLONE_PARENT) {
            Ok(Forked::Parent { child }) => format!("pid {child}"),
            Ok(Forked::Child) => become_helper(socket, helper_socket),
            Err(e) => format!("error: forking a spawn helper: {e}"),
        };
        drop(helper_socket);
        if writeln!(&socket, "{answer}").is_err() {
            return ExitCode::FAILURE;
        }
    }
}

/// In a newly forked helper: lets go of the server's socket (also its standard input) and
/// serves one machine start on `helper_socket`.
fn become_helper(server_socket: UnixStream, helper_socket: OwnedFd) -> ! {
    drop(server_socket);
    let served = match rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .and_then(|null| rustix::stdio::dup2_stdin(&null))
    {
        Ok(()) => serve_one_start(UnixStream::from(helper_socket)),
        Err(e) => {
            eprintln!("berthd --spawn-machine: cannot replace the helper's standard input: {e}");
            false
        }
    };
    std::process::exit(if served { 0 } else { 1 })
}

/// One spawn helper, serving one machine start on `socket`; whether it succeeded (berthd has
/// the error otherwise).
fn serve_one_start(socket: UnixStream) -> bool {
    let mut reader = BufReader::new(match socket.try_clone() {
        Ok(s) => s,
        Err(_) => return false,
    });
    let result = receive_fds(&socket).and_then(|(hold, fds)| {
        read_line(&mut reader)
            .and_then(|line| {
                serde_json::from_str::<SpawnConfig>(&line).map_err(|e| {
                    RuntimeError::step("reading the spawn config", io::Error::other(e))
                })
            })
            .and_then(|config| outer(&config, hold, fds, &socket, &mut reader))
    });
    match result {
        Ok(()) => true,
        Err(e) => {
            let _ = writeln!(&socket, "error: {e}");
            false
        }
    }
}

/// The descriptors berthd passes first: the hold pipe (see [`outer`]), the status file, then
/// maybe stdin, stdout, stderr.
fn receive_fds(socket: &UnixStream) -> Result<(OwnedFd, InnerFds), RuntimeError> {
    let mut byte = [0u8; 1];
    let (_, fds) = step(
        "receiving descriptors from berthd",
        super::fdpass::receive(socket, &mut byte),
    )?;
    let mut fds = fds.into_iter();
    let hold = fds.next().ok_or_else(|| {
        RuntimeError::step(
            "receiving descriptors from berthd",
            io::Error::other("no hold pipe"),
        )
    })?;
    let status = fds.next();
    let stdio = match (fds.next(), fds.next(), fds.next()) {
        (Some(stdin), Some(stdout), Some(stderr)) => Some([stdin, stdout, stderr]),
        _ => None,
    };
    Ok((
        hold,
        InnerFds {
            status,
            stdio,
            terminal: None,
        },
    ))
}

/// What PID 1 keeps open for its payload.
struct InnerFds {
    status: Option<OwnedFd>,
    stdio: Option<[OwnedFd; 3]>,
    /// The terminal's subsidiary side ([`StdioMode::Terminal`]).
    terminal: Option<OwnedFd>,
}

fn read_line(reader: &mut impl BufRead) -> Result<String, RuntimeError> {
    let mut line = String::new();
    let n = reader
        .read_line(&mut line)
        .map_err(|e| RuntimeError::step("reading from berthd", e))?;
    if n == 0 {
        return Err(RuntimeError::step(
            "waiting for berthd",
            io::Error::other("berthd went away"),
        ));
    }
    Ok(line.trim_end().to_owned())
}

fn step<T>(what: &str, result: impl Into<io::Result<T>>) -> Result<T, RuntimeError> {
    result.into().map_err(|e| RuntimeError::step(what, e))
}

fn errno<T>(what: &str, result: rustix::io::Result<T>) -> Result<T, RuntimeError> {
    result.map_err(|e| RuntimeError::step(what, e.into()))
}

/// The helper, in the host's user namespace with a private mount namespace. After reporting
/// PID 1 it lives on until berthd closes the other end of `hold` (or dies): berthd may have
/// started the machine's scope with this process in it, and systemd refuses to start a scope
/// whose processes are all gone.
fn outer(
    config: &SpawnConfig,
    hold: OwnedFd,
    mut fds: InnerFds,
    socket: &UnixStream,
    reader: &mut BufReader<UnixStream>,
) -> Result<(), RuntimeError> {
    let root = &config.root;
    let base = config.uid_base;
    // Reported with the PID, for berthd's log of where a start's time goes.
    let mut watch = crate::stopwatch::Stopwatch::start();
    unshare_mount_namespace(nix::sched::CloneFlags::empty())?;
    watch.lap("mount namespace");
    if let Some(volume) = &config.volume {
        mount_volume(volume, root)?;
        watch.lap("volume");
    }
    if !config.etc.is_empty() {
        write_guest_etc(root, &config.etc)?;
        watch.lap("guest etc");
    }
    // Mount points, created in the plain tree (so they belong to container root).
    for dir in ["proc", "sys", "dev", "run", "tmp"] {
        ensure_dir(&root.join(dir))?;
    }
    for bind in config
        .binds
        .iter()
        .filter(|b| !on_berth_tmpfs(&b.destination))
    {
        refuse_symlinks(root, &bind.destination)?;
        create_bind_point(bind, &inside(root, &bind.destination), None)?;
    }
    watch.lap("mount points");
    idmap_root(root, base)?;
    watch.lap("idmapped root");

    let mut mounts: Vec<(&str, &str, MountFlags, String)> = vec![
        (
            "sys",
            "sysfs",
            MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            String::new(),
        ),
        (
            "dev",
            "tmpfs",
            MountFlags::NOSUID | MountFlags::STRICTATIME,
            format!("mode=755,size=4m,nr_inodes=64k,uid={base},gid={base}"),
        ),
        (
            "run",
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::STRICTATIME,
            format!("mode=755,uid={base},gid={base}"),
        ),
    ];
    // /tmp is mounted by PID 1, in the machine's user namespace, so that the guest's systemd
    // can unmount it at shutdown (a mount made here is locked in the machine, and its
    // shutdown would report "Failed unmounting tmp.mount"). A --bind below /tmp must land
    // on the tmpfs, so then it is mounted here, before the binds.
    if tmp_before_binds(&config.binds) {
        mounts.push((
            "tmp",
            "tmpfs",
            TMP_FLAGS,
            format!("mode=1777,uid={base},gid={base}"),
        ));
    }
    for (dir, fstype, flags, data) in mounts {
        mount_fs(fstype, &root.join(dir), flags, &data)?;
    }
    watch.lap("sys dev run tmp");
    populate_dev(root, base)?;
    let master = if config.stdio == StdioMode::Terminal {
        let (master, subsidiary) = open_terminal(root, base, config.payload == Payload::Boot)?;
        fds.terminal = Some(subsidiary);
        Some(master)
    } else {
        None
    };
    watch.lap("dev nodes");
    populate_run_host(config)?;
    watch.lap("run-host");
    for bind in &config.binds {
        let target = inside(root, &bind.destination);
        if on_berth_tmpfs(&bind.destination) {
            // On a fresh tmpfs of berth's (only its /dev has symlinks, which are refused).
            refuse_symlinks(root, &bind.destination)?;
            create_bind_point(bind, &target, Some(base))?;
        }
        errno(
            "bind-mounting a --bind source",
            rustix::mount::mount_bind_recursive(&bind.source, &target),
        )?;
        if bind.read_only {
            errno(
                "making a --bind read-only",
                rustix::mount::mount_remount(&target, MountFlags::BIND | MountFlags::RDONLY, ""),
            )?;
        }
    }
    if !config.binds.is_empty() {
        watch.lap("binds");
    }

    // PID 1 becomes an unprivileged host UID that may not traverse berth's 0700 state
    // directory: it starts inside its root and uses relative paths only.
    errno("entering the root", rustix::process::chdir(root))?;
    let mut flags =
        CLONE_PARENT | CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC;
    if config.own_network {
        // berthd configures it (loopback, the veth's end) before PID 1 goes on.
        flags |= CLONE_NEWNET;
    }
    match step(
        "cloning the machine's PID 1",
        crate::sys::process::clone_process(flags),
    )? {
        Forked::Parent { child } => {
            watch.lap("clone");
            let passed: Vec<_> = master.iter().map(AsFd::as_fd).collect();
            step(
                "reporting the PID",
                super::fdpass::send(socket, format!("pid {child} {watch}\n").as_bytes(), &passed),
            )?;
            // Until berthd lets go: EOF, also when berthd dies.
            let mut byte = [0u8; 1];
            loop {
                match rustix::io::read(&hold, &mut byte) {
                    Ok(0) => break,
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(_) => break,
                }
            }
            Ok(())
        }
        Forked::Child => {
            drop(master);
            drop(hold);
            let code = match inner(config, fds, socket, reader) {
                Ok(never) => match never {},
                Err(e) => {
                    let _ = writeln!(&*socket, "error: {e}");
                    1
                }
            };
            std::process::exit(code)
        }
    }
}

/// Mounts the machine's own filesystem on its root, in this mount namespace only: when the
/// machine ends, so does the mount (and the loop device, which mount sets to autoclear).
/// Unshares a mount namespace (and the namespaces in `also`) whose mounts don't reach the
/// host's: made a slave first, or every mount after it would propagate to the host.
fn unshare_mount_namespace(also: nix::sched::CloneFlags) -> Result<(), RuntimeError> {
    step(
        "unsharing the mount namespace",
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS | also).map_err(io::Error::from),
    )?;
    errno(
        "making / a slave mount",
        rustix::mount::mount_change(
            "/",
            MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
        ),
    )
}

fn mount_volume(volume: &Path, root: &Path) -> Result<(), RuntimeError> {
    // A loop device with direct IO, as systemd-nspawn --image uses: the machine's writes go
    // to the disk in the machine's own IO cgroup (so IOWeight and bandwidth limits apply to
    // them) instead of through the host's page cache, and its fsyncs don't wait on a
    // neighbour's dirty pages. A backing filesystem without O_DIRECT falls back to buffered.
    let device = match tool("losetup", &["--find", "--show", "--direct-io=on"], volume) {
        Ok(device) => device,
        Err(_) => tool("losetup", &["--find", "--show"], volume)?,
    };
    let mounted = tool("mount", &["-o", "nosuid,nodev", &device], root);
    // Detaching a mounted loop device only marks it autoclear: it goes away with the last
    // mount, that is with the machine's mount namespace.
    let _ = tool("losetup", &["-d"], Path::new(&device));
    mounted.map(drop)
}

/// Refreshes the host-following timezone and locale in the plain tree (before it is
/// idmapped); what the guest lacks is logged, not fatal.
fn write_guest_etc(root: &Path, etc: &super::guest_etc::GuestEtc) -> Result<(), RuntimeError> {
    let dir = step(
        "opening the machine's root",
        fs::File::open(root).map(OwnedFd::from),
    )?;
    let mut tree = crate::image::tree::TreeWriter::new(dir);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    let mut warnings = super::guest_etc::apply(&mut tree, etc, now);
    match tree.finish() {
        Ok(refused) => warnings.extend(
            refused
                .into_iter()
                .map(|r| format!("not written into the machine: {}: {}", r.path, r.reason)),
        ),
        Err(e) => warnings.push(format!("writing the machine's /etc: {e}")),
    }
    for warning in warnings {
        eprintln!("berthd --spawn-machine: {}: {warning}", config_name(root));
    }
    Ok(())
}

fn config_name(root: &Path) -> String {
    root.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Runs a util-linux tool with `args` then `path`; its trimmed stdout, or its stderr as the
/// error.
fn tool(program: &str, args: &[&str], path: &Path) -> Result<String, RuntimeError> {
    let output = step(
        &format!("running {program} (util-linux) for the machine's volume"),
        Command::new(program)
            .args(args)
            .arg(path)
            .env("LC_ALL", "C")
            .output(),
    )?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).trim().to_string());
    }
    Err(RuntimeError::Machine(format!(
        "{program} {} {}: {}",
        args.join(" "),
        path.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

/// Replaces the root with an idmapped mount of itself: on-disk owner N shows as host UID
/// base+N, so the image is never chowned.
fn idmap_root(root: &Path, base: u32) -> Result<(), RuntimeError> {
    idmap_root_with(root, &throwaway_userns(base)?)
}

/// Mounts `root` over itself, idmapped with the map of user namespace `userns`.
fn idmap_root_with(root: &Path, userns: &OwnedFd) -> Result<(), RuntimeError> {
    let tree = errno(
        "cloning the root mount",
        rustix::mount::open_tree(
            rustix::fs::CWD,
            root,
            OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
        ),
    )?;
    step(
        "idmapping the root (needs kernel 5.12+ and ext4, xfs or btrfs)",
        crate::sys::mount::set_idmap(tree.as_fd(), userns.as_fd()),
    )?;
    errno(
        "mounting the idmapped root",
        rustix::mount::move_mount(
            &tree,
            "",
            rustix::fs::CWD,
            root,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        ),
    )
}

/// For a copy into or out of a stopped machine (the exec helper, single-threaded): gives
/// this process the machine's root as the machine has it, and nothing else. In mount and
/// network namespaces of its own, the machine's volume is mounted and its root idmapped to
/// its UID range, as for a start; then the process enters a user namespace with the
/// machine's map and changes its root to the machine's. Becoming root there (the caller
/// does, as for a running machine) makes it the machine's root, no more.
pub(super) fn enter_stopped_root(stopped: &super::exec::StoppedRoot) -> Result<(), RuntimeError> {
    unshare_mount_namespace(nix::sched::CloneFlags::CLONE_NEWNET)?;
    if let Some(volume) = &stopped.volume {
        mount_volume(volume, &stopped.root)?;
    }
    let userns = throwaway_userns(stopped.uid_base)?;
    idmap_root_with(&stopped.root, &userns)?;
    errno("entering the root", rustix::process::chdir(&stopped.root))?;
    step(
        "entering the machine's user namespace",
        nix::sched::setns(&userns, nix::sched::CloneFlags::CLONE_NEWUSER).map_err(io::Error::from),
    )?;
    errno("changing the root", rustix::process::chroot("."))?;
    errno("entering /", rustix::process::chdir("/"))
}

/// A user namespace with the machine's map, held by a short-lived child, for mount_setattr.
fn throwaway_userns(base: u32) -> Result<OwnedFd, RuntimeError> {
    let (ready_read, ready_write) = errno("creating a pipe", rustix::pipe::pipe())?;
    match step("forking", crate::sys::process::fork())? {
        Forked::Child => {
            drop(ready_read);
            let ok = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_ok();
            let _ = rustix::io::write(&ready_write, if ok { b"y" } else { b"n" });
            loop {
                std::thread::park();
            }
        }
        Forked::Parent { child } => {
            drop(ready_write);
            let mut answer = [0u8; 1];
            let got = rustix::io::read(&ready_read, &mut answer);
            let map = format!("0 {base} {RANGE_SIZE}\n");
            let result = match got {
                Ok(1) if answer[0] == b'y' => fs::write(format!("/proc/{child}/uid_map"), &map)
                    .and_then(|()| fs::write(format!("/proc/{child}/gid_map"), &map))
                    .and_then(|()| File::open(format!("/proc/{child}/ns/user")))
                    .map(OwnedFd::from),
                _ => Err(io::Error::other(
                    "the child could not create a user namespace",
                )),
            };
            if let Some(pid) = rustix::process::Pid::from_raw(child) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
            }
            step("creating the idmap user namespace", result)
        }
    }
}

/// Whether a bind's destination lies on one of the tmpfs berth mounts (/dev, /run, /tmp): its
/// mount point is made once that is mounted, not in the plain tree, where the tmpfs would
/// hide it.
fn on_berth_tmpfs(destination: &Path) -> bool {
    ["/dev", "/run", "/tmp"]
        .iter()
        .any(|dir| destination.starts_with(dir) && destination != Path::new(dir))
}

/// Creates a bind's mount point at `target` when missing (a directory for a directory, an
/// empty file for a file, with the directories above it). With `owner`, what it creates is
/// chowned to that host UID (the machine's root), as on a tmpfs of berth's; in the plain tree
/// host root already shows as the machine's root.
fn create_bind_point(
    bind: &super::SpawnBind,
    target: &Path,
    owner: Option<u32>,
) -> Result<(), RuntimeError> {
    let missing: Vec<PathBuf> = match owner {
        Some(_) => target
            .ancestors()
            .take_while(|p| fs::symlink_metadata(p).is_err())
            .map(Path::to_path_buf)
            .collect(),
        None => Vec::new(),
    };
    if bind.source.is_dir() {
        ensure_dir(target)?;
    } else if !target.exists() {
        if let Some(parent) = target.parent() {
            step("creating bind mount points", fs::create_dir_all(parent))?;
        }
        step(
            "creating a bind mount point",
            File::create(target).map(drop),
        )?;
    }
    if let Some(owner) = owner {
        for path in missing.iter().rev() {
            chown(path, owner)?;
        }
    }
    Ok(())
}

const TMP_FLAGS: MountFlags = MountFlags::NOSUID
    .union(MountFlags::NODEV)
    .union(MountFlags::STRICTATIME);

/// Whether the machine's /tmp is mounted before its binds (by the helper) rather than by its
/// PID 1: when a bind lies below /tmp.
fn tmp_before_binds(binds: &[super::SpawnBind]) -> bool {
    binds.iter().any(|b| b.destination.starts_with("/tmp"))
}

fn mount_fs(
    fstype: &str,
    target: &Path,
    flags: MountFlags,
    data: &str,
) -> Result<(), RuntimeError> {
    let data =
        CString::new(data).map_err(|e| RuntimeError::step("mount options", io::Error::other(e)))?;
    errno(
        &format!("mounting {fstype} on {}", target.display()),
        rustix::mount::mount(fstype, target, fstype, flags, Some(data.as_c_str())),
    )
}

fn ensure_dir(path: &Path) -> Result<(), RuntimeError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(RuntimeError::step(
            &format!("using {} as a mount point", path.display()),
            io::Error::other("not a directory"),
        )),
        Err(_) => step(
            &format!("creating {}", path.display()),
            fs::create_dir_all(path),
        ),
    }
}

/// Fails when a component of `path` inside `root` is a symlink: the guest controls its root,
/// and creating or mounting through its symlinks could reach the host. (The machine is
/// stopped while this runs, so it can't race the check.)
pub fn refuse_symlinks(root: &Path, path: &Path) -> Result<(), RuntimeError> {
    let mut at = root.to_path_buf();
    for part in path
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
    {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(RuntimeError::step(
                    &format!("mounting onto {} in the machine", path.display()),
                    io::Error::other(format!(
                        "{} is a symlink in the machine's root; refusing to follow it",
                        at.strip_prefix(root).unwrap_or(&at).display()
                    )),
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(RuntimeError::step("checking a mount point", e)),
        }
    }
    Ok(())
}

/// A host path for a path inside the machine (`/data` → `ROOT/data`).
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn chown(path: &Path, id: u32) -> Result<(), RuntimeError> {
    errno(
        &format!("chown {}", path.display()),
        rustix::fs::chownat(
            rustix::fs::CWD,
            path,
            Some(rustix::fs::Uid::from_raw(id)),
            Some(rustix::fs::Gid::from_raw(id)),
            AtFlags::SYMLINK_NOFOLLOW,
        ),
    )
}

/// A private /dev: the basic nodes, its own devpts, /dev/shm and /dev/mqueue.
fn populate_dev(root: &Path, base: u32) -> Result<(), RuntimeError> {
    let dev = root.join("dev");
    let old = rustix::process::umask(Mode::empty());
    let nodes = [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ];
    let result = (|| {
        for (name, major, minor) in nodes {
            let path = dev.join(name);
            errno(
                &format!("creating /dev/{name}"),
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &path,
                    FileType::CharacterDevice,
                    Mode::from_raw_mode(0o666),
                    rustix::fs::makedev(major, minor),
                ),
            )?;
            chown(&path, base)?;
        }
        for dir in ["pts", "shm", "mqueue"] {
            step("creating /dev directories", fs::create_dir(dev.join(dir)))?;
            chown(&dev.join(dir), base)?;
        }
        errno(
            "creating /dev/ptmx",
            rustix::fs::symlinkat("pts/ptmx", rustix::fs::CWD, dev.join("ptmx")),
        )?;
        chown(&dev.join("ptmx"), base)?;
        for (name, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            errno(
                "creating /dev symlinks",
                rustix::fs::symlinkat(target, rustix::fs::CWD, dev.join(name)),
            )?;
            chown(&dev.join(name), base)?;
        }
        Ok(())
    })();
    rustix::process::umask(old);
    result?;
    mount_fs(
        "devpts",
        &dev.join("pts"),
        MountFlags::NOSUID | MountFlags::NOEXEC,
        &format!("newinstance,ptmxmode=0666,mode=620,gid={}", base + 5),
    )?;
    mount_fs(
        "tmpfs",
        &dev.join("shm"),
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::STRICTATIME,
        &format!("mode=1777,uid={base},gid={base}"),
    )
}

/// A pseudo-terminal from the machine's own devpts (so it is /dev/pts/N inside, owned by the
/// machine's root); returns (master, subsidiary). For a booted init it also becomes
/// /dev/console, as systemd expects of a container with a terminal.
fn open_terminal(
    root: &Path,
    base: u32,
    console: bool,
) -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    // Owned by the machine's root and its tty group (GID 5), as a login terminal is.
    let (master, subsidiary) = super::open_pty(&root.join("dev/pts/ptmx"), base, base + 5)?;
    if console {
        let name = errno(
            "naming the terminal",
            rustix::pty::ptsname(&master, Vec::new()),
        )?;
        let name = name.to_string_lossy().into_owned();
        let pts = root.join(name.trim_start_matches('/'));
        let console = root.join("dev/console");
        step("creating /dev/console", File::create(&console).map(drop))?;
        chown(&console, base)?;
        errno(
            "binding the terminal to /dev/console",
            rustix::mount::mount_bind(&pts, &console),
        )?;
    }
    Ok((master, subsidiary))
}

/// systemd's container interface: /run/host with os-release, container-manager and
/// container-uuid (copies, so no host path shows in the machine's mount table).
fn populate_run_host(config: &SpawnConfig) -> Result<(), RuntimeError> {
    let host = config.root.join("run/host");
    step("creating /run/host", fs::create_dir(&host))?;
    let os_release = fs::read("/etc/os-release")
        .or_else(|_| fs::read("/usr/lib/os-release"))
        .unwrap_or_default();
    let files: [(&str, Vec<u8>); 3] = [
        ("os-release", os_release),
        ("container-manager", b"berth\n".to_vec()),
        (
            "container-uuid",
            format!("{}\n", uuid(&config.machine_id)).into_bytes(),
        ),
    ];
    for (name, content) in files {
        step("populating /run/host", fs::write(host.join(name), content))?;
        chown(&host.join(name), config.uid_base)?;
    }
    chown(&host, config.uid_base)
}

/// Gives the machine a boot ID of its own (as a machine's kernel would at each boot), bound
/// read-only over /proc/sys/kernel/random/boot_id: its journal then tells its boots apart
/// (`journalctl -b -1`, `--list-boots`), which the host's boot ID, shared by every start,
/// would not. The file behind it, on the machine's /run, is unlinked at once. Runs in PID 1's
/// mount namespace, in the root, with the machine's /proc mounted; on an error nothing of it
/// stays.
fn mount_boot_id() -> Result<(), RuntimeError> {
    // The kernel makes a fresh random UUID at each read of this file.
    let id = step(
        "making the machine's boot ID",
        fs::read_to_string("proc/sys/kernel/random/uuid"),
    )?;
    let file = Path::new("run/.berth-boot-id");
    step("writing the machine's boot ID", fs::write(file, id))?;
    let bound = bind_read_only(
        file,
        Path::new("proc/sys/kernel/random/boot_id"),
        "the machine's boot ID",
    );
    let _ = fs::remove_file(file);
    bound
}

/// Bind-mounts `source` on `target`, then makes that read-only (nosuid, nodev, noexec); a
/// bind that can't be made read-only is taken off again. `what` names it in errors.
fn bind_read_only(source: &Path, target: &Path, what: &str) -> Result<(), RuntimeError> {
    errno(
        &format!("binding {what}"),
        rustix::mount::mount_bind(source, target),
    )?;
    errno(
        &format!("making {what} read-only"),
        rustix::mount::mount_remount(
            target,
            MountFlags::BIND
                | MountFlags::RDONLY
                | MountFlags::NOSUID
                | MountFlags::NODEV
                | MountFlags::NOEXEC,
            "",
        ),
    )
    .inspect_err(|_| {
        let _ = rustix::mount::unmount(target, UnmountFlags::DETACH);
    })
}

/// A machine-id as a UUID: 8-4-4-4-12.
pub fn uuid(machine_id: &str) -> String {
    if machine_id.len() != 32 {
        return machine_id.to_owned();
    }
    format!(
        "{}-{}-{}-{}-{}",
        &machine_id[..8],
        &machine_id[8..12],
        &machine_id[12..16],
        &machine_id[16..20],
        &machine_id[20..]
    )
}

/// The machine's PID 1 before exec: new user, mount, PID, UTS and IPC namespaces.
fn inner(
    config: &SpawnConfig,
    fds: InnerFds,
    socket: &UnixStream,
    reader: &mut BufReader<UnixStream>,
) -> Result<std::convert::Infallible, RuntimeError> {
    let leaf = config
        .root
        .file_name()
        .ok_or_else(|| RuntimeError::step("the root", io::Error::other("no directory name")))?;
    if read_line(reader)? != "maps" {
        return Err(RuntimeError::step(
            "waiting for the ID maps",
            io::Error::other("unexpected message"),
        ));
    }
    // An app's output goes to the journal through a stream connected now, while this
    // process is still host root (its user namespace changes no credentials until the
    // setresuid below): journald then believes the stream's unit name, machine-NAME.scope.
    // It finds a line's unit from the writer's cgroup (this process's, in the scope's payload
    // cgroup by the time the app writes) when it reads the line; an app that prints and ends
    // at once takes this process with it, and without the name its last lines would have no
    // unit, and `berth logs` would miss them.
    let journal = match (&config.payload, config.stdio) {
        (Payload::App(_), StdioMode::Journal) => {
            Some(super::init::connect_journal(&config.name, &config.unit))
        }
        _ => None,
    };
    let zero_gid = nix::unistd::Gid::from_raw(0);
    let zero_uid = nix::unistd::Uid::from_raw(0);
    step(
        "becoming root in the machine",
        nix::unistd::setresgid(zero_gid, zero_gid, zero_gid)
            .and_then(|()| nix::unistd::setgroups(&[]))
            .and_then(|()| nix::unistd::setresuid(zero_uid, zero_uid, zero_uid))
            .map_err(io::Error::from),
    )?;
    errno(
        "setting the hostname",
        rustix::system::sethostname(config.hostname.as_bytes()),
    )?;
    // /proc must be mounted while the host's /proc is still visible in this namespace.
    let proc = Path::new("proc");
    mount_fs(
        "proc",
        proc,
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "",
    )?;
    let proc_sys = proc.join("sys");
    bind_read_only(&proc_sys, &proc_sys, "/proc/sys")?;
    // Best effort: a machine whose /run is a read-only --bind keeps the host's boot ID.
    if let Err(e) = mount_boot_id() {
        eprintln!(
            "berthd --spawn-machine: {}: the machine keeps the host's boot ID: {e}",
            config.name
        );
    }
    mount_fs(
        "mqueue",
        Path::new("dev/mqueue"),
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "",
    )?;
    if !tmp_before_binds(&config.binds) {
        mount_fs("tmpfs", Path::new("tmp"), TMP_FLAGS, "mode=1777")?;
    }
    if config.own_network {
        // The sysfs mounted before the clone shows the host's network devices; one mounted
        // from the machine's own network namespace shows its own (lo, host0), over it.
        mount_fs(
            "sysfs",
            Path::new("sys"),
            MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            "",
        )?;
    }
    step("reporting readiness", writeln!(&*socket, "proc"))?;
    if read_line(reader)? != "go" {
        return Err(RuntimeError::step(
            "waiting for the scope",
            io::Error::other("unexpected message"),
        ));
    }
    // Now in the scope's payload cgroup: that becomes the root of the cgroup namespace.
    step(
        "unsharing the cgroup namespace",
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP).map_err(io::Error::from),
    )?;
    mount_fs(
        "cgroup2",
        Path::new("sys/fs/cgroup"),
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "",
    )?;
    // pivot_root refuses the locked root inherited into this namespace; a fresh rbind isn't.
    errno(
        "rebinding the root",
        rustix::mount::mount_bind_recursive(".", "."),
    )?;
    // Step out and back in by name, to land on the new mount (the cwd stays on the old one).
    errno("leaving the root", rustix::process::chdir(".."))?;
    errno("entering the rebound root", rustix::process::chdir(leaf))?;
    errno(
        "pivoting into the root",
        rustix::process::pivot_root(".", "."),
    )?;
    errno(
        "detaching the host tree",
        rustix::mount::unmount(".", UnmountFlags::DETACH),
    )?;
    errno("entering /", rustix::process::chdir("/"))?;
    errno(
        "making / shared",
        rustix::mount::mount_change(
            "/",
            MountPropagationFlags::SHARED | MountPropagationFlags::REC,
        ),
    )?;
    let null = errno(
        "opening /dev/null",
        rustix::fs::open("/dev/null", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()),
    )?;
    errno("new session", rustix::process::setsid().map(drop))?;
    super::confine::apply(config.own_network)?;
    let stdio = match (config.stdio, fds.stdio, fds.terminal, journal) {
        (StdioMode::Passed, Some(stdio), _, _) => stdio,
        (StdioMode::Terminal, _, Some(terminal), _) => {
            let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| RuntimeError::step("dup", e));
            [dup(&terminal)?, dup(&terminal)?, terminal]
        }
        (_, _, _, Some(Ok(journal))) => {
            let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| RuntimeError::step("dup", e));
            [dup(&null)?, dup(&journal)?, journal]
        }
        (_, _, _, Some(Err(e))) => {
            eprintln!(
                "berthd: machine {}: cannot connect to the journal ({e}); its output is discarded",
                config.name
            );
            null_stdio(&null)?
        }
        _ => null_stdio(&null)?,
    };
    if let Payload::App(command) = &config.payload {
        let tty = config.stdio == StdioMode::Terminal;
        // The app gets its user's login environment from the guest's own files (LANG and
        // LC_* of its locale configuration, /etc/environment, PATH, SHELL, HOME), as `berth
        // exec` does, then the image's or definition's variables over it.
        let user = super::login::User::lookup(&config.app.user)?;
        let home = if Path::new(&user.home).is_dir() {
            user.home.as_str()
        } else {
            "/"
        };
        let mut env = base_env(config);
        let files = super::login::GuestFiles::read();
        let login = super::login::login_environment(&user, home, &files, &[]);
        for (key, value) in login.into_iter().chain(config.app.environment.clone()) {
            env.retain(|(k, _)| *k != key);
            env.push((key, value));
        }
        if tty {
            env.push(("TERM".into(), config.term.clone()));
        }
        let launch = super::init::Launch {
            command,
            env: &env,
            user: &user,
            working_directory: &config.app.working_directory,
        };
        super::init::run(&launch, stdio, tty, fds.status, null, socket);
    }
    // From here on the socket is gone (stdin is replaced): berthd reads EOF once exec happens.
    let init = [
        "/usr/lib/systemd/systemd",
        "/lib/systemd/systemd",
        "/sbin/init",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .ok_or_else(|| {
        RuntimeError::step(
            "finding the init",
            io::Error::other("no /usr/lib/systemd/systemd or /sbin/init in the image"),
        )
    })?;
    drop(null);
    let [stdin, stdout, stderr] = stdio;
    let mut command = Command::new(init);
    command
        .env_clear()
        .envs(base_env(config))
        .stdin(File::from(stdin))
        .stdout(File::from(stdout))
        .stderr(File::from(stderr));
    if config.stdio == StdioMode::Terminal {
        command.env("TERM", &config.term);
    }
    if config.notify {
        command.env("NOTIFY_SOCKET", "/run/host/notify");
    }
    let error = command.exec();
    Err(RuntimeError::step(&format!("executing {init}"), error))
}

fn null_stdio(null: &OwnedFd) -> Result<[OwnedFd; 3], RuntimeError> {
    let dup = || null.try_clone().map_err(|e| RuntimeError::step("dup", e));
    Ok([dup()?, dup()?, dup()?])
}

/// The environment of PID 1, as systemd's container interface describes it.
fn base_env(config: &SpawnConfig) -> Vec<(String, String)> {
    [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        ),
        ("container", "berth".to_owned()),
        ("container_uuid", uuid(&config.machine_id)),
        ("HOME", "/root".to_owned()),
        ("USER", "root".to_owned()),
        ("LOGNAME", "root".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_targets_through_symlinks_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("srv/real")).expect("dirs");
        std::os::unix::fs::symlink("/etc", root.join("data")).expect("symlink");
        assert!(refuse_symlinks(root, Path::new("/srv/real/x")).is_ok());
        assert!(refuse_symlinks(root, Path::new("/new/dir")).is_ok());
        let err = refuse_symlinks(root, Path::new("/data/sub")).expect_err("symlink");
        assert!(err.to_string().contains("data is a symlink"), "{err}");
        assert!(refuse_symlinks(root, Path::new("/data")).is_err());
    }

    #[test]
    fn machine_ids_become_uuids() {
        assert_eq!(
            uuid("0123456789abcdef0123456789abcdef"),
            "01234567-89ab-cdef-0123-456789abcdef"
        );
    }
}
