//! Exporting an image as a compressed tar, in the layout `machinectl pull-tar` pulls from: a
//! directory of `NAME_VERSION.tar.zst` (or `.tar.xz`) files and one `SHA256SUMS` listing them.
//!
//! The tree is walked from its root fd with `openat`/`O_NOFOLLOW` only, so no symlink is
//! followed and nothing outside the tree is read; other filesystems mounted inside it are not
//! entered (their mount points are exported as empty directories, like `tar --one-file-system`).
//! The archive is POSIX pax: ustar headers with numeric owners, and pax records for long names,
//! large numbers and extended attributes (`SCHILY.xattr.NAME`, as GNU tar and bsdtar write them).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags, Stat};
use rustix::io::Errno;
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use super::ImageError;
use super::fs_import::read_xattrs;
use super::pull::{RegistryError, SUMS_FILE, parse_sums_line};
use super::tree::{Refusal, RefuseReason};

/// zstd's default level: fast, and within a few percent of the best ratio for OS trees.
const ZSTD_LEVEL: i32 = 3;
/// xz's default preset.
const XZ_PRESET: u32 = 6;
/// Bytes a ustar name or link name field holds; longer ones go into pax records.
const USTAR_NAME_LEN: usize = 100;
/// The largest value of a ustar uid/gid field (7 octal digits).
const USTAR_MAX_ID: u64 = 0o7777777;
/// The largest value of a ustar size field (11 octal digits).
const USTAR_MAX_SIZE: u64 = 0o77777777777;
/// Our own SHA256SUMS is small; a larger one is not ours to rewrite.
const MAX_SUMS_SIZE: u64 = 1024 * 1024;

/// How the tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportCompression {
    Zstd,
    Xz,
}

impl ExportCompression {
    /// The file name suffix `machinectl pull-tar` recognizes: `tar.zst` or `tar.xz`.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Zstd => "tar.zst",
            Self::Xz => "tar.xz",
        }
    }
}

/// What [`write_archive`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedArchive {
    /// SHA-256 of the compressed bytes, lowercase hex (as `sha256sum` prints it).
    pub sha256_hex: String,
    /// Compressed bytes written.
    pub bytes: u64,
    /// Tar entries written (not counting pax headers), the root directory included.
    pub entries: u64,
    /// What was left out: device nodes, sockets, the contents of other mounted filesystems.
    pub skipped: Vec<Refusal>,
}

/// Writes image tree `root` (an open directory fd of the image) as a compressed tar into `out`,
/// returning the sha256 hex of the bytes written and the count of entries.
pub fn write_archive(
    root: OwnedFd,
    out: impl Write,
    compression: ExportCompression,
) -> Result<ExportedArchive, ImageError> {
    let out = HashingWriter::new(out);
    let write_error = ImageError::io("writing the compressed archive");
    let (out, walk) = match compression {
        ExportCompression::Zstd => {
            let encoder = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)
                .map_err(ImageError::io("starting the zstd compressor"))?;
            let (encoder, walk) = write_tar(root, encoder)?;
            (encoder.finish().map_err(write_error)?, walk)
        }
        ExportCompression::Xz => {
            let encoder = xz2::write::XzEncoder::new(out, XZ_PRESET);
            let (encoder, walk) = write_tar(root, encoder)?;
            (encoder.finish().map_err(write_error)?, walk)
        }
    };
    let (sha256_hex, bytes) = out
        .finish()
        .map_err(ImageError::io("flushing the archive"))?;
    Ok(ExportedArchive {
        sha256_hex,
        bytes,
        entries: walk.entries,
        skipped: walk.skipped,
    })
}

