//! Writing a file tree confined to one directory.
//!
//! Both importers (tar streams and directory copies) create entries through [`TreeWriter`], which
//! guarantees that nothing is written outside its root, whatever the entry names say:
//! - paths are normalized first; absolute paths and `..` components are refused;
//! - parent directories are opened one component at a time with `O_NOFOLLOW`, so an entry that
//!   would pass through a symlink (`link/file` after `link -> /tmp`) is refused;
//! - files are created with `O_CREAT|O_EXCL|O_NOFOLLOW` after removing what was there, so an
//!   earlier symlink can't redirect a later file;
//! - hard links may only point at entries already inside the tree;
//! - device nodes are never created: a machine gets a private `/dev` at start.
//!
//! A refused entry is recorded and skipped; an I/O error (disk full, EIO) aborts the import.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

/// Why one entry was not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefuseReason {
    AbsolutePath,
    DotDot,
    ThroughSymlink(String),
    ParentNotDirectory(String),
    HardlinkOutside(String),
    HardlinkTargetMissing(String),
    DeviceNode,
    Socket,
    DirectoryInTheWay,
    UnsupportedType(String),
    /// A layer entry named `.wh.` (hiding nothing) or below a `.wh.` name.
    ReservedName,
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AbsolutePath => write!(f, "absolute path"),
            Self::DotDot => write!(f, "path contains '..'"),
            Self::ThroughSymlink(p) => write!(f, "path passes through the symlink '{p}'"),
            Self::ParentNotDirectory(p) => write!(f, "'{p}' is not a directory"),
            Self::HardlinkOutside(t) => write!(f, "hard link to '{t}' points outside the image"),
            Self::HardlinkTargetMissing(t) => {
                write!(f, "hard link target '{t}' is not in the image")
            }
            Self::DeviceNode => write!(f, "device node (machines get a private /dev)"),
            Self::Socket => write!(f, "socket"),
            Self::DirectoryInTheWay => write!(f, "a non-empty directory is in the way"),
            Self::UnsupportedType(t) => write!(f, "unsupported entry type {t}"),
            Self::ReservedName => write!(f, "the '.wh.' prefix is reserved for whiteouts"),
        }
    }
}

/// One refused entry: its path as the source named it, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub path: String,
    pub reason: RefuseReason,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// An entry failed: refused (skip it and go on) or an I/O error (abort).
#[derive(Debug)]
pub enum EntryError {
    Refused(RefuseReason),
    Io(io::Error),
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(reason) => write!(f, "{reason}"),
            Self::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<Errno> for EntryError {
    fn from(e: Errno) -> Self {
        Self::Io(e.into())
    }
}

impl From<io::Error> for EntryError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// Ownership, permissions, time and extended attributes of one entry.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    /// Permission bits including setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub xattrs: Vec<(OsString, Vec<u8>)>,
}

/// A normalized path inside the tree: no empty, `.` or `..` components; empty means the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreePath(Vec<OsString>);

impl TreePath {
    /// Normalizes a path as an archive names it. `./a//b/` becomes `a/b`; `/a` and `a/../b` are
    /// refused rather than rewritten, so what lands in the image is exactly what was named.
    pub fn parse(raw: &[u8]) -> Result<Self, RefuseReason> {
        if raw.first() == Some(&b'/') {
            return Err(RefuseReason::AbsolutePath);
        }
        let mut parts = Vec::new();
        for part in raw.split(|b| *b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => return Err(RefuseReason::DotDot),
                p => parts.push(OsStr::from_bytes(p).to_owned()),
            }
        }
        Ok(Self(parts))
    }

    /// The tree's root directory.
    pub fn root() -> Self {
        Self(Vec::new())
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path of a child entry (used when walking a source directory).
    pub fn join(&self, name: &OsStr) -> Self {
        let mut parts = self.0.clone();
        parts.push(name.to_owned());
        Self(parts)
    }

    /// The path's components, outermost first.
    pub fn components(&self) -> impl Iterator<Item = &OsStr> {
        self.0.iter().map(OsString::as_os_str)
    }

    /// The directory holding this entry; `None` for the root.
    pub fn parent(&self) -> Option<Self> {
        self.split_last().map(|(_, parent)| Self(parent.to_vec()))
    }

    fn split_last(&self) -> Option<(&OsStr, &[OsString])> {
        self.0
            .split_last()
            .map(|(last, parent)| (last.as_os_str(), parent))
    }
}

