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