/// Adds or replaces the line for `file_name` in `dir`'s SHA256SUMS (other lines kept, so one
/// directory can hold many images), written atomically (temp file + rename) through the
/// directory fd `dir`.
pub fn update_sums(dir: BorrowedFd, file_name: &str, sha256_hex: &str) -> Result<(), ImageError> {
    check_sums_entry(file_name, sha256_hex)?;
    let context = || format!("updating {SUMS_FILE} for '{file_name}'");
    // A lock of our own (a new open file description) serializes exports into one directory,
    // so two of them can't each drop the other's line.
    let lock = rustix::fs::openat(
        dir,
        c".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ImageError::io(context())(e.into()))?;
    rustix::fs::flock(&lock, FlockOperation::LockExclusive)
        .map_err(|e| ImageError::io(context())(e.into()))?;

    let old = read_sums(dir).map_err(ImageError::io(context()))?;
    let new_line = format!("{} *{file_name}", sha256_hex.to_ascii_lowercase());
    let mut lines: Vec<String> = Vec::new();
    let mut replaced = false;
    for line in old.lines().filter(|l| !l.trim().is_empty()) {
        // Lines that aren't ours to understand are kept as they are.
        let names_this_file = parse_sums_line(line).is_ok_and(|(name, _)| name == file_name);
        if !names_this_file {
            lines.push(line.to_owned());
        } else if !replaced {
            lines.push(new_line.clone());
            replaced = true;
        }
    }
    if !replaced {
        lines.push(new_line);
    }
    let mut text = lines.join("\n");
    text.push('\n');
    write_atomically(dir, SUMS_FILE, text.as_bytes()).map_err(ImageError::io(context()))
}

fn check_sums_entry(file_name: &str, sha256_hex: &str) -> Result<(), ImageError> {
    let why = if file_name.is_empty() {
        Some("the file name is empty")
    } else if file_name == "." || file_name == ".." || file_name.contains('/') {
        Some("it must be a plain file name in the directory")
    } else if file_name.chars().any(char::is_control) {
        Some("the file name contains control characters")
    } else if file_name.starts_with(' ') || file_name.starts_with('*') {
        Some("the file name must not start with ' ' or '*'")
    } else if sha256_hex.len() != 64 || !sha256_hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Some("the checksum is not 64 hex digits")
    } else {
        None
    };
    match why {
        Some(why) => Err(RegistryError::BadSumsEntry {
            name: file_name.to_owned(),
            why,
        }
        .into()),
        None => Ok(()),
    }
}

fn read_sums(dir: BorrowedFd) -> io::Result<String> {
    let fd = match rustix::fs::openat(
        dir,
        SUMS_FILE,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(String::new()),
        Err(e) => return Err(e.into()),
    };
    let mut text = String::new();
    File::from(fd)
        .take(MAX_SUMS_SIZE + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_SUMS_SIZE {
        return Err(io::Error::other(format!(
            "the existing {SUMS_FILE} is larger than {MAX_SUMS_SIZE} bytes; move it away first"
        )));
    }
    Ok(text)
}

/// Writes `name` in `dir` as a new file renamed over the old one, so a reader sees either the
/// old content or the new, never a mix.
fn write_atomically(dir: BorrowedFd, name: &str, content: &[u8]) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let temp = format!(
        ".{name}.{}-{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let fd = rustix::fs::openat(
        dir,
        temp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )?;
    let mut file = File::from(fd);
    let written = file
        .write_all(content)
        .and_then(|()| file.sync_all())
        .and_then(|()| Ok(rustix::fs::renameat(dir, temp.as_str(), dir, name)?));
    if let Err(e) = written {
        let _ = rustix::fs::unlinkat(dir, temp.as_str(), AtFlags::empty());
        return Err(e);
    }
    Ok(rustix::fs::fsync(dir)?)
}

/// Counts and hashes the bytes as they pass to `inner`.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    fn finish(mut self) -> io::Result<(String, u64)> {
        self.inner.flush()?;
        Ok((hex(&self.hasher.finalize()), self.bytes))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Walk {
    entries: u64,
    skipped: Vec<Refusal>,
}

