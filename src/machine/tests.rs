//! Creating, listing and removing machines against a temporary pool (root, as CI).

use std::fs;
use std::os::unix::fs::MetadataExt;

use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    machines: Machines,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_owned();
    let pool = Pool::new(root.join("images"), root.join("state"));
    // A tiny image: /etc with a hostname symlink pointing out of the tree, to prove that
    // create replaces it rather than writing through it.
    let src = root.join("src");
    fs::create_dir_all(src.join("etc")).expect("etc");
    fs::write(root.join("victim"), b"host file").expect("victim");
    std::os::unix::fs::symlink(root.join("victim"), src.join("etc/hostname")).expect("symlink");
    fs::write(src.join("etc/os-release"), b"ID=debian\n").expect("os-release");
    let fd = rustix::fs::open(
        &src,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        rustix::fs::Mode::empty(),
    )
    .expect("open");
    pool.import_fs("deb", fd, "src").expect("image");
    Fixture {
        machines: Machines::new(root.join("defs"), root.join("roots"), pool),
        root,
        _dir: dir,
    }
}

fn request(name: &str) -> CreateRequest {
    CreateRequest {
        name: name.into(),
        image: "deb".into(),
        mode: Mode::Boot,
        hostname: String::new(),
        binds: Vec::new(),
        ephemeral: false,
        properties: Vec::new(),
        disk_size: None,
        timezone: String::new(),
        locale: String::new(),
        user: String::new(),
        working_directory: String::new(),
        environment: Vec::new(),
        network: String::new(),
        masquerade: true,
        ports: Vec::new(),
    }
}

#[test]
fn create_writes_identity_and_a_definition() {
    let f = fixture();
    let (def, _) = f.machines.create(&request("web")).expect("create");
    assert_eq!(def.hostname, "web");
    assert!(is_machine_id(&def.machine_id));
    assert_eq!(def.uid_range.base, 524_288);
    let root = f.root.join("roots/web");
    assert_eq!(
        fs::read_to_string(root.join("etc/hostname")).expect("h"),
        "web\n"
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/machine-id")).expect("id"),
        format!("{}\n", def.machine_id)
    );
    // The image's symlink was replaced, not followed.
    assert_eq!(
        fs::read(f.root.join("victim")).expect("victim"),
        b"host file"
    );
    assert_eq!(
        fs::metadata(root.join("etc/os-release")).expect("o").uid(),
        0
    );
    assert_eq!(f.machines.get("web").expect("get"), def);
    assert_eq!(f.machines.list().expect("list"), vec![def]);
}

#[test]
fn a_value_with_a_line_break_adds_no_keys_to_a_definition() {
    let f = fixture();
    let (mut def, _) = f.machines.create(&request("web")).expect("create");
    let mut req = request("inj");
    req.binds = vec!["/tmp:/mnt\n[Machine]\nVolume=/etc/shadow".into()];
    let err = f.machines.create(&req).expect_err("bind with a line break");
    assert!(err.to_string().contains("is not SRC:DST"), "{err}");
    assert!(matches!(
        f.machines.get("inj"),
        Err(MachineError::NotFound(_))
    ));
    // The last wall: a value that came in some other way is refused when written.
    def.binds = vec![Bind {
        source: "/tmp".into(),
        destination: "/mnt\n[Machine]\nVolume=/etc/shadow".into(),
        read_only: false,
    }];
    let err = f.machines.write_definition(&def).expect_err("injected");
    assert!(err.to_string().contains("line break"), "{err}");
    assert_eq!(f.machines.get("web").expect("get").volume, None);
}

#[test]
fn berthds_own_rounds_skip_a_definition_they_cant_read() {
    let f = fixture();
    let (def, _) = f.machines.create(&request("web")).expect("create");
    fs::write(
        f.root.join("defs/typo.machine"),
        "[Machine]\nImage=deb\nBogus=1\n",
    )
    .expect("typo");
    let err = f
        .machines
        .list()
        .expect_err("a user's listing names the bad file");
    assert!(err.to_string().contains("Bogus"), "{err}");
    assert_eq!(f.machines.list_readable(), vec![def]);
}

#[test]
fn a_definition_removed_while_listing_is_skipped_not_an_error() {
    let f = fixture();
    let (def, _) = f.machines.create(&request("web")).expect("create");
    // What read_dir saw but a concurrent `berth rm` removed before it was read: a name whose
    // file is gone (a dangling symlink reads as NotFound, as a vanished file does).
    std::os::unix::fs::symlink(f.root.join("nowhere"), f.root.join("defs/gone.machine"))
        .expect("symlink");
    assert_eq!(f.machines.list().expect("list"), vec![def]);
    f.machines
        .create(&request("other"))
        .expect("create beside it");
}

