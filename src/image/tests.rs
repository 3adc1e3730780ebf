//! Import, list and remove against a temporary pool (needs root for chown, as CI has).

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use tar::{EntryType, Header};
use tempfile::TempDir;

use super::*;

struct Fixture {
    _dir: TempDir,
    pool: Pool,
    root: std::path::PathBuf,
    outside: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_owned();
    let outside = root.join("outside");
    fs::create_dir(&outside).expect("outside dir");
    fs::write(outside.join("secret"), b"secret").expect("secret");
    Fixture {
        pool: Pool::new(root.join("machines"), root.join("state")),
        root,
        outside,
        _dir: dir,
    }
}

/// Appends an entry with exactly the given name bytes (the tar crate's own setters refuse
/// `..` and absolute paths, which is what these tests need to write).
fn raw_entry(
    builder: &mut tar::Builder<Vec<u8>>,
    name: &[u8],
    kind: EntryType,
    link: &[u8],
    data: &[u8],
) {
    let mut header = Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    header.set_entry_type(kind);
    header.set_mode(if kind == EntryType::Directory {
        0o755
    } else {
        0o644
    });
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_700_000_000);
    header.set_size(data.len() as u64);
    header.set_cksum();
    builder.append(&header, data).expect("append");
}

fn tar_file(dir: &Path, name: &str, build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> File {
    let mut builder = tar::Builder::new(Vec::new());
    build(&mut builder);
    let bytes = builder.into_inner().expect("finish tar");
    let path = dir.join(name);
    fs::write(&path, bytes).expect("write tar");
    File::open(path).expect("open tar")
}

fn staging_leftovers(pool_dir: &Path) -> Vec<String> {
    fs::read_dir(pool_dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".#"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn hostile_tarball_writes_nothing_outside_and_reports_each_refusal() {
    let f = fixture();
    let outside = f.outside.to_str().expect("utf8").as_bytes().to_vec();
    let input = tar_file(&f.root, "evil.tar", |b| {
        raw_entry(b, b"./", EntryType::Directory, b"", b"");
        raw_entry(b, b"ok.txt", EntryType::Regular, b"", b"fine");
        raw_entry(b, b"../escape", EntryType::Regular, b"", b"x");
        raw_entry(b, b"a/../../escape2", EntryType::Regular, b"", b"x");
        let mut abs = outside.clone();
        abs.extend_from_slice(b"/abs");
        raw_entry(b, &abs, EntryType::Regular, b"", b"x");
        raw_entry(b, b"link", EntryType::Symlink, &outside, b"");
        raw_entry(b, b"link/file", EntryType::Regular, b"", b"through");
        raw_entry(b, b"shadow", EntryType::Link, b"/etc/shadow", b"");
        raw_entry(b, b"up", EntryType::Link, b"../outside/secret", b"");
        raw_entry(b, b"viadir", EntryType::Link, b"link/secret", b"");
        raw_entry(b, b"dev/sda", EntryType::Block, b"", b"");
        raw_entry(b, b"hard-ok", EntryType::Link, b"ok.txt", b"");
    });
    let report = f
        .pool
        .import_tar("evil", input, "evil.tar")
        .expect("import");

    // Nothing new outside the image.
    let mut outside_now: Vec<_> = fs::read_dir(&f.outside)
        .expect("outside")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    outside_now.sort();
    assert_eq!(outside_now, vec!["secret"]);
    assert!(!f.root.join("escape").exists());
    assert!(!f.root.join("machines/escape").exists());
    assert!(!f.root.join("escape2").exists());

    let image = f.root.join("machines/evil");
    assert_eq!(fs::read(image.join("ok.txt")).expect("ok"), b"fine");
    assert_eq!(fs::read_link(image.join("link")).expect("link"), f.outside);
    assert_eq!(
        fs::metadata(image.join("hard-ok")).expect("hard").ino(),
        fs::metadata(image.join("ok.txt")).expect("ok").ino()
    );
    for absent in ["shadow", "up", "viadir", "dev/sda"] {
        assert!(image.join(absent).symlink_metadata().is_err(), "{absent}");
    }

    let refused: Vec<String> = report.refused.iter().map(ToString::to_string).collect();
    let expect = [
        "../escape: path contains '..'",
        "a/../../escape2: path contains '..'",
        "abs: absolute path",
        "link/file: path passes through the symlink 'link'",
        "shadow: hard link to '/etc/shadow' points outside the image",
        "up: hard link to '../outside/secret' points outside the image",
        "viadir: path passes through the symlink 'link'",
        "dev/sda: device node",
    ];
    assert_eq!(refused.len(), expect.len(), "{refused:#?}");
    for (got, want) in refused.iter().zip(expect) {
        assert!(got.contains(want), "{got:?} should contain {want:?}");
    }
    assert!(staging_leftovers(&f.root.join("machines")).is_empty());
}

#[test]
fn later_entry_replaces_a_symlink_instead_of_writing_through_it() {
    let f = fixture();
    let target = f.outside.join("secret");
    let input = tar_file(&f.root, "swap.tar", |b| {
        raw_entry(
            b,
            b"x",
            EntryType::Symlink,
            target.to_str().expect("utf8").as_bytes(),
            b"",
        );
        raw_entry(b, b"x", EntryType::Regular, b"", b"overwritten?");
    });
    f.pool
        .import_tar("swap", input, "swap.tar")
        .expect("import");
    assert_eq!(fs::read(&target).expect("secret"), b"secret");
    let x = f.root.join("machines/swap/x");
    assert!(x.symlink_metadata().expect("x").is_file());
    assert_eq!(fs::read(x).expect("x"), b"overwritten?");
}

#[test]
fn keeps_owners_modes_and_setuid() {
    let f = fixture();
    let input = tar_file(&f.root, "own.tar", |b| {
        let mut h = Header::new_gnu();
        h.set_path("usr/bin/su").expect("path");
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o4755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(2);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        b.append(&h, &b"su"[..]).expect("append");
        let mut h = Header::new_gnu();
        h.set_path("home/user/f").expect("path");
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o600);
        h.set_uid(1000);
        h.set_gid(1001);
        h.set_size(0);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        b.append(&h, &b""[..]).expect("append");
    });
    let report = f.pool.import_tar("own", input, "own.tar").expect("import");
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    let image = f.root.join("machines/own");
    let su = fs::metadata(image.join("usr/bin/su")).expect("su");
    assert_eq!(su.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(su.mtime(), 1_600_000_000);
    let user = fs::metadata(image.join("home/user/f")).expect("f");
    assert_eq!((user.uid(), user.gid()), (1000, 1001));
    assert_eq!(
        fs::metadata(&image).expect("root").permissions().mode() & 0o777,
        0o755
    );
}

#[test]
fn truncated_input_leaves_no_image_and_no_staging() {
    let f = fixture();
    let mut builder = tar::Builder::new(Vec::new());
    let mut h = Header::new_gnu();
    h.set_path("big").expect("path");
    h.set_size(1 << 20);
    h.set_mode(0o644);
    h.set_cksum();
    builder.append(&h, &vec![7u8; 1 << 20][..]).expect("append");
    let mut bytes = builder.into_inner().expect("tar");
    bytes.truncate(4096);
    let path = f.root.join("cut.tar");
    fs::write(&path, bytes).expect("write");
    let err = f
        .pool
        .import_tar("cut", File::open(&path).expect("open"), "cut.tar")
        .expect_err("truncated input must fail");
    assert!(
        err.to_string().contains("reading") || err.to_string().contains("tar"),
        "{err}"
    );
    assert!(!f.root.join("machines/cut").exists());
    assert!(staging_leftovers(&f.root.join("machines")).is_empty());
    assert!(f.pool.list().expect("list").is_empty());
}

#[test]
fn garbage_is_not_a_tar() {
    let f = fixture();
    let path = f.root.join("junk");
    fs::write(
        &path,
        b"this is not a tar archive at all, just some text\n".repeat(20),
    )
    .expect("write");
    let err = f
        .pool
        .import_tar("junk", File::open(&path).expect("open"), "junk")
        .expect_err("must fail");
    assert!(matches!(err, ImageError::NotATar(_)), "{err:?}");
    assert!(f.pool.list().expect("list").is_empty());
}

#[test]
fn empty_input_and_empty_archives_are_refused() {
    let f = fixture();
    let path = f.root.join("empty");
    fs::write(&path, b"").expect("write");
    let err = f
        .pool
        .import_tar("e", File::open(&path).expect("open"), "empty")
        .expect_err("empty input");
    assert!(matches!(err, ImageError::EmptyInput), "{err:?}");
    let err = f
        .pool
        .import_tar("e", tar_file(&f.root, "none.tar", |_| {}), "none.tar")
        .expect_err("no entries");
    assert!(matches!(err, ImageError::NoEntries), "{err:?}");
    assert!(f.pool.list().expect("list").is_empty());
    assert!(staging_leftovers(&f.root.join("machines")).is_empty());
}

#[test]
fn not_a_tar_message_is_printable() {
    let e = ImageError::NotATar(std::io::Error::other("bad \u{1}\u{fffd}\u{3d95} bytes"));
    assert_eq!(
        e.to_string(),
        "the input is not a readable tar archive (or it is truncated): bad ??? bytes"
    );
}

#[test]
fn gzip_input_and_digest_of_the_file_as_given() {
    use sha2::{Digest, Sha256};
    let f = fixture();
    let mut builder = tar::Builder::new(Vec::new());
    let mut h = Header::new_gnu();
    h.set_path("etc/hostname").expect("path");
    h.set_size(4);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    builder.append(&h, &b"box\n"[..]).expect("append");
    let tar = builder.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gz");
    let gz = gz.finish().expect("gz");
    let path = f.root.join("x.tar.gz");
    fs::write(&path, &gz).expect("write");
    let report = f
        .pool
        .import_tar("gz", File::open(&path).expect("open"), "x.tar.gz")
        .expect("import");
    let want: String = Sha256::digest(&gz)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(report.record.digest, format!("sha256:{want}"));
    assert_eq!(
        fs::read(f.root.join("machines/gz/etc/hostname")).expect("hostname"),
        b"box\n"
    );
}

#[test]
fn names_are_validated_and_existing_images_kept() {
    let f = fixture();
    let empty = || {
        tar_file(&f.root, "e.tar", |b| {
            raw_entry(b, b"f", EntryType::Regular, b"", b"");
        })
    };
    for bad in ["", "../x", "a/b", "-x", ".x", "a b"] {
        let err = f.pool.import_tar(bad, empty(), "e.tar").expect_err(bad);
        assert!(matches!(err, ImageError::InvalidName(_)), "{bad}: {err:?}");
    }
    f.pool.import_tar("one", empty(), "e.tar").expect("first");
    let err = f
        .pool
        .import_tar("one", empty(), "e.tar")
        .expect_err("second");
    assert!(matches!(err, ImageError::Exists(_)), "{err:?}");
    assert!(staging_leftovers(&f.root.join("machines")).is_empty());
}

#[test]
fn list_and_remove() {
    let f = fixture();
    let input = tar_file(&f.root, "a.tar", |b| {
        raw_entry(b, b"file", EntryType::Regular, b"", b"12345");
    });
    f.pool
        .import_tar("img", input, "/tmp/a.tar")
        .expect("import");
    // An image berth did not import (made by machinectl, say) is listed too.
    fs::create_dir(f.root.join("machines/foreign")).expect("foreign");
    fs::create_dir(f.root.join("machines/.hidden")).expect("hidden");
    let list = f.pool.list().expect("list");
    let names: Vec<_> = list.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["foreign", "img"]);
    assert_eq!(list[1].record.size_bytes, 5);
    // Its size comes from a walk of its tree, done for the listing only (not for a machine's
    // creation from it).
    fs::write(f.root.join("machines/foreign/data"), [7u8; 9000]).expect("foreign data");
    let list = f.pool.list().expect("list");
    assert!(list[0].record.size_bytes > 0);
    assert_eq!(f.pool.get("foreign").expect("get").record.size_bytes, 0);
    assert_eq!(list[1].record.origin, "tar:/tmp/a.tar");
    assert!(list[1].record.digest.starts_with("sha256:"));

    f.pool.remove("img", false).expect("remove");
    assert!(!f.root.join("machines/img").exists());
    assert!(!f.root.join("state/images/img.json").exists());
    assert!(matches!(
        f.pool.remove("img", false),
        Err(ImageError::NotFound(_))
    ));
    assert!(matches!(
        f.pool.remove("../x", false),
        Err(ImageError::InvalidName(_))
    ));
}

#[test]
fn import_fs_keeps_links_modes_and_skips_devices() {
    let f = fixture();
    let src = f.root.join("src");
    fs::create_dir_all(src.join("etc")).expect("etc");
    fs::write(src.join("etc/a"), b"aaa").expect("a");
    fs::set_permissions(src.join("etc/a"), fs::Permissions::from_mode(0o640)).expect("mode");
    fs::hard_link(src.join("etc/a"), src.join("etc/b")).expect("hardlink");
    std::os::unix::fs::symlink("/etc/a", src.join("abs-link")).expect("symlink");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .expect("mknod");
    let dir = rustix::fs::open(
        &src,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        rustix::fs::Mode::empty(),
    )
    .expect("open src");
    let report = f.pool.import_fs("copy", dir, "src").expect("import-fs");
    let image = f.root.join("machines/copy");
    assert_eq!(fs::read(image.join("etc/b")).expect("b"), b"aaa");
    assert_eq!(
        fs::metadata(image.join("etc/a")).expect("a").ino(),
        fs::metadata(image.join("etc/b")).expect("b").ino()
    );
    assert_eq!(
        fs::metadata(image.join("etc/a"))
            .expect("a")
            .permissions()
            .mode()
            & 0o777,
        0o640
    );
    assert_eq!(
        fs::read_link(image.join("abs-link"))
            .expect("link")
            .to_str(),
        Some("/etc/a")
    );
    assert!(image.join("null").symlink_metadata().is_err());
    let refused: Vec<String> = report.refused.iter().map(ToString::to_string).collect();
    assert_eq!(refused, ["null: device node (machines get a private /dev)"]);
}

#[test]
fn stale_staging_is_cleaned() {
    let f = fixture();
    let pool_dir = f.root.join("machines");
    fs::create_dir_all(pool_dir.join(".#berth-import-x-1-0/etc")).expect("stale");
    assert_eq!(f.pool.clean_stale(), 1);
    assert!(staging_leftovers(&pool_dir).is_empty());
}

#[test]
fn concurrent_imports_of_one_name_have_one_winner_whose_record_survives() {
    let f = fixture();
    let make = |name: &str, content: &'static [u8]| {
        tar_file(&f.root, name, |b| {
            raw_entry(b, b"f", EntryType::Regular, b"", content);
        })
    };
    for round in 0..5 {
        let name = format!("race{round}");
        let inputs = [make("a.tar", b"aaaa"), make("b.tar", b"bbbbbbbb")];
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = inputs
                .into_iter()
                .map(|input| {
                    let (pool, name) = (&f.pool, &name);
                    s.spawn(move || pool.import_tar(name, input, "x"))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "{results:?}");
        for loser in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(matches!(loser, ImageError::Exists(_)), "{loser:?}");
        }
        let info = f.pool.get(&name).expect("image");
        assert_eq!(info.record.digest, winners[0].record.digest);
        let content = fs::read(f.root.join("machines").join(&name).join("f")).expect("f");
        assert_eq!(content.len() as u64, info.record.size_bytes);
        assert!(staging_leftovers(&f.root.join("machines")).is_empty());
    }
}

#[test]
fn versions_live_side_by_side_and_the_name_means_the_newest() {
    let f = fixture();
    let tree = |content: &'static [u8]| {
        tar_file(&f.root, "v.tar", |b| {
            raw_entry(b, b"etc/release", EntryType::Regular, b"", content);
        })
    };
    for v in ["1.0", "1.10", "1.9"] {
        let report = f
            .pool
            .import_tar(&format!("os@{v}"), tree(v.as_bytes()), "v.tar")
            .expect(v);
        assert_eq!(report.name, format!("os@{v}"));
        assert_eq!(report.record.version, v);
    }
    assert!(f.root.join("machines/os.v/os_1.10/etc/release").is_file());
    assert!(f.root.join("state/images/os.v/os_1.10.json").is_file());
    assert_eq!(f.pool.versions("os"), ["1.10", "1.9", "1.0"]);
    let listed: Vec<_> = f
        .pool
        .list()
        .expect("list")
        .into_iter()
        .map(|i| i.reference())
        .collect();
    assert_eq!(listed, ["os@1.10", "os@1.9", "os@1.0"]);
    let newest = f.pool.get("os").expect("newest");
    assert_eq!(newest.version, "1.10");
    assert_eq!(f.pool.get("os@1.9").expect("1.9").record.version, "1.9");
    assert!(matches!(
        f.pool.get("os@2.0"),
        Err(ImageError::NoSuchVersion { .. })
    ));

    // The same version again, an unversioned import of the name, and bad versions.
    assert!(matches!(
        f.pool.import_tar("os@1.9", tree(b"x"), "v.tar"),
        Err(ImageError::Exists(_))
    ));
    assert!(matches!(
        f.pool.import_tar("os", tree(b"x"), "v.tar"),
        Err(ImageError::HasVersions { .. })
    ));
    for bad in ["os@", "os@_1", "os@1/2", "os@-1"] {
        assert!(
            matches!(
                f.pool.import_tar(bad, tree(b"x"), "v.tar"),
                Err(ImageError::InvalidVersion(_))
            ),
            "{bad}"
        );
    }
    assert!(matches!(
        f.pool.import_tar("os.v", tree(b"x"), "v.tar"),
        Err(ImageError::ReservedName(_))
    ));
    // Versions can't be added beside an unversioned image.
    f.pool
        .import_tar("plain", tree(b"p"), "v.tar")
        .expect("plain");
    assert!(matches!(
        f.pool.import_tar("plain@1", tree(b"x"), "v.tar"),
        Err(ImageError::Unversioned(_))
    ));

    // Removing: NAME alone is ambiguous; one version; then all.
    assert!(matches!(
        f.pool.remove("os", false),
        Err(ImageError::HasVersions { .. })
    ));
    f.pool.remove("os@1.10", false).expect("remove 1.10");
    assert_eq!(f.pool.get("os").expect("newest now").version, "1.9");
    f.pool.remove("os", true).expect("remove all");
    assert!(!f.root.join("machines/os.v").exists());
    assert!(!f.root.join("state/images/os.v").exists());
    assert!(matches!(f.pool.get("os"), Err(ImageError::NotFound(_))));
    assert!(staging_leftovers(&f.root.join("machines")).is_empty());
}