/// Writes the tar stream of `root` into `out` and returns `out` for the compressor to finish.
fn write_tar<W: Write>(root: OwnedFd, out: W) -> Result<(W, Walk), ImageError> {
    let st = rustix::fs::fstat(&root).map_err(|e| read_error(b"./", e.into()))?;
    let mut archive = ArchiveWriter {
        builder: tar::Builder::new(out),
        device: st.st_dev,
        links: HashMap::new(),
        entries: 0,
        skipped: Vec::new(),
    };
    let xattrs = read_xattrs(&root);
    archive.append(b"./", EntryType::Directory, &st, &xattrs, None, io::empty())?;
    archive.dir(&root, b"./")?;
    let ArchiveWriter {
        builder,
        entries,
        skipped,
        ..
    } = archive;
    let out = builder
        .into_inner()
        .map_err(ImageError::io("writing the compressed archive"))?;
    Ok((out, Walk { entries, skipped }))
}

struct ArchiveWriter<W: Write> {
    builder: tar::Builder<W>,
    /// The root's filesystem: directories of another are mount points, not descended into.
    device: u64,
    /// (device, inode) of multiply-linked entries already written, and their archive path.
    links: HashMap<(u64, u64), Vec<u8>>,
    entries: u64,
    skipped: Vec<Refusal>,
}

