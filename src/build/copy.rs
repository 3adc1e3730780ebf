//! COPY and WORKDIR of a build: writing the context's files into the build machine's root.
//!
//! Paths in the root resolve as the machine would resolve them: a destination below a
//! symlink (`/bin` → `usr/bin` on merged-/usr systems) lands where the symlink points, but
//! never outside the root (openat2 with RESOLVE_IN_ROOT). The entries themselves are written
//! by a [`TreeWriter`], which never follows a symlink.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

use crate::image::{self, tree::TreePath, tree::TreeWriter};
use crate::runtime::guest_etc;
use crate::runtime::login::User;

/// Opens `path` (as the Containerfile names it, relative or absolute) inside `root`:
/// symlinks and `..` resolve inside it, never out of it.
pub(super) fn open_in_root(root: &Path, path: &str) -> Result<OwnedFd, io::Error> {
    let relative = path.trim_start_matches('/');
    let relative = if relative.is_empty() { "." } else { relative };
    guest_etc::open_in_root(&root_directory(root)?, relative)
}

fn root_directory(root: &Path) -> Result<OwnedFd, io::Error> {
    Ok(rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

pub(super) fn tree_path(path: &str) -> Result<TreePath, String> {
    TreePath::parse(path.trim_start_matches('/').as_bytes())
        .map_err(|reason| format!("'{path}': {reason}"))
}

/// The UID and GID of COPY --chown's `USER[:GROUP]`, looked up in the root's own /etc/passwd
/// and /etc/group (numbers need not be there).
pub(super) fn owner(root: &Path, spec: &str) -> Result<(u32, u32), String> {
    let read = |path: &str| {
        root_directory(root)
            .and_then(|dir| guest_etc::read_in_root(&dir, path, 4 << 20))
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .unwrap_or_default()
    };
    let user = User::find_spec(&read("etc/passwd"), &read("etc/group"), spec)
        .map_err(|e| format!("--chown={spec}: {e}"))?;
    Ok((user.uid, user.gid))
}

/// Opens directory `path` of the root, creating what is missing (mode 0755, root) below the
/// deepest part that exists; symlinks on the way resolve inside the root.
fn open_directory(root: &Path, path: &str) -> Result<OwnedFd, String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for existing in (0..=parts.len()).rev() {
        let prefix = parts[..existing].join("/");
        let Ok(dir) = open_in_root(root, &prefix) else {
            continue;
        };
        let is_dir = rustix::fs::fstat(&dir)
            .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir())
            .unwrap_or(false);
        if !is_dir {
            return Err(format!("/{prefix} is not a directory"));
        }
        let rest = parts[existing..].join("/");
        if rest.is_empty() {
            return Ok(dir);
        }
        let mut tree = TreeWriter::new(dir);
        return tree
            .open_directory(&tree_path(&rest)?)
            .map_err(|e| format!("creating {path}: {e}"));
    }
    Err(format!("opening {path}: the build root is gone"))
}

/// WORKDIR: creates directory `path` (and its parents) in the root.
pub(super) fn make_directory(root: &Path, path: &str) -> Result<(), String> {
    open_directory(root, path).map(drop)
}

