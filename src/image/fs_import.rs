//! Copying a directory tree (given as an open directory) into a [`TreeWriter`].
//!
//! Owners, modes, times, extended attributes, symlinks and hard links are kept; device nodes
//! and sockets are refused; other filesystems mounted inside the source are not crossed (like
//! `cp -x`), so copying a live root doesn't copy `/proc`.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use super::ImageError;
use super::tree::{Content, EntryError, Metadata, RefuseReason, TreePath, TreeWriter};

/// Copies everything below `source` into `tree`.
pub fn copy_tree(source: OwnedFd, tree: &mut TreeWriter) -> Result<(), ImageError> {
    let st = rustix::fs::fstat(&source).map_err(|e| read_error(".", e))?;
    let mut copy = TreeCopy {
        tree,
        device: st.st_dev,
        links: HashMap::new(),
    };
    let meta = metadata(&st, read_xattrs(&source));
    let result = copy.tree.directory(&TreePath::root(), &meta);
    copy.settle(&TreePath::root(), result)?;
    copy.dir(&source, &TreePath::root())
}

/// Copies the entry at `path` of the tree open as `source` (whatever it is: a file, a
/// symlink, a whole directory) to the same path in `tree`, never following a symlink on the
/// way there. Returns whether `source` has an entry at `path`.
pub(super) fn copy_entry(
    source: &OwnedFd,
    path: &TreePath,
    tree: &mut TreeWriter,
) -> Result<bool, ImageError> {
    let parts: Vec<&OsStr> = path.components().collect();
    let Some((name, parents)) = parts.split_last() else {
        return Ok(false);
    };
    let mut dir = source
        .try_clone()
        .map_err(ImageError::io("reading the source directory"))?;
    for part in parents {
        dir = match open_nofollow(&dir, part, OFlags::DIRECTORY) {
            Ok(next) => next,
            Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => return Ok(false),
            Err(e) => return Err(read_error(&path.to_string(), e)),
        };
    }
    match rustix::fs::statat(&dir, *name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => {}
        Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(read_error(&path.to_string(), e)),
    }
    let st = rustix::fs::fstat(source).map_err(|e| read_error(".", e))?;
    let mut copy = TreeCopy {
        tree,
        device: st.st_dev,
        links: HashMap::new(),
    };
    copy.entry(&dir, name, path)?;
    Ok(true)
}

struct TreeCopy<'t> {
    tree: &'t mut TreeWriter,
    device: u64,
    /// (device, inode) of multiply-linked files already copied, and where to.
    links: HashMap<(u64, u64), TreePath>,
}

impl TreeCopy<'_> {
    fn dir(&mut self, dir: &OwnedFd, at: &TreePath) -> Result<(), ImageError> {
        let shown = at.to_string();
        let listing = rustix::fs::Dir::read_from(dir).map_err(|e| read_error(&shown, e))?;
        let mut names: Vec<OsString> = Vec::new();
        for entry in listing {
            let entry = entry.map_err(|e| read_error(&shown, e))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsStr::from_bytes(name).to_owned());
            }
        }
        names.sort();
        for name in names {
            let path = at.join(&name);
            self.entry(dir, &name, &path)?;
        }
        Ok(())
    }

    fn entry(&mut self, dir: &OwnedFd, name: &OsStr, path: &TreePath) -> Result<(), ImageError> {
        let shown = path.to_string();
        let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| read_error(&shown, e))?;
        let result = match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory if st.st_dev != self.device => Err(EntryError::Refused(
                RefuseReason::UnsupportedType("mount point of another filesystem".into()),
            )),
            FileType::Directory => {
                let sub = open_nofollow(dir, name, OFlags::DIRECTORY)
                    .map_err(|e| read_error(&shown, e))?;
                let result = self.tree.directory(path, &metadata(&st, read_xattrs(&sub)));
                self.settle(path, result)?;
                return self.dir(&sub, path);
            }
            FileType::RegularFile => self.file(dir, name, path, &st)?,
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(dir, name, Vec::new())
                    .map_err(|e| read_error(&shown, e))?;
                let target = OsStr::from_bytes(target.to_bytes()).to_owned();
                self.tree.symlink(path, &target, &metadata(&st, Vec::new()))
            }
            FileType::Fifo => self.tree.fifo(path, &metadata(&st, Vec::new())),
            FileType::CharacterDevice | FileType::BlockDevice => {
                Err(EntryError::Refused(RefuseReason::DeviceNode))
            }
            FileType::Socket => Err(EntryError::Refused(RefuseReason::Socket)),
            FileType::Unknown => Err(EntryError::Refused(RefuseReason::UnsupportedType(
                "unknown".into(),
            ))),
        };
        self.settle(path, result)
    }

    fn file(
        &mut self,
        dir: &OwnedFd,
        name: &OsStr,
        path: &TreePath,
        st: &Stat,
    ) -> Result<Result<(), EntryError>, ImageError> {
        if st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.links.get(&key) {
                return Ok(self.tree.hardlink(path, &first.clone()));
            }
            self.links.insert(key, path.clone());
        }
        let fd = open_nofollow(dir, name, OFlags::empty())
            .map_err(|e| read_error(&path.to_string(), e))?;
        let meta = metadata(st, read_xattrs(&fd));
        let mut file = File::from(fd);
        Ok(self.tree.file(path, &meta, Content::File(&mut file)))
    }

    fn settle(
        &mut self,
        path: &TreePath,
        result: Result<(), EntryError>,
    ) -> Result<(), ImageError> {
        self.tree
            .settle(&path.to_string(), result)
            .map_err(|source| ImageError::Io {
                context: "writing the image".into(),
                source,
            })
    }
}

fn open_nofollow(dir: &OwnedFd, name: &OsStr, extra: OFlags) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | extra,
        Mode::empty(),
    )
}

fn metadata(st: &Stat, xattrs: Vec<(OsString, Vec<u8>)>) -> Metadata {
    Metadata {
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: st.st_mtime,
        xattrs,
    }
}

/// The extended attributes of an open file; unreadable ones are skipped.
pub(super) fn read_xattrs(fd: impl AsFd) -> Vec<(OsString, Vec<u8>)> {
    let Ok(size) = rustix::fs::flistxattr_query(&fd) else {
        return Vec::new();
    };
    let mut names = vec![0u8; size];
    let Ok(len) = rustix::fs::flistxattr(&fd, &mut names[..]) else {
        return Vec::new();
    };
    names.truncate(len);
    let mut xattrs = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = OsStr::from_bytes(name);
        let Ok(size) = rustix::fs::fgetxattr_query(&fd, name) else {
            continue;
        };
        let mut value = vec![0u8; size];
        if let Ok(len) = rustix::fs::fgetxattr(&fd, name, &mut value[..]) {
            value.truncate(len);
            xattrs.push((name.to_owned(), value));
        }
    }
    xattrs
}

fn read_error(path: &str, e: rustix::io::Errno) -> ImageError {
    ImageError::Io {
        context: format!("reading the source directory at '{path}'"),
        source: e.into(),
    }
}