impl<W: Write> ArchiveWriter<W> {
    /// Writes the entries of `dir`, whose archive path is `prefix` (ending in `/`), sorted by
    /// name so the same tree always gives the same archive.
    fn dir(&mut self, dir: &OwnedFd, prefix: &[u8]) -> Result<(), ImageError> {
        let listing = rustix::fs::Dir::read_from(dir).map_err(|e| read_error(prefix, e.into()))?;
        let mut names: Vec<OsString> = Vec::new();
        for entry in listing {
            let entry = entry.map_err(|e| read_error(prefix, e.into()))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsStr::from_bytes(name).to_owned());
            }
        }
        names.sort();
        for name in names {
            let mut path = prefix.to_vec();
            path.extend_from_slice(name.as_bytes());
            self.entry(dir, &name, path)?;
        }
        Ok(())
    }

    fn entry(&mut self, dir: &OwnedFd, name: &OsStr, mut path: Vec<u8>) -> Result<(), ImageError> {
        let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| read_error(&path, e.into()))?;
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind == FileType::Directory {
            let sub = open_nofollow(dir, name, OFlags::DIRECTORY)
                .map_err(|e| read_error(&path, e.into()))?;
            let st = rustix::fs::fstat(&sub).map_err(|e| read_error(&path, e.into()))?;
            path.push(b'/');
            let xattrs = read_xattrs(&sub);
            self.append(&path, EntryType::Directory, &st, &xattrs, None, io::empty())?;
            if st.st_dev != self.device {
                self.skip(
                    &path,
                    RefuseReason::UnsupportedType(
                        "contents of another mounted filesystem (the mount point is kept empty)"
                            .into(),
                    ),
                );
                return Ok(());
            }
            return self.dir(&sub, &path);
        }
        if st.st_dev != self.device {
            let reason = RefuseReason::UnsupportedType("mounted from another filesystem".into());
            self.skip(&path, reason);
            return Ok(());
        }
        let tar_kind = match kind {
            FileType::RegularFile => EntryType::Regular,
            FileType::Symlink => EntryType::Symlink,
            FileType::Fifo => EntryType::Fifo,
            FileType::CharacterDevice | FileType::BlockDevice => {
                self.skip(&path, RefuseReason::DeviceNode);
                return Ok(());
            }
            FileType::Socket => {
                self.skip(&path, RefuseReason::Socket);
                return Ok(());
            }
            FileType::Directory | FileType::Unknown => {
                self.skip(&path, RefuseReason::UnsupportedType("unknown".into()));
                return Ok(());
            }
        };
        if st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.links.get(&key).cloned() {
                return self.append(&path, EntryType::Link, &st, &[], Some(&first), io::empty());
            }
            self.links.insert(key, path.clone());
        }
        match tar_kind {
            EntryType::Regular => self.file(dir, name, &path, &st),
            EntryType::Symlink => {
                let target = rustix::fs::readlinkat(dir, name, Vec::new())
                    .map_err(|e| read_error(&path, e.into()))?;
                let target = target.to_bytes();
                self.append(&path, tar_kind, &st, &[], Some(target), io::empty())
            }
            // Opening a fifo to read its attributes would block: written without them.
            _ => self.append(&path, tar_kind, &st, &[], None, io::empty()),
        }
    }

    fn file(
        &mut self,
        dir: &OwnedFd,
        name: &OsStr,
        path: &[u8],
        listed: &Stat,
    ) -> Result<(), ImageError> {
        // O_NONBLOCK: should the file have been swapped for a fifo since it was listed, the
        // open returns instead of waiting for a writer.
        let fd = open_nofollow(dir, name, OFlags::NONBLOCK | OFlags::NOCTTY)
            .map_err(|e| read_error(path, e.into()))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| read_error(path, e.into()))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
            || (st.st_dev, st.st_ino) != (listed.st_dev, listed.st_ino)
        {
            return Err(read_error(
                path,
                io::Error::other("it was replaced while being exported; export a stopped image"),
            ));
        }
        let xattrs = read_xattrs(&fd);
        let content = ExactReader {
            inner: File::from(fd),
            remaining: file_size(&st),
        };
        self.append(path, EntryType::Regular, &st, &xattrs, None, content)
    }

    /// Appends one entry, preceded by a pax header when it needs one.
    fn append(
        &mut self,
        path: &[u8],
        kind: EntryType,
        st: &Stat,
        xattrs: &[(OsString, Vec<u8>)],
        link: Option<&[u8]>,
        content: impl Read,
    ) -> Result<(), ImageError> {
        let size = if kind == EntryType::Regular {
            file_size(st)
        } else {
            0
        };
        let mut pax = PaxRecords::default();
        let mut header = Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(st.st_mode & 0o7777);
        set_name_field(&mut header.as_old_mut().name, path, "path", &mut pax);
        if let Some(link) = link {
            set_name_field(
                &mut header.as_old_mut().linkname,
                link,
                "linkpath",
                &mut pax,
            );
        }
        let (uid, gid) = (u64::from(st.st_uid), u64::from(st.st_gid));
        header.set_uid(uid);
        header.set_gid(gid);
        if uid > USTAR_MAX_ID {
            pax.add(b"uid", uid.to_string().as_bytes());
        }
        if gid > USTAR_MAX_ID {
            pax.add(b"gid", gid.to_string().as_bytes());
        }
        header.set_size(size);
        if size > USTAR_MAX_SIZE {
            pax.add(b"size", size.to_string().as_bytes());
        }
        // Times before 1970 are clamped: the importer (like most) reads unsigned times.
        header.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
        for (name, value) in xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(name.as_bytes());
            pax.add(&key, value);
        }
        header.set_cksum();

        let result = pax
            .write(&mut self.builder)
            .and_then(|()| self.builder.append(&header, content));
        result.map_err(|e| ImageError::Io {
            context: format!("exporting '{}'", shown(path)),
            source: e,
        })?;
        self.entries += 1;
        Ok(())
    }

    fn skip(&mut self, path: &[u8], reason: RefuseReason) {
        let path = shown(path);
        tracing::info!(%path, %reason, "not exported");
        self.skipped.push(Refusal { path, reason });
    }
}

/// A name that fits its ustar field goes there; a longer one into a pax record (with its
/// start in the field, for readers that ignore pax).
fn set_name_field(field: &mut [u8], name: &[u8], pax_key: &str, pax: &mut PaxRecords) {
    let fits = name.len() <= USTAR_NAME_LEN.min(field.len());
    let shown = if fits { name } else { &name[..field.len()] };
    field[..shown.len()].copy_from_slice(shown);
    if !fits {
        pax.add(pax_key.as_bytes(), name);
    }
}

/// The records of one pax extended header (`LEN KEY=VALUE\n`, LEN counting the whole record).
#[derive(Default)]
struct PaxRecords(Vec<u8>);