#[test]
fn a_machine_root_becomes_an_image_without_the_machines_own_files() {
    let f = fixture();
    let base = f.root.join("base");
    fs::create_dir_all(base.join("etc")).expect("base");
    fs::write(base.join("etc/hostname"), "debian\n").expect("base hostname");
    let machine = f.root.join("machine");
    fs::create_dir_all(machine.join("etc")).expect("root");
    fs::create_dir_all(machine.join("srv")).expect("root");
    fs::write(machine.join("etc/hostname"), "web\n").expect("hostname");
    fs::write(
        machine.join("etc/machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .expect("machine-id");
    fs::write(machine.join("srv/site"), "hello").expect("site");
    let record = ImageRecord {
        origin: "machine:web".into(),
        base: Some(BaseImage {
            name: "deb".into(),
            version: "12".into(),
            digest: String::new(),
        }),
        ..ImageRecord::default()
    };
    let report = f
        .pool
        .import_machine_root("golden@1.0", &machine, Some(&base), record)
        .expect("commit");
    assert_eq!(report.name, "golden@1.0");
    assert!(!report.snapshot);
    let image = f.pool.get("golden@1.0").expect("stored");
    assert_eq!(
        fs::read_to_string(image.path.join("srv/site")).expect("site"),
        "hello"
    );
    assert_eq!(
        fs::read_to_string(image.path.join("etc/hostname")).expect("hostname"),
        "debian\n"
    );
    assert!(!image.path.join("etc/machine-id").exists());
    assert_eq!(image.record.origin, "machine:web");
    assert_eq!(
        image.record.base.as_ref().map(BaseImage::display),
        Some("deb@12".to_owned())
    );
    assert!(image.record.size_bytes >= 5);
    // The machine's root is untouched.
    assert_eq!(
        fs::read_to_string(machine.join("etc/hostname")).expect("machine hostname"),
        "web\n"
    );
    // A taken name is refused before anything is copied.
    let again =
        f.pool
            .import_machine_root("golden@1.0", &machine, Some(&base), ImageRecord::default());
    assert!(matches!(again, Err(ImageError::Exists(_))), "{again:?}");
    assert!(staging_leftovers(&f.root.join("machines")).is_empty());
}