#[test]
fn uid_ranges_never_overlap_and_are_reused_after_removal() {
    let f = fixture();
    let (a, _) = f.machines.create(&request("a")).expect("a");
    let (b, _) = f.machines.create(&request("b")).expect("b");
    assert_eq!(b.uid_range.base, a.uid_range.base + RANGE_SIZE);
    assert_ne!(a.machine_id, b.machine_id);
    f.machines.remove("a").expect("rm a");
    let (c, _) = f.machines.create(&request("c")).expect("c");
    assert_eq!(c.uid_range, a.uid_range);
}

#[test]
fn bad_requests_leave_nothing_behind() {
    let f = fixture();
    let mut cases: Vec<(CreateRequest, &str)> = Vec::new();
    for bad in ["", "..", "a/b", "-x", "a b", &"a".repeat(65)] {
        cases.push((request(bad), "machine name"));
    }
    let mut r = request("x");
    r.image = "nope".into();
    cases.push((r, "no image named 'nope'"));
    let mut r = request("x");
    r.hostname = "bad host".into();
    cases.push((r, "host name 'bad host'"));
    let mut r = request("x");
    r.mode = Mode::App(Vec::new());
    cases.push((r, "no command"));
    let mut r = request("x");
    r.user = "alice".into();
    cases.push((r, "--user, --workdir and --env are for app machines"));
    let mut r = request("x");
    r.mode = Mode::App(vec!["true".into()]);
    r.environment = vec!["1X=y".into()];
    cases.push((r, "environment variable '1X=y'"));
    let mut r = request("x");
    r.mode = Mode::App(vec!["true".into()]);
    r.working_directory = "relative".into();
    cases.push((r, "working directory 'relative' is not an absolute path"));
    let mut r = request("x");
    r.mode = Mode::App(vec!["true".into()]);
    r.user = "a b".into();
    cases.push((r, "user 'a b' is not USER or USER:GROUP"));
    let mut r = request("x");
    r.network = "bridged".into();
    cases.push((r, "network 'bridged' is not host, none, private"));
    let mut r = request("x");
    r.network = "bridge=nosuchbr0".into();
    cases.push((r, "bridge 'nosuchbr0' does not exist"));
    let mut r = request("x");
    r.ports = vec!["8080:80".into()];
    cases.push((r, "--port is for --network private"));
    let mut r = request("x");
    r.network = "private".into();
    r.ports = vec!["8080:80".into(), "tcp:8080:81".into()];
    cases.push((r, "host port 8080/tcp is given twice"));
    let mut r = request("x");
    r.network = "private".into();
    r.ports = vec!["80800".into()];
    cases.push((r, "port '80800' is not valid"));
    let mut r = request("x");
    r.masquerade = false;
    cases.push((r, "--no-masquerade is for --network private"));
    let mut r = request("x");
    r.binds = vec!["relative:/x".into()];
    cases.push((r, "bind 'relative:/x'"));
    let mut r = request("x");
    r.binds = vec!["/nonexistent-berth:/x".into()];
    cases.push((r, "bind source /nonexistent-berth does not exist"));
    for (destination, reason) in [
        ("/", "is the machine's root"),
        ("/proc", "is in /proc or /sys"),
        ("/sys/fs/cgroup", "is in /proc or /sys"),
        ("/dev/", "is the machine's private /dev"),
    ] {
        let mut r = request("x");
        r.binds = vec![format!("/tmp:{destination}")];
        cases.push((r, reason));
    }
    for (req, want) in cases {
        let err = f.machines.create(&req).expect_err(want).to_string();
        assert!(err.contains(want), "{err:?} should contain {want:?}");
    }
    f.machines.create(&request("x")).expect("create");
    let err = f
        .machines
        .create(&request("x"))
        .expect_err("twice")
        .to_string();
    assert!(err.contains("machine 'x' already exists"), "{err}");
    f.machines.remove("x").expect("rm");
    assert!(
        fs::read_dir(f.root.join("roots"))
            .expect("roots")
            .next()
            .is_none()
    );
    assert!(
        fs::read_dir(f.root.join("defs"))
            .expect("defs")
            .next()
            .is_none()
    );
    assert!(matches!(
        f.machines.remove("x"),
        Err(MachineError::NotFound(_))
    ));
}