impl PaxRecords {
    fn add(&mut self, key: &[u8], value: &[u8]) {
        let rest = key.len() + value.len() + 3;
        let mut len = rest + 1;
        while rest + len.to_string().len() != len {
            len = rest + len.to_string().len();
        }
        self.0.extend_from_slice(format!("{len} ").as_bytes());
        self.0.extend_from_slice(key);
        self.0.push(b'=');
        self.0.extend_from_slice(value);
        self.0.push(b'\n');
    }

    fn write<W: Write>(&self, builder: &mut tar::Builder<W>) -> io::Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let mut header = Header::new_ustar();
        header.set_entry_type(EntryType::XHeader);
        header.as_old_mut().name[..14].copy_from_slice(b"././@PaxHeader");
        header.set_mode(0o644);
        header.set_size(self.0.len() as u64);
        header.set_cksum();
        builder.append(&header, self.0.as_slice())
    }
}

/// Reads exactly `remaining` bytes: a file that shrank while being read would otherwise leave
/// its tar entry short and everything after it unreadable.
struct ExactReader {
    inner: File,
    remaining: u64,
}

impl Read for ExactReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let max = usize::try_from(self.remaining).map_or(buf.len(), |r| r.min(buf.len()));
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::other(
                "the file shrank while being exported; export a stopped image",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn file_size(st: &Stat) -> u64 {
    u64::try_from(st.st_size).unwrap_or(0)
}

fn open_nofollow(dir: impl AsFd, name: &OsStr, extra: OFlags) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | extra,
        Mode::empty(),
    )
}

/// An archive path as people read it: `etc/hostname`, `.` for the root.
fn shown(path: &[u8]) -> String {
    let path = path.strip_prefix(b"./").unwrap_or(path);
    let path = path.strip_suffix(b"/").unwrap_or(path);
    if path.is_empty() {
        ".".into()
    } else {
        String::from_utf8_lossy(path).into_owned()
    }
}