impl fmt::Display for TreePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return write!(f, ".");
        }
        let joined: Vec<_> = self.0.iter().map(|p| p.to_string_lossy()).collect();
        write!(f, "{}", joined.join("/"))
    }
}

/// Where a regular file's content comes from.
pub enum Content<'a> {
    /// A stream (a tar entry).
    Reader(&'a mut dyn Read),
    /// A file; copied with copy_file_range, which reflinks where the filesystem can.
    File(&'a mut File),
}

impl fmt::Debug for Content<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Reader(_) => "Content::Reader",
            Self::File(_) => "Content::File",
        })
    }
}

const COPY_BUFFER: usize = 256 * 1024;

/// Creates entries below one directory and never outside it.
#[derive(Debug)]
pub struct TreeWriter {
    root: OwnedFd,
    /// The last parent directory opened, so entries of one directory walk the path once.
    cached_parent: Option<(Vec<OsString>, OwnedFd)>,
    /// Directory mtimes are set last: creating entries inside a directory changes its mtime.
    dir_mtimes: Vec<(TreePath, i64)>,
    refused: Vec<Refusal>,
    bytes: u64,
    buffer: Vec<u8>,
    /// Every entry written gets this owner instead of its own (COPY --chown).
    owner: Option<(u32, u32)>,
}

impl TreeWriter {
    /// Writes below `root`, which must be an open directory (the staging directory).
    pub fn new(root: OwnedFd) -> Self {
        Self {
            root,
            cached_parent: None,
            dir_mtimes: Vec::new(),
            refused: Vec::new(),
            bytes: 0,
            buffer: vec![0; COPY_BUFFER],
            owner: None,
        }
    }

    /// Gives every entry written from now on the owner `uid`:`gid`, whatever its metadata
    /// says.
    pub fn set_owner(&mut self, uid: u32, gid: u32) {
        self.owner = Some((uid, gid));
    }