#[test]
fn app_settings_are_the_images_with_the_request_over_them() {
    let f = fixture();
    let image = f.machines.pool.get("deb").expect("image");
    let defaults = image::AppDefaults {
        env: vec!["PATH=/opt/bin:/usr/bin".into(), "MODE=prod".into()],
        working_dir: "/srv".into(),
        user: "app:app".into(),
        ..image::AppDefaults::default()
    };
    let mut r = request("x");
    r.mode = Mode::App(vec!["true".into()]);
    let app = Machines::app_settings(&r, Some(&defaults), &image).expect("defaults");
    assert_eq!(
        (app.user.as_str(), app.working_directory.as_str()),
        ("app:app", "/srv")
    );
    r.user = "1000".into();
    r.working_directory = "/tmp".into();
    r.environment = vec!["MODE=dev".into(), "EXTRA=a=b".into()];
    let app = Machines::app_settings(&r, Some(&defaults), &image).expect("request");
    assert_eq!(
        (app.user.as_str(), app.working_directory.as_str()),
        ("1000", "/tmp")
    );
    let env: Vec<(&str, &str)> = app
        .environment
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        env,
        [
            ("PATH", "/opt/bin:/usr/bin"),
            ("MODE", "dev"),
            ("EXTRA", "a=b")
        ]
    );
    let broken = image::AppDefaults {
        working_dir: "relative".into(),
        ..image::AppDefaults::default()
    };
    let err = Machines::app_settings(&request("x"), Some(&broken), &image).expect_err("bad");
    assert!(err.to_string().contains("give --workdir yourself"), "{err}");
}

#[test]
fn rename_moves_definition_and_root_and_keeps_the_rest() {
    let f = fixture();
    let web = f.machines.create(&request("web")).expect("web").0;
    f.machines.create(&request("db")).expect("db");
    fs::write(f.root.join("roots/web/etc/mark"), b"kept").expect("mark");
    for (new, why) in [
        ("db", "already exists"),
        ("web", "already has that name"),
        ("bad/name", "contains '/'"),
    ] {
        let e = f.machines.rename("web", new).expect_err(new).to_string();
        assert!(e.contains(why), "{new}: {e}");
    }
    assert!(matches!(
        f.machines.rename("ghost", "spirit"),
        Err(MachineError::NotFound(_))
    ));
    let renamed = f.machines.rename("web", "www").expect("rename");
    assert_eq!(renamed.name, "www");
    assert_eq!(renamed.hostname, web.hostname);
    assert_eq!(renamed.machine_id, web.machine_id);
    assert_eq!(renamed.uid_range, web.uid_range);
    assert_eq!(f.machines.get("www").expect("www"), renamed);
    assert!(matches!(
        f.machines.get("web"),
        Err(MachineError::NotFound(_))
    ));
    assert_eq!(
        fs::read(f.root.join("roots/www/etc/mark")).expect("root moved"),
        b"kept"
    );
    assert!(!f.root.join("roots/web").exists());
}