/// COPY: each source (a file or a directory's contents) from the context into `dest` in the
/// root, owned by root as Docker does, or by `owner` (--chown). `dest` is a directory when it
/// ends in `/`, there are several sources, or it is a directory already.
pub(super) fn copy_into(
    context: &Path,
    root: &Path,
    sources: &[String],
    dest: &str,
    owner: Option<(u32, u32)>,
) -> Result<(), String> {
    let into_directory = dest.ends_with('/') || sources.len() > 1;
    for source in sources {
        let fd = open_in_root(context, source)
            .map_err(|e| format!("'{source}' is not in the build context: {e}"))?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| format!("{source}: {e}"))?;
        let is_dir = rustix::fs::FileType::from_raw_mode(stat.st_mode).is_dir();
        let writer = |dir: OwnedFd| {
            let mut tree = TreeWriter::new(dir);
            if let Some((uid, gid)) = owner {
                tree.set_owner(uid, gid);
            }
            tree
        };
        if is_dir {
            let target = open_directory(root, dest)?;
            if let Some((uid, gid)) = owner {
                rustix::fs::fchown(
                    &target,
                    Some(rustix::fs::Uid::from_raw(uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                )
                .map_err(|e| format!("changing the owner of {dest}: {e}"))?;
            }
            let mut tree = writer(target);
            image::copy_tree_into(fd, &mut tree).map_err(|e| format!("copying {source}: {e}"))?;
            report_refusals(tree.finish(), source)?;
            continue;
        }
        let dest_is_dir = into_directory
            || open_in_root(root, dest)
                .and_then(|fd| rustix::fs::fstat(&fd).map_err(io::Error::from))
                .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir());
        let (directory, leaf) = if dest_is_dir {
            let leaf = Path::new(source)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (dest.trim_end_matches('/').to_owned(), leaf)
        } else {
            match dest.rsplit_once('/') {
                Some((parent, leaf)) => (parent.to_owned(), leaf.to_owned()),
                None => (String::new(), dest.to_owned()),
            }
        };
        let meta = image::tree::Metadata {
            mode: stat.st_mode & 0o7777,
            mtime: stat.st_mtime,
            ..image::tree::Metadata::default()
        };
        let mut tree = writer(open_directory(root, &directory)?);
        let path = tree_path(&leaf)?;
        let mut file = File::from(fd);
        let result = tree.file(&path, &meta, image::tree::Content::Reader(&mut file));
        let shown = format!("{directory}/{leaf}");
        tree.settle(&shown, result)
            .map_err(|e| format!("writing {shown}: {e}"))?;
        report_refusals(tree.finish(), source)?;
    }
    Ok(())
}

fn report_refusals(
    result: io::Result<Vec<image::tree::Refusal>>,
    source: &str,
) -> Result<(), String> {
    let refused = result.map_err(|e| format!("copying {source}: {e}"))?;
    match refused.first() {
        None => Ok(()),
        Some(r) => Err(format!("not copied: {}: {}", r.path, r.reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, symlink};

    #[test]
    fn destinations_resolve_symlinks_inside_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (context, root) = (dir.path().join("context"), dir.path().join("root"));
        std::fs::create_dir_all(context.join("sub")).expect("context");
        std::fs::write(context.join("tool"), "#!/bin/sh\n").expect("tool");
        std::fs::write(context.join("sub/a"), "a").expect("sub/a");
        std::fs::create_dir_all(root.join("usr/bin")).expect("usr/bin");
        symlink("usr/bin", root.join("bin")).expect("bin");
        // An absolute symlink resolves inside the root, not on the host.
        symlink("/usr", root.join("escape")).expect("escape");

        copy_into(&context, &root, &["tool".into()], "/bin/tool", None).expect("copy");
        assert!(root.join("usr/bin/tool").is_file());
        copy_into(&context, &root, &["sub".into()], "/escape/share/x", None).expect("copy");
        assert_eq!(
            std::fs::read_to_string(root.join("usr/share/x/a")).expect("a"),
            "a"
        );
        make_directory(&root, "/bin/deeper/dir").expect("mkdir");
        assert!(root.join("usr/bin/deeper/dir").is_dir());
        std::fs::write(root.join("file"), "").expect("file");
        let err = make_directory(&root, "/file/x").expect_err("not a directory");
        assert!(err.contains("/file is not a directory"), "{err}");
    }

    #[test]
    fn chown_takes_the_roots_users() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).expect("etc");
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1001:1002::/srv:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(root.join("etc/group"), "root:x:0:\nstaff:x:50:\n").expect("group");
        assert_eq!(owner(root, "app"), Ok((1001, 1002)));
        assert_eq!(owner(root, "app:staff"), Ok((1001, 50)));
        assert_eq!(owner(root, "7:8"), Ok((7, 8)));
        let err = owner(root, "nobody").expect_err("unknown");
        assert!(err.contains("--chown=nobody: no user 'nobody'"), "{err}");
    }

    #[test]
    fn chown_applies_to_every_copied_entry() {
        if !rustix::process::geteuid().is_root() {
            return; // chown to another user needs root (CI's cargo test runs as root)
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let (context, root) = (dir.path().join("context"), dir.path().join("root"));
        std::fs::create_dir_all(context.join("d/e")).expect("context");
        std::fs::write(context.join("d/e/f"), "f").expect("f");
        std::fs::create_dir_all(&root).expect("root");
        copy_into(&context, &root, &["d".into()], "/app", Some((1001, 50))).expect("copy");
        for path in ["app", "app/e", "app/e/f"] {
            let meta = std::fs::symlink_metadata(root.join(path)).expect(path);
            assert_eq!((meta.uid(), meta.gid()), (1001, 50), "{path}");
        }
    }
}