    /// `meta` with the owner override applied.
    fn owned<'m>(&self, meta: &'m Metadata) -> std::borrow::Cow<'m, Metadata> {
        match self.owner {
            None => std::borrow::Cow::Borrowed(meta),
            Some((uid, gid)) => std::borrow::Cow::Owned(Metadata {
                uid,
                gid,
                ..meta.clone()
            }),
        }
    }

    /// Records a refused entry; callers also use this for entries they refuse themselves.
    pub fn refuse(&mut self, path: impl Into<String>, reason: RefuseReason) {
        let path = path.into();
        tracing::info!(%path, %reason, "refused entry");
        self.refused.push(Refusal { path, reason });
    }

    /// Handles an entry's result: refusals are recorded, I/O errors returned.
    pub fn settle(&mut self, path: &str, result: Result<(), EntryError>) -> io::Result<()> {
        match result {
            Ok(()) => Ok(()),
            Err(EntryError::Refused(reason)) => {
                self.refuse(path, reason);
                Ok(())
            }
            Err(EntryError::Io(e)) => Err(io::Error::new(e.kind(), format!("{path}: {e}"))),
        }
    }

    /// The directory the tree is confined to.
    pub fn root(&self) -> std::os::fd::BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Bytes of regular-file content written so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Sets the deferred directory mtimes and returns what was refused.
    pub fn finish(mut self) -> io::Result<Vec<Refusal>> {
        self.cached_parent = None;
        // Deepest first, so setting a child's time doesn't disturb its parent's.
        let mut dirs = std::mem::take(&mut self.dir_mtimes);
        dirs.sort_by_key(|(path, _)| std::cmp::Reverse(path.0.len()));
        for (path, mtime) in dirs {
            let dir = match self.open_dir(&path.0, false) {
                Ok(dir) => dir,
                // Replaced by a later entry: nothing to do.
                Err(_) => continue,
            };
            rustix::fs::futimens(&dir, &timestamps(mtime))?;
        }
        Ok(self.refused)
    }

    /// Syncs the filesystem holding the tree, so a finished import survives a crash.
    pub fn sync(&self) -> io::Result<()> {
        Ok(rustix::fs::syncfs(&self.root)?)
    }

    pub fn directory(&mut self, path: &TreePath, meta: &Metadata) -> Result<(), EntryError> {
        let meta = &*self.owned(meta);
        let Some((name, parent)) = path.split_last() else {
            let root = self.root.try_clone()?;
            apply_fd_metadata(&root, meta)?;
            self.dir_mtimes.push((path.clone(), meta.mtime));
            return Ok(());
        };
        let parent = self.parent(parent)?;
        match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let st = rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
                if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                    rustix::fs::unlinkat(&parent, name, AtFlags::empty())?;
                    rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700))?;
                }
            }
            Err(e) => return Err(e.into()),
        }
        let dir = open_dir_nofollow(&parent, name)?;
        apply_fd_metadata(&dir, meta)?;
        self.dir_mtimes.push((path.clone(), meta.mtime));
        Ok(())
    }

    pub fn file(
        &mut self,
        path: &TreePath,
        meta: &Metadata,
        content: Content<'_>,
    ) -> Result<(), EntryError> {
        let meta = &*self.owned(meta);
        let (name, parent) = self.entry_parent(path)?;
        self.clear(&parent, name)?;
        let fd = rustix::fs::openat(
            &parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let mut file = File::from(fd);
        self.bytes += match content {
            Content::File(src) => copy_file(&mut self.buffer, src, &file)?,
            Content::Reader(src) => copy_stream(&mut self.buffer, src, &mut file)?,
        };
        apply_fd_metadata(file.as_fd(), meta)?;
        rustix::fs::futimens(&file, &timestamps(meta.mtime))?;
        Ok(())
    }

    pub fn symlink(
        &mut self,
        path: &TreePath,
        target: &OsStr,
        meta: &Metadata,
    ) -> Result<(), EntryError> {
        let meta = &*self.owned(meta);
        let (name, parent) = self.entry_parent(path)?;
        self.clear(&parent, name)?;
        rustix::fs::symlinkat(target, &parent, name)?;
        rustix::fs::chownat(
            &parent,
            name,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        rustix::fs::utimensat(
            &parent,
            name,
            &timestamps(meta.mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    /// A hard link to `target`, an entry already written.
    pub fn hardlink(&mut self, path: &TreePath, target: &TreePath) -> Result<(), EntryError> {
        let shown = target.to_string();
        let Some((target_name, target_parent)) = target.split_last() else {
            return Err(EntryError::Refused(RefuseReason::HardlinkOutside(shown)));
        };
        let target_dir = match self.open_dir(target_parent, false) {
            Ok(dir) => dir,
            Err(EntryError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                return Err(EntryError::Refused(RefuseReason::HardlinkTargetMissing(
                    shown,
                )));
            }
            Err(e) => return Err(e),
        };
        if target == path {
            return Ok(());
        }
        let (name, parent) = self.entry_parent(path)?;
        self.clear(&parent, name)?;
        // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself, never what it
        // points at.
        match rustix::fs::linkat(&target_dir, target_name, &parent, name, AtFlags::empty()) {
            Ok(()) => Ok(()),
            Err(Errno::NOENT) => Err(EntryError::Refused(RefuseReason::HardlinkTargetMissing(
                shown,
            ))),
            Err(Errno::PERM) => Err(EntryError::Refused(RefuseReason::UnsupportedType(format!(
                "hard link to the directory '{shown}'"
            )))),
            Err(e) => Err(e.into()),
        }
    }

    pub fn fifo(&mut self, path: &TreePath, meta: &Metadata) -> Result<(), EntryError> {
        let meta = &*self.owned(meta);
        let (name, parent) = self.entry_parent(path)?;
        self.clear(&parent, name)?;
        rustix::fs::mknodat(&parent, name, FileType::Fifo, Mode::from_raw_mode(0o600), 0)?;
        // Everything after goes through a descriptor of the FIFO just made, never by its name:
        // a tree that is in use (a build's COPY into its running machine) may have had it
        // replaced by a symlink to a host file since, and chmod would follow that.
        let fifo = rustix::fs::openat(
            &parent,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        if FileType::from_raw_mode(rustix::fs::fstat(&fifo)?.st_mode) != FileType::Fifo {
            return Err(Errno::EXIST.into());
        }
        rustix::fs::chownat(
            &fifo,
            "",
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
            AtFlags::EMPTY_PATH,
        )?;
        // (fchmod refuses an O_PATH descriptor; its /proc link is the FIFO itself.)
        rustix::fs::chmod(
            format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fifo)),
            Mode::from_raw_mode(meta.mode & 0o7777),
        )?;
        rustix::fs::utimensat(&fifo, "", &timestamps(meta.mtime), AtFlags::EMPTY_PATH)?;
        Ok(())
    }

    /// Opens directory `path` of the tree, creating it and its parents (mode 0755, root) as
    /// needed, never through a symlink.
    pub fn open_directory(&mut self, path: &TreePath) -> Result<OwnedFd, EntryError> {
        self.cached_parent = None;
        self.open_dir(&path.0, true)
    }

    /// Opens directory `path` of the tree if it exists (never through a symlink).
    pub fn open_directory_existing(&self, path: &TreePath) -> Option<OwnedFd> {
        self.open_dir(&path.0, false).ok()
    }

    /// Removes the entry at `path`, a whole directory tree included, never following a symlink
    /// (a symlink is removed itself, not what it points at). Nothing there is not an error.
    pub fn remove(&mut self, path: &TreePath) -> Result<(), EntryError> {
        // The cached parent may be the removed directory or below it.
        self.cached_parent = None;
        let Some((name, parent)) = path.split_last() else {
            return Err(EntryError::Refused(RefuseReason::UnsupportedType(
                "removal of the image root".into(),
            )));
        };
        let Some(parent) = self.open_existing_dir(parent)? else {
            return Ok(());
        };
        match rustix::fs::unlinkat(&parent, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(Errno::ISDIR) => {
                remove_contents(open_dir_nofollow(&parent, name)?)?;
                rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR)?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Removes everything inside the directory at `path` but keeps the directory. Nothing
    /// happens when no directory is there (nothing at all, a file, a symlink).
    pub fn empty_dir(&mut self, path: &TreePath) -> Result<(), EntryError> {
        self.cached_parent = None;
        let dir = match path.split_last() {
            None => self.root.try_clone()?,
            Some((name, parent)) => {
                let Some(parent) = self.open_existing_dir(parent)? else {
                    return Ok(());
                };
                match open_dir_nofollow(&parent, name) {
                    Ok(dir) => dir,
                    Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
        };
        Ok(remove_contents(dir)?)
    }

    /// Opens an existing directory of the tree; `None` when it is missing or a parent is not a
    /// directory (so there is nothing below it). Passing through a symlink is refused.
    fn open_existing_dir(&self, parts: &[OsString]) -> Result<Option<OwnedFd>, EntryError> {
        match self.open_dir(parts, false) {
            Ok(dir) => Ok(Some(dir)),
            Err(EntryError::Io(e)) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(EntryError::Refused(RefuseReason::ParentNotDirectory(_))) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The parent directory of a non-root entry, and the entry's own name.
    fn entry_parent<'p>(&mut self, path: &'p TreePath) -> Result<(&'p OsStr, OwnedFd), EntryError> {
        let (name, parent) =
            path.split_last()
                .ok_or(EntryError::Refused(RefuseReason::UnsupportedType(
                    "non-directory at the image root".into(),
                )))?;
        Ok((name, self.parent(parent)?))
    }

    fn parent(&mut self, parts: &[OsString]) -> Result<OwnedFd, EntryError> {
        if let Some((_, fd)) = self
            .cached_parent
            .as_ref()
            .filter(|(cached, _)| cached.as_slice() == parts)
        {
            return Ok(fd.try_clone()?);
        }
        let fd = self.open_dir(parts, true)?;
        self.cached_parent = Some((parts.to_vec(), fd.try_clone()?));
        Ok(fd)
    }

    /// Opens a directory of the tree one component at a time, never following a symlink;
    /// missing directories are created (mode 0755, root) when `create` is set.
    fn open_dir(&self, parts: &[OsString], create: bool) -> Result<OwnedFd, EntryError> {
        let mut dir = self.root.try_clone()?;
        for (i, part) in parts.iter().enumerate() {
            let next = match open_dir_nofollow(&dir, part) {
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&dir, part.as_os_str(), Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    open_dir_nofollow(&dir, part)
                }
                other => other,
            };
            dir = match next {
                Ok(fd) => fd,
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    let shown = TreePath(parts[..=i].to_vec()).to_string();
                    let st = rustix::fs::statat(&dir, part.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)?;
                    return Err(EntryError::Refused(
                        if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
                            RefuseReason::ThroughSymlink(shown)
                        } else {
                            RefuseReason::ParentNotDirectory(shown)
                        },
                    ));
                }
                Err(e) => return Err(e.into()),
            };
        }
        Ok(dir)
    }

    /// Removes whatever non-directory (or empty directory) has `name`, so the new entry
    /// replaces it as tar does.
    fn clear(&mut self, parent: &OwnedFd, name: &OsStr) -> Result<(), EntryError> {
        match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(Errno::ISDIR) => {
                // The cached parent may be this directory or below it.
                self.cached_parent = None;
                match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
                    Ok(()) => Ok(()),
                    Err(Errno::NOTEMPTY | Errno::EXIST) => {
                        Err(EntryError::Refused(RefuseReason::DirectoryInTheWay))
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn open_dir_nofollow(dir: impl AsFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Deletes everything inside `dir`, never following a symlink. Iterative, so a deep tree
/// can't exhaust the stack; it holds one descriptor per level.
fn remove_contents(dir: OwnedFd) -> Result<(), Errno> {
    struct Level {
        dir: OwnedFd,
        /// Its name in the level above; `None` for `dir` itself, which stays.
        name: Option<OsString>,
        pending: Vec<OsString>,
    }
    let pending = child_names(&dir)?;
    let mut levels = vec![Level {
        dir,
        name: None,
        pending,
    }];
    while let Some(level) = levels.last_mut() {
        if let Some(child) = level.pending.pop() {
            match rustix::fs::unlinkat(&level.dir, &child, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(Errno::ISDIR) => {
                    let dir = open_dir_nofollow(&level.dir, &child)?;
                    let pending = child_names(&dir)?;
                    levels.push(Level {
                        dir,
                        name: Some(child),
                        pending,
                    });
                }
                Err(e) => return Err(e),
            }
        } else if let Some(Level {
            name: Some(name), ..
        }) = levels.pop()
            && let Some(above) = levels.last()
        {
            rustix::fs::unlinkat(&above.dir, &name, AtFlags::REMOVEDIR)?;
        }
    }
    Ok(())
}

fn child_names(dir: &OwnedFd) -> Result<Vec<OsString>, Errno> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let name = entry?.file_name().to_bytes().to_owned();
        if name != b"." && name != b".." {
            names.push(OsString::from(OsStr::from_bytes(&name)));
        }
    }
    Ok(names)
}

/// Owner first, then mode: chown clears setuid/setgid bits, so the order matters.
fn apply_fd_metadata(fd: impl AsFd, meta: &Metadata) -> Result<(), EntryError> {
    rustix::fs::fchown(
        &fd,
        Some(rustix::fs::Uid::from_raw(meta.uid)),
        Some(rustix::fs::Gid::from_raw(meta.gid)),
    )?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode & 0o7777))?;
    for (name, value) in &meta.xattrs {
        // Extended attributes the filesystem refuses are not worth failing an import for;
        // security.capability (the one that matters for ping & co.) works on ext4/btrfs/xfs.
        if let Err(e) = rustix::fs::fsetxattr(
            &fd,
            name.as_os_str(),
            value,
            rustix::fs::XattrFlags::empty(),
        ) {
            tracing::warn!(xattr = %name.to_string_lossy(), error = %e, "extended attribute not set");
        }
    }
    Ok(())
}

/// Access and modification times both set to `mtime` (whole seconds).
pub fn timestamps(mtime: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Holes are made of whole blocks of zeros this size (as `cp --sparse=always` does).
const HOLE_BLOCK: usize = 4096;

/// Copies the stream `src` into the new, empty file `dst`; blocks of zeros are skipped, not
/// written, so they stay holes (a sparse file in an archive arrives as a stream of zeros).
/// Returns the bytes copied.
fn copy_stream(buffer: &mut [u8], src: &mut dyn Read, dst: &mut File) -> io::Result<u64> {
    let mut total = 0;
    let mut ends_in_hole = false;
    loop {
        let n = match src.read(buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for (zeros, run) in runs(&buffer[..n]) {
            if zeros {
                dst.seek(io::SeekFrom::Current(run.len() as i64))?;
            } else {
                dst.write_all(run)?;
            }
            ends_in_hole = zeros;
        }
        total += n as u64;
    }
    if ends_in_hole {
        dst.set_len(total)?;
    }
    Ok(total)
}

/// `data` cut into maximal runs of whole zero blocks and of anything else: (zeros, run).
fn runs(data: &[u8]) -> impl Iterator<Item = (bool, &[u8])> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let zero_block = |block: &[u8]| block.len() == HOLE_BLOCK && block.iter().all(|b| *b == 0);
        let zeros = zero_block(&rest[..rest.len().min(HOLE_BLOCK)]);
        let mut len = 0;
        while len < rest.len() {
            let block = &rest[len..rest.len().min(len + HOLE_BLOCK)];
            if zero_block(block) != zeros {
                break;
            }
            len += block.len();
        }
        let (run, tail) = rest.split_at(len);
        rest = tail;
        Some((zeros, run))
    })
}

/// Copies the file `src` into the new, empty file `dst`, its data only: the holes of a
/// sparse file stay holes (SEEK_DATA/SEEK_HOLE), and the data goes by copy_file_range,
/// which shares it (reflink) where the filesystem can. Returns the file's length.
fn copy_file(buffer: &mut [u8], src: &File, dst: &File) -> io::Result<u64> {
    use rustix::fs::SeekFrom;
    let len = src.metadata()?.len();
    let mut offset = 0;
    while offset < len {
        let data = match rustix::fs::seek(src, SeekFrom::Data(offset)) {
            Ok(data) => data,
            // No data after `offset`: the rest is a hole.
            Err(Errno::NXIO) => break,
            // A filesystem without SEEK_DATA: all data.
            Err(Errno::INVAL | Errno::OPNOTSUPP) => offset,
            Err(e) => return Err(e.into()),
        };
        let hole = match rustix::fs::seek(src, SeekFrom::Hole(data)) {
            Ok(hole) => hole.min(len),
            Err(Errno::INVAL | Errno::OPNOTSUPP) => len,
            Err(e) => return Err(e.into()),
        };
        if copy_range(buffer, src, dst, data, hole - data)? < hole - data {
            // The file shrank while being copied: what is left is past its end.
            break;
        }
        offset = hole;
    }
    dst.set_len(len)?;
    Ok(len)
}

/// Copies the file `source` to the new file `target` (mode 0600; it must not exist yet): a
/// reflink of the whole file where the filesystem shares data (btrfs, xfs), else its data
/// with a sparse file's holes kept. Synced; removed again when the copy fails. Returns
/// "reflink copy" or "copy".
pub fn copy_whole_file(
    source: &std::path::Path,
    target: &std::path::Path,
) -> io::Result<&'static str> {
    use std::os::unix::fs::OpenOptionsExt;
    let src = File::open(source)?;
    let dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(target)?;
    let copied = (|| {
        let kind = if rustix::fs::ioctl_ficlone(&dst, &src).is_ok() {
            "reflink copy"
        } else {
            copy_file(&mut vec![0; COPY_BUFFER], &src, &dst)?;
            "copy"
        };
        dst.sync_all()?;
        Ok(kind)
    })();
    if copied.is_err() {
        let _ = std::fs::remove_file(target);
    }
    copied
}

/// Copies `count` bytes at `at` of `src` to the same offset of `dst`; returns the bytes
/// copied (fewer only when `src` ended first).
fn copy_range(buffer: &mut [u8], src: &File, dst: &File, at: u64, count: u64) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let (mut from, mut to) = (at, at);
    let end = at + count;
    let mut read_write = false;
    while from < end {
        let left = usize::try_from(end - from).unwrap_or(usize::MAX);
        if !read_write {
            match rustix::fs::copy_file_range(src, Some(&mut from), dst, Some(&mut to), left) {
                Ok(0) => break,
                Ok(_) | Err(Errno::INTR) => continue,
                // Across filesystems (or where it isn't supported): read and write.
                Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                    read_write = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let want = left.min(buffer.len());
        let n = src.read_at(&mut buffer[..want], from)?;
        if n == 0 {
            break;
        }
        dst.write_all_at(&buffer[..n], to)?;
        from += n as u64;
        to += n as u64;
    }
    Ok(from - at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_normalizes_and_refuses() {
        assert_eq!(
            TreePath::parse(b"./a//b/").expect("valid").to_string(),
            "a/b"
        );
        assert!(TreePath::parse(b"./").expect("valid").is_root());
        assert_eq!(
            TreePath::parse(b"/etc/passwd"),
            Err(RefuseReason::AbsolutePath)
        );
        assert_eq!(TreePath::parse(b"a/../../x"), Err(RefuseReason::DotDot));
        assert_eq!(TreePath::parse(b".."), Err(RefuseReason::DotDot));
        assert_eq!(
            TreePath::parse(b"a/..b").expect("valid").to_string(),
            "a/..b"
        );
    }

    fn writer(root: &std::path::Path) -> TreeWriter {
        let fd = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open root");
        TreeWriter::new(fd)
    }

    fn path(raw: &str) -> TreePath {
        TreePath::parse(raw.as_bytes()).expect("valid path")
    }

    #[test]
    fn remove_deletes_trees_and_never_follows_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
        std::fs::create_dir_all(root.join("a/b/c")).expect("dirs");
        std::fs::create_dir_all(&outside).expect("outside");
        std::fs::write(outside.join("secret"), b"s").expect("secret");
        std::fs::write(root.join("a/b/c/f"), b"f").expect("f");
        std::os::unix::fs::symlink(&outside, root.join("a/b/out")).expect("symlink");
        std::os::unix::fs::symlink(&outside, root.join("link")).expect("symlink");
        std::fs::write(root.join("keep"), b"k").expect("keep");
        let mut tree = writer(&root);

        tree.remove(&path("a")).expect("remove a tree");
        assert!(root.join("a").symlink_metadata().is_err());
        tree.remove(&path("link")).expect("remove a symlink");
        assert!(root.join("link").symlink_metadata().is_err());
        tree.remove(&path("missing/x")).expect("nothing there");
        tree.remove(&path("keep/x"))
            .expect("below a file: nothing there");

        std::os::unix::fs::symlink(&outside, root.join("link")).expect("symlink");
        assert!(matches!(
            tree.remove(&path("link/secret")),
            Err(EntryError::Refused(RefuseReason::ThroughSymlink(_)))
        ));
        tree.empty_dir(&path("link"))
            .expect("a symlink: nothing below it to remove");
        assert_eq!(std::fs::read(outside.join("secret")).expect("secret"), b"s");
        assert_eq!(std::fs::read(root.join("keep")).expect("keep"), b"k");
    }

    #[test]
    fn a_fifo_gets_its_mode_owner_and_time() {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let dir = tempfile::tempdir().expect("tempdir");
        let mut tree = writer(dir.path());
        let meta = Metadata {
            mode: 0o640,
            uid: 0,
            gid: 0,
            mtime: 1_000_000,
            xattrs: Vec::new(),
        };
        tree.fifo(&path("pipe"), &meta).expect("fifo");
        let made = std::fs::symlink_metadata(dir.path().join("pipe")).expect("stat");
        assert!(made.file_type().is_fifo());
        assert_eq!(made.mode() & 0o7777, 0o640);
        assert_eq!(made.mtime(), 1_000_000);
    }

    #[test]
    fn empty_dir_keeps_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("d/sub/deeper")).expect("dirs");
        std::fs::write(root.join("d/f"), b"f").expect("f");
        std::fs::write(root.join("file"), b"f").expect("file");
        let mut tree = writer(root);
        tree.empty_dir(&path("d")).expect("empty d");
        assert!(root.join("d").is_dir());
        assert_eq!(std::fs::read_dir(root.join("d")).expect("d").count(), 0);
        tree.empty_dir(&path("file"))
            .expect("not a directory: nothing to do");
        tree.empty_dir(&path("missing")).expect("nothing there");
        assert!(root.join("file").is_file());
    }

    #[test]
    fn runs_are_whole_zero_blocks_or_anything_else() {
        let mut data = vec![0u8; HOLE_BLOCK];
        data.extend_from_slice(b"data");
        data.extend(vec![0u8; 2 * HOLE_BLOCK]);
        data.extend(vec![0u8; 100]);
        let found: Vec<(bool, usize)> = runs(&data).map(|(z, r)| (z, r.len())).collect();
        // Zeros that don't fill a block stay data: the 4 bytes' block and the short tail.
        assert_eq!(
            found,
            vec![
                (true, HOLE_BLOCK),
                (false, HOLE_BLOCK),
                (true, HOLE_BLOCK),
                (false, 4 + 100)
            ]
        );
        assert_eq!(runs(&[]).count(), 0);
    }

    /// Whether files in `dir` can have holes (the test's filesystem may not).
    fn holes_supported(dir: &std::path::Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let probe = dir.join("probe");
        let file = File::create(&probe).expect("probe");
        file.set_len(1 << 20).expect("probe size");
        file.metadata().expect("probe metadata").blocks() == 0
    }

    fn sparse_content() -> Vec<u8> {
        let mut data = vec![0u8; 1 << 20];
        data.extend_from_slice(b"middle");
        data.extend(vec![0u8; 1 << 20]);
        data
    }

    #[test]
    fn streams_of_zeros_become_holes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let data = sparse_content();
        let path = dir.path().join("copy");
        let mut file = File::create_new(&path).expect("create");
        let mut buffer = vec![0; COPY_BUFFER];
        let copied = copy_stream(&mut buffer, &mut data.as_slice(), &mut file).expect("copy");
        drop(file);
        assert_eq!(copied, data.len() as u64);
        assert_eq!(std::fs::read(&path).expect("read"), data);
        if holes_supported(dir.path()) {
            let blocks = std::fs::metadata(&path).expect("metadata").blocks();
            assert!(blocks * 512 < 64 * 1024, "{blocks} blocks allocated");
        }
    }

    #[test]
    fn sparse_files_are_copied_with_their_holes() {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let dir = tempfile::tempdir().expect("tempdir");
        let source_path = dir.path().join("source");
        let source = File::create_new(&source_path).expect("source");
        source.set_len(4 << 20).expect("size");
        source.write_all_at(b"middle", 1 << 20).expect("data");
        source.write_all_at(b"end", (4 << 20) - 3).expect("data");
        drop(source);
        let path = dir.path().join("copy");
        let file = File::create_new(&path).expect("create");
        let mut buffer = vec![0; COPY_BUFFER];
        let source = File::open(&source_path).expect("open");
        let copied = copy_file(&mut buffer, &source, &file).expect("copy");
        drop(file);
        assert_eq!(copied, 4 << 20);
        assert_eq!(
            std::fs::read(&path).expect("copy"),
            std::fs::read(&source_path).expect("source")
        );
        if holes_supported(dir.path()) {
            let blocks = std::fs::metadata(&path).expect("metadata").blocks();
            assert!(blocks * 512 < 256 * 1024, "{blocks} blocks allocated");
        }
        // A file that ends in a hole keeps its length.
        let tail_path = dir.path().join("tail");
        let tail = File::create_new(&tail_path).expect("tail");
        tail.write_all_at(b"x", 0).expect("data");
        tail.set_len(1 << 20).expect("size");
        drop(tail);
        let out = File::create_new(dir.path().join("tail-copy")).expect("create");
        let tail = File::open(&tail_path).expect("open");
        assert_eq!(copy_file(&mut buffer, &tail, &out).expect("copy"), 1 << 20);
        assert_eq!(out.metadata().expect("metadata").len(), 1 << 20);
    }
}