#[test]
fn snapshots_are_taken_restored_renamed_and_removed_with_the_machine() {
    let f = fixture();
    let web = f.machines.create(&request("web")).expect("web").0;
    let mark = f.root.join("roots/web/etc/mark");
    fs::write(&mark, b"before").expect("mark");
    let before = f
        .machines
        .take_snapshot("web", "before", false)
        .expect("snapshot");
    assert_eq!(
        (before.name.as_str(), before.image.as_str()),
        ("before", "deb")
    );
    fs::write(&mark, b"after").expect("mark");
    fs::write(f.root.join("roots/web/etc/new"), b"new").expect("new");
    let unnamed = f
        .machines
        .take_snapshot("web", "", false)
        .expect("snapshot");
    assert_eq!(unnamed.name, "snap0");
    let names = |m: &str| -> Vec<String> {
        f.machines
            .snapshots(m)
            .expect("list")
            .into_iter()
            .map(|s| s.name)
            .collect()
    };
    assert_eq!(names("web"), ["before", "snap0"]);

    // Bad input, each named; nothing half-made is left.
    for (machine, snapshot, why) in [
        ("web", "before", "already has a snapshot named 'before'"),
        ("web", "a/b", "contains '/'"),
        ("web", ".hidden", "must not start with '.'"),
        ("ghost", "x", "no machine named 'ghost'"),
    ] {
        let e = f
            .machines
            .take_snapshot(machine, snapshot, false)
            .expect_err(snapshot)
            .to_string();
        assert!(e.contains(why), "{snapshot}: {e}");
    }
    let e = f
        .machines
        .take_snapshot("web", "live", true)
        .expect_err("running, not a subvolume")
        .to_string();
    assert!(
        e.contains("is running and its root is not a btrfs subvolume"),
        "{e}"
    );
    for e in [
        f.machines.restore_snapshot("web", "nope").map(drop),
        f.machines.remove_snapshot("web", "nope"),
    ] {
        let e = e.expect_err("unknown snapshot").to_string();
        assert!(e.contains("has no snapshot named 'nope'"), "{e}");
    }
    let leftovers: Vec<_> = fs::read_dir(f.root.join("roots/.snapshots/web"))
        .expect("snapshots dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".#"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Restore: the snapshot's files, the machine's identity (whatever the snapshot held).
    fs::write(
        f.root.join("roots/.snapshots/web/before/etc/hostname"),
        b"stale\n",
    )
    .expect("stale hostname");
    let (restored, _, _) = f
        .machines
        .restore_snapshot("web", "before")
        .expect("restore");
    assert_eq!(restored.machine_id, web.machine_id);
    assert_eq!(fs::read(&mark).expect("mark"), b"before");
    assert!(!f.root.join("roots/web/etc/new").exists());
    assert_eq!(
        fs::read_to_string(f.root.join("roots/web/etc/hostname")).expect("hostname"),
        "web\n"
    );
    // The snapshot stays as it was, to restore again.
    assert_eq!(
        fs::read(f.root.join("roots/.snapshots/web/before/etc/mark")).expect("kept"),
        b"before"
    );

    // Crash leftovers: a tree without its info file, an info file without its tree.
    fs::create_dir(f.root.join("roots/.snapshots/web/half")).expect("half");
    fs::write(
        f.root.join("roots/.snapshots/web/.gone.info"),
        b"Created=1\nImage=deb\n",
    )
    .expect("gone");
    // ... and a volume's copy cut short (a file, not a tree).
    fs::create_dir_all(f.root.join("volumes/.snapshots/web")).expect("volume snapshots");
    let staged = f.root.join("volumes/.snapshots/web/.#berth-copy-cut.ext4");
    fs::write(&staged, b"half").expect("staged");
    assert_eq!(f.machines.clean_stale(), 3);
    assert!(!staged.exists());
    assert_eq!(names("web"), ["before", "snap0"]);

    f.machines.rename("web", "www").expect("rename");
    assert_eq!(names("www"), ["before", "snap0"]);
    assert!(!f.root.join("roots/.snapshots/web").exists());
    f.machines.remove_snapshot("www", "snap0").expect("rm");
    assert_eq!(names("www"), ["before"]);
    f.machines.remove("www").expect("remove");
    assert!(!f.root.join("roots/.snapshots/www").exists());
}

#[test]
fn a_volume_machines_snapshot_is_a_copy_of_its_volume() {
    let f = fixture();
    f.machines.create(&request("web")).expect("web");
    let volume = f.root.join("volumes/web.ext4");
    fs::create_dir_all(volume.parent().expect("parent")).expect("volumes");
    // A sparse "volume": its hole stays a hole in the copy.
    let file = fs::File::create(&volume).expect("volume");
    file.set_len(64 << 20).expect("size");
    std::os::unix::fs::FileExt::write_all_at(&file, b"ext4 data", 1 << 20).expect("data");
    let mut definition = f.machines.get("web").expect("web");
    definition.volume = Some((volume.clone(), 64 << 20));
    f.machines.write_definition(&definition).expect("write");
    let e = f
        .machines
        .take_snapshot("web", "", true)
        .expect_err("running")
        .to_string();
    assert!(
        e.contains("is running and it runs on a volume of its own"),
        "{e}"
    );
    let taken = f
        .machines
        .take_snapshot("web", "", false)
        .expect("snapshot");
    assert!(
        taken.storage.ends_with("of the volume"),
        "{}",
        taken.storage
    );
    let copy = f.root.join("volumes/.snapshots/web/snap0.ext4");
    let meta = fs::metadata(&copy).expect("copy");
    assert_eq!(meta.len(), 64 << 20);
    assert!(meta.blocks() * 512 < 8 << 20, "the hole was filled");
    assert_eq!(f.machines.snapshots("web").expect("list").len(), 1);
    f.machines.rename("web", "www").expect("rename");
    assert!(f.root.join("volumes/.snapshots/www/snap0.ext4").is_file());
    f.machines.remove_snapshot("www", "snap0").expect("rm");
    assert!(!f.root.join("volumes/.snapshots/www/snap0.ext4").exists());
    assert!(f.machines.snapshots("www").expect("list").is_empty());
}