fn read_error(path: &[u8], source: io::Error) -> ImageError {
    ImageError::Io {
        context: format!("reading the image at '{}'", shown(path)),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, symlink};
    use std::path::Path;

    use rustix::fs::{Gid, Timespec, Timestamps, Uid, XattrFlags};

    use super::*;
    use crate::image::tree::TreeWriter;
    use crate::image::{source, tar_import};

    fn open_dir(path: &Path) -> OwnedFd {
        rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open dir")
    }

    fn own(path: &Path, uid: u32, gid: u32) {
        rustix::fs::chownat(
            rustix::fs::CWD,
            path,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .expect("chown");
    }

    fn chmod(path: &Path, mode: u32) {
        rustix::fs::chmod(path, Mode::from_raw_mode(mode)).expect("chmod");
    }

    fn set_mtime(path: &Path, secs: i64) {
        let t = Timespec {
            tv_sec: secs,
            tv_nsec: 0,
        };
        let times = Timestamps {
            last_access: t,
            last_modification: t,
        };
        rustix::fs::utimensat(rustix::fs::CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
            .expect("utimensat");
    }

    fn file(path: &Path, content: &[u8], mode: u32) {
        fs::write(path, content).expect("write");
        chmod(path, mode);
    }

    fn long_dir() -> String {
        format!("deep/{}", "d".repeat(70))
    }

    fn long_file() -> String {
        format!("{}/{}", long_dir(), "f".repeat(70))
    }

    /// A tree with one of everything the exporter handles, and two things it skips.
    fn sample_tree(root: &Path) {
        for dir in ["etc", "usr/bin", "home/user", "dev", "run", &long_dir()] {
            fs::create_dir_all(root.join(dir)).expect("mkdir");
        }
        file(&root.join("etc/hostname"), b"box\n", 0o644);
        rustix::fs::setxattr(
            root.join("etc/hostname"),
            "user.note",
            b"hello",
            XattrFlags::empty(),
        )
        .expect("xattr");
        rustix::fs::setxattr(root, "user.root", b"top", XattrFlags::empty()).expect("xattr");
        file(&root.join("usr/bin/su"), b"su", 0o644);
        chmod(&root.join("usr/bin/su"), 0o4755);
        file(&root.join("home/user/f"), b"x", 0o600);
        own(&root.join("home/user/f"), 1000, 1001);
        own(&root.join("home/user"), 1000, 1001);
        chmod(&root.join("home/user"), 0o700);
        file(&root.join("etc/a"), b"aaa", 0o640);
        fs::hard_link(root.join("etc/a"), root.join("etc/b")).expect("hard link");
        fs::hard_link(root.join("etc/a"), root.join("usr/c")).expect("hard link");
        symlink("/etc/hostname", root.join("link")).expect("symlink");
        own(&root.join("link"), 5, 6);
        symlink("t".repeat(150), root.join("long-link")).expect("symlink");
        file(&root.join(long_file()), b"far down", 0o644);
        file(&root.join("big-uid"), b"", 0o644);
        own(&root.join("big-uid"), 3_000_000, 3_000_001);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o620),
            0,
        )
        .expect("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("dev/null"),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        )
        .expect("mknod");
        drop(std::os::unix::net::UnixListener::bind(root.join("run/sock")).expect("socket"));
        for (i, path) in [
            "etc/hostname",
            "usr/bin/su",
            "home/user/f",
            "etc/a",
            "link",
            "fifo",
        ]
        .into_iter()
        .enumerate()
        {
            set_mtime(&root.join(path), 1_600_000_000 + i as i64);
        }
        // Directories last, deepest first: creating entries changes their parent's time.
        let mut dirs = vec![
            "etc",
            "usr/bin",
            "usr",
            "home/user",
            "home",
            "deep",
            "dev",
            "run",
        ];
        let long = long_dir();
        dirs.insert(0, &long);
        for (i, dir) in dirs.into_iter().enumerate() {
            set_mtime(&root.join(dir), 1_500_000_000 + i as i64);
        }
        set_mtime(root, 1_400_000_000);
    }

    /// Each entry's type, owner, mode, time, content or target, user xattrs and (for hard
    /// links) the smallest path of its inode, by path.
    fn describe_tree(root: &Path) -> BTreeMap<String, String> {
        let mut described = BTreeMap::new();
        let mut first_path: HashMap<u64, String> = HashMap::new();
        let mut stack = vec![String::new()];
        while let Some(rel) = stack.pop() {
            let path = root.join(&rel);
            let meta = fs::symlink_metadata(&path).expect("stat");
            let kind = meta.file_type();
            let what = if kind.is_dir() {
                for entry in fs::read_dir(&path).expect("readdir") {
                    let name = entry.expect("entry").file_name();
                    let name = name.to_str().expect("utf8");
                    stack.push(if rel.is_empty() {
                        name.to_owned()
                    } else {
                        format!("{rel}/{name}")
                    });
                }
                "dir".to_owned()
            } else if kind.is_symlink() {
                let target = fs::read_link(&path).expect("readlink");
                format!("symlink to {}", target.display())
            } else if kind.is_file() {
                let content = fs::read(&path).expect("read");
                format!("file {:?}", String::from_utf8_lossy(&content))
            } else {
                format!("other {:o}", meta.mode() & 0o170000)
            };
            let xattrs = if kind.is_symlink() {
                Vec::new()
            } else {
                user_xattrs(&path)
            };
            if !kind.is_dir() && meta.nlink() > 1 {
                let first = first_path.entry(meta.ino()).or_insert_with(|| rel.clone());
                if rel < *first {
                    *first = rel.clone();
                }
            }
            let line = format!(
                "{what} {}:{} {:o} mtime={} xattrs={xattrs:?}",
                meta.uid(),
                meta.gid(),
                meta.mode() & 0o7777,
                meta.mtime(),
            );
            described.insert(rel, (line, meta.ino(), !kind.is_dir() && meta.nlink() > 1));
        }
        described
            .into_iter()
            .map(|(rel, (line, ino, linked))| {
                let line = match first_path.get(&ino) {
                    Some(first) if linked => format!("{line} hard link of {first}"),
                    _ => line,
                };
                (rel, line)
            })
            .collect()
    }

    fn user_xattrs(path: &Path) -> Vec<String> {
        let mut names = vec![0u8; 4096];
        let len = rustix::fs::llistxattr(path, &mut names[..]).expect("listxattr");
        let mut xattrs = Vec::new();
        for name in names[..len]
            .split(|b| *b == 0)
            .filter(|n| n.starts_with(b"user."))
        {
            let name = OsStr::from_bytes(name);
            let mut value = vec![0u8; 4096];
            let len = rustix::fs::lgetxattr(path, name, &mut value[..]).expect("getxattr");
            xattrs.push(format!(
                "{}={}",
                name.to_string_lossy(),
                String::from_utf8_lossy(&value[..len])
            ));
        }
        xattrs
    }

    fn export(root: &Path, compression: ExportCompression) -> (Vec<u8>, ExportedArchive) {
        let mut bytes = Vec::new();
        let archive = write_archive(open_dir(root), &mut bytes, compression).expect("export");
        (bytes, archive)
    }

    fn import(bytes: &[u8], into: &Path) {
        fs::create_dir(into).expect("mkdir");
        let mut tree = TreeWriter::new(open_dir(into));
        tar_import::extract(source::decompress(bytes).expect("decompress"), &mut tree)
            .expect("extract");
        let refused = tree.finish().expect("finish");
        assert!(refused.is_empty(), "{refused:?}");
    }

    #[test]
    fn round_trips_through_the_importer_with_everything_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        fs::create_dir(&src).expect("src");
        sample_tree(&src);
        let mut want = describe_tree(&src);
        want.remove("dev/null");
        want.remove("run/sock");

        for compression in [ExportCompression::Zstd, ExportCompression::Xz] {
            let (bytes, archive) = export(&src, compression);
            assert_eq!(archive.bytes, bytes.len() as u64);
            assert_eq!(archive.sha256_hex, hex(&Sha256::digest(&bytes)));
            assert_eq!(archive.entries, want.len() as u64, "{compression:?}");
            let skipped: Vec<String> = archive.skipped.iter().map(ToString::to_string).collect();
            assert_eq!(
                skipped,
                [
                    "dev/null: device node (machines get a private /dev)",
                    "run/sock: socket"
                ]
            );
            let dst = dir.path().join(format!("dst-{compression:?}"));
            import(&bytes, &dst);
            let got = describe_tree(&dst);
            for (path, description) in &want {
                assert_eq!(got.get(path), Some(description), "{compression:?}: {path}");
            }
            assert_eq!(got.len(), want.len(), "{compression:?}");
        }
    }

    #[test]
    fn archive_is_deterministic_relative_and_numeric() {
        let dir = tempfile::tempdir().expect("tempdir");
        sample_tree(dir.path());
        let (first, a) = export(dir.path(), ExportCompression::Zstd);
        let (second, b) = export(dir.path(), ExportCompression::Zstd);
        assert_eq!(a.sha256_hex, b.sha256_hex);
        assert_eq!(first, second);

        let tar = zstd::stream::decode_all(&first[..]).expect("zstd");
        let mut archive = tar::Archive::new(&tar[..]);
        let mut paths = Vec::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            assert_eq!(entry.header().username_bytes(), Some(&b""[..]));
            assert_eq!(entry.header().groupname_bytes(), Some(&b""[..]));
            let path = String::from_utf8(entry.path_bytes().into_owned()).expect("utf8");
            if path == "./big-uid" {
                let pax: Vec<(String, String)> = entry
                    .pax_extensions()
                    .expect("pax")
                    .expect("a pax header for a uid ustar can't hold")
                    .map(|e| {
                        let e = e.expect("record");
                        (
                            e.key().expect("key").into(),
                            e.value().expect("value").into(),
                        )
                    })
                    .collect();
                assert_eq!(
                    pax,
                    [
                        ("uid".to_owned(), "3000000".to_owned()),
                        ("gid".to_owned(), "3000001".to_owned())
                    ]
                );
            }
            paths.push(path);
        }
        let deep = format!("./{}/", long_dir());
        let expected = [
            "./",
            "./big-uid",
            "./deep/",
            &deep,
            &format!("./{}", long_file()),
            "./dev/",
            "./etc/",
            "./etc/a",
            "./etc/b",
            "./etc/hostname",
            "./fifo",
            "./home/",
            "./home/user/",
            "./home/user/f",
            "./link",
            "./long-link",
            "./run/",
            "./usr/",
            "./usr/bin/",
            "./usr/bin/su",
            "./usr/c",
        ];
        assert_eq!(paths, expected);
    }

    #[test]
    fn mount_points_are_kept_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir(root.join("proc")).expect("proc");
        // Mounting needs privileges a test run may not have: skipped where it can't.
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "none"])
            .arg(root.join("proc"))
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: cannot mount a tmpfs here");
            return;
        }
        fs::write(root.join("proc/inside"), b"not exported").expect("write");
        let result = std::panic::catch_unwind(|| export(root, ExportCompression::Zstd));
        let _ = std::process::Command::new("umount")
            .arg(root.join("proc"))
            .status();
        let (bytes, archive) = result.expect("export");
        assert_eq!(archive.entries, 2);
        assert_eq!(archive.skipped.len(), 1);
        assert!(archive.skipped[0].path == "proc", "{:?}", archive.skipped);
        let dst = root.join("dst");
        import(&bytes, &dst);
        assert!(dst.join("proc").is_dir());
        assert!(!dst.join("proc/inside").exists());
    }

    fn sums(dir: &Path) -> String {
        fs::read_to_string(dir.join(SUMS_FILE)).expect("SHA256SUMS")
    }

    #[test]
    fn update_sums_adds_replaces_and_keeps_other_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fd = open_dir(dir.path());
        let (a, b, c) = ("a".repeat(64), "B".repeat(64), "c".repeat(64));
        update_sums(fd.as_fd(), "one_1.tar.zst", &a).expect("one");
        update_sums(fd.as_fd(), "two_2.tar.xz", &b).expect("two");
        assert_eq!(
            sums(dir.path()),
            format!("{a} *one_1.tar.zst\n{} *two_2.tar.xz\n", "b".repeat(64))
        );
        update_sums(fd.as_fd(), "one_1.tar.zst", &c).expect("replace");
        assert_eq!(
            sums(dir.path()),
            format!("{c} *one_1.tar.zst\n{} *two_2.tar.xz\n", "b".repeat(64))
        );
        // Lines written by other tools, in either mode, are kept as they are.
        fs::write(
            dir.path().join(SUMS_FILE),
            format!("{a}  other.raw\n# a comment\n{b} *one_1.tar.zst\n"),
        )
        .expect("write");
        update_sums(fd.as_fd(), "one_1.tar.zst", &c).expect("replace");
        assert_eq!(
            sums(dir.path()),
            format!("{a}  other.raw\n# a comment\n{c} *one_1.tar.zst\n")
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("readdir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [SUMS_FILE]);
    }

    #[test]
    fn update_sums_refuses_names_and_hashes_that_break_the_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fd = open_dir(dir.path());
        let good = "0".repeat(64);
        for (name, hash) in [
            ("", good.as_str()),
            ("a/b.tar", &good),
            ("..", &good),
            ("two\nlines", &good),
            ("*star", &good),
            ("ok.tar", "abc"),
            ("ok.tar", &"g".repeat(64)),
        ] {
            let err = update_sums(fd.as_fd(), name, hash).expect_err(name);
            assert!(
                matches!(
                    err,
                    ImageError::Registry(RegistryError::BadSumsEntry { .. })
                ),
                "{name:?}: {err:?}"
            );
        }
        assert!(!dir.path().join(SUMS_FILE).exists());
    }
}
