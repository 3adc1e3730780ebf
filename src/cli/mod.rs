//! The `berth` command line: clap definitions and output formatting only. Every verb is a
//! D-Bus call to berthd (see `src/bin/berth/main.rs`).

pub mod format;
pub mod signal;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

fn parse_disk_size(text: &str) -> Result<u64, String> {
    crate::systemd::properties::parse_bytes(text)
}

/// berth: machines as first-class systemd citizens.
///
/// berth runs Linux containers ("machines") as transient systemd scopes registered with
/// systemd-machined, so systemctl, machinectl and journalctl work on them. This command is a
/// thin client of the berthd daemon on the system bus; read-only verbs work for every user,
/// changes need root or the polkit actions org.berth.berth1.*. Machine definitions are
/// described in berth.machine(5), the daemon in berthd(8).
#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
// Each verb's arguments are built only when that verb runs, not all of them every time.
#[command(defer = true)]
pub enum Command {
    /// Import a tar archive as an image.
    ///
    /// Reads a tar archive (plain, gzip, xz or zstd; told by its content) from FILE, or from
    /// standard input when FILE is '-', and stores it as the image NAME: a plain directory tree
    /// in /var/lib/machines (a btrfs subvolume when that is btrfs), never a stacked filesystem.
    /// Entries that would land outside the image (absolute paths, '..', paths through symlinks,
    /// hard links to files outside it) and device nodes are not written; each is listed as a
    /// warning. The image appears only once the import is complete.
    #[command(disable_version_flag = true, name = "import-tar")]
    ImportTar {
        /// The tar archive, or '-' for standard input.
        file: PathBuf,
        /// The image name: 1-64 letters, digits, '.', '_' or '-'; not starting with '.' or '-'.
        name: String,
        /// Store it as this version of NAME (in /var/lib/machines/NAME.v/NAME_VERSION, beside
        /// the other versions; NAME alone then means the newest, ordered as systemd orders
        /// versions: 1.10 is newer than 1.9).
        #[arg(long = "version", value_name = "VERSION")]
        image_version: Option<String>,
    },
    /// Import a directory tree as an image.
    ///
    /// Copies DIR (owners, modes, times, extended attributes, symlinks and hard links kept) into
    /// the image NAME, reflinking file data where the filesystem can. Other filesystems mounted
    /// below DIR are not crossed; device nodes and sockets are skipped with a warning.
    #[command(disable_version_flag = true, name = "import-fs")]
    ImportFs {
        /// The directory to copy.
        dir: PathBuf,
        /// The image name: 1-64 letters, digits, '.', '_' or '-'; not starting with '.' or '-'.
        name: String,
        /// Store it as this version of NAME (see import-tar).
        #[arg(long = "version", value_name = "VERSION")]
        image_version: Option<String>,
    },
    /// Import an OCI image layout tarball or a 'docker save' archive as an image.
    ///
    /// Reads FILE (or standard input for '-'; plain, gzip, xz or zstd), checks every blob
    /// against its digest, flattens the layers in order into a plain tree (whiteouts and
    /// opaque directories applied, every path confined to the tree as import-tar does) and
    /// keeps the image config's Entrypoint, Cmd, Env, WorkingDir and User as the defaults of
    /// app machines made from it ('berth create NAME --image IMAGE' without a command runs
    /// Entrypoint + Cmd). An index with several platforms: the host's is taken.
    #[command(
        name = "import-oci",
        after_help = "Examples:\n  docker save alpine:3.20 | berth import-oci - alpine --version 3.20\n  skopeo copy docker://nginx oci-archive:nginx.tar && berth import-oci nginx.tar nginx"
    )]
    #[command(disable_version_flag = true)]
    ImportOci {
        /// The archive, or '-' for standard input.
        file: PathBuf,
        /// The image name.
        name: String,
        /// Store it as this version of NAME (see import-tar).
        #[arg(long = "version", value_name = "VERSION")]
        image_version: Option<String>,
    },
    /// Write an image into a directory that serves as a registry.
    ///
    /// Writes NAME_VERSION.tar.zst (or .tar.xz with --format xz) into DIR and adds its line
    /// to DIR's SHA256SUMS (other lines are kept, so one directory holds many images); with
    /// --sign KEY, signs SHA256SUMS with your gpg key as SHA256SUMS.gpg. Any static web
    /// server of DIR is then a registry for 'berth pull' and 'machinectl pull-tar'.
    #[command(
        after_help = "Examples:\n  berth export web@1.2 /srv/registry --sign admin@example.org\n  (cd /srv/registry && python3 -m http.server 8080)"
    )]
    Export {
        /// The image: NAME (its newest version) or NAME@VERSION.
        name: String,
        /// The registry directory (must exist).
        dir: PathBuf,
        /// Compression: zstd (default) or xz.
        #[arg(long, default_value = "zstd", value_parser = ["zstd", "xz"])]
        format: String,
        /// Sign SHA256SUMS with this gpg key (your keyring; runs gpg as you).
        #[arg(long, value_name = "KEY")]
        sign: Option<String>,
    },
    /// Download and verify an image from a registry directory.
    ///
    /// URL names a tarball (NAME_VERSION.tar.zst, .tar.xz, .tar.gz, .tar) in a directory
    /// served over http(s) with its SHA256SUMS, as 'berth export' writes it. The download is
    /// checked against SHA256SUMS (--verify checksum, the default), also against its gpg
    /// signature SHA256SUMS.gpg with the keyring /etc/berth/import-pubring.gpg (else
    /// systemd's import-pubring.gpg) (--verify signature), or not at all (--verify no); a
    /// download that fails is discarded. The image name and version come from the file name
    /// unless given.
    #[command(
        after_help = "Example:\n  berth pull http://registry.example.org/web_1.2.tar.zst --verify signature"
    )]
    #[command(disable_version_flag = true)]
    Pull {
        /// The tarball's URL.
        url: String,
        /// The image name (default: from the file name).
        name: Option<String>,
        /// The version (default: from the file name, NAME_VERSION.tar.zst).
        #[arg(long = "version", value_name = "VERSION")]
        image_version: Option<String>,
        /// How to verify the download: checksum, signature or no.
        #[arg(long, default_value = "checksum", value_parser = ["checksum", "signature", "no"])]
        verify: String,
    },
    /// List images.
    ///
    /// Shows every image in /var/lib/machines, each version on a line of its own (newest
    /// first), with its size, creation time, digest and origin (images berth did not import
    /// show no digest or origin).
    Images {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Show the lineage: each image under the image it was built or committed from.
        #[arg(long, conflicts_with = "json")]
        tree: bool,
    },
    /// Build an image from a Containerfile.
    ///
    /// SOURCE is a local directory or git checkout (PATH), or a git URL, with an optional
    /// #REF (branch, tag or commit). The commit is resolved here, as you, and its tree (git
    /// archive) is the build context: uncommitted changes are not built. The Containerfile's
    /// FROM names a berth image (NAME or NAME@VERSION); RUN steps run in a transient machine
    /// made from it (its own UID range and scope), COPY takes local files of the context;
    /// ENV, WORKDIR, USER, ENTRYPOINT, CMD and LABEL are kept, ENTRYPOINT/CMD/ENV/WORKDIR/USER
    /// as the defaults of app machines made from the image. The result is stored as
    /// NAME@VERSION with its lineage: the base's name@version@digest, the source, ref and
    /// commit, and the Containerfile's digest. The default version is the commit's date and
    /// short hash (UTC), so versions are ordered: 20261201.153000.gabc1234.
    #[command(
        after_help = "Examples:\n  berth build /srv/src/web --name web\n  berth build https://git.example.org/web.git#v2 --name web --version 2.0"
    )]
    #[command(disable_version_flag = true)]
    Build {
        /// A directory, a git checkout, or a git URL; #REF picks a branch, tag or commit.
        source: String,
        /// The image to store the result as.
        #[arg(long)]
        name: String,
        /// The version (default: the commit's date and short hash).
        #[arg(long = "version", value_name = "VERSION")]
        image_version: Option<String>,
        /// The Containerfile's path in the source (default: Containerfile, else Dockerfile).
        #[arg(long, short = 'f', value_name = "PATH")]
        file: Option<String>,
    },
    /// Build an image again if its source or its base image moved.
    ///
    /// Looks at how the newest version of NAME was built: when its source's ref now names
    /// another commit, or its base image (FROM without a version) has a newer version, builds
    /// it again as 'berth build' did, as a new version; otherwise says it is up to date and
    /// does nothing. berth-build@NAME.timer runs this regularly (systemctl enable --now
    /// berth-build@NAME.timer).
    Rebuild {
        /// The image (built with 'berth build').
        name: String,
    },
    /// Remove images.
    ///
    /// NAME@VERSION removes one version; NAME removes an unversioned image, or all versions
    /// of NAME with --all-versions.
    Rmi {
        /// The images to remove: NAME or NAME@VERSION.
        #[arg(required = true)]
        names: Vec<String>,
        /// Remove every version of each NAME.
        #[arg(long)]
        all_versions: bool,
    },
    /// Create a machine from an image.
    ///
    /// Copies the image to the machine's root (/var/lib/berth/machines/NAME), gives the machine
    /// a private range of 65536 UIDs/GIDs from systemd's container range (never shared with
    /// another machine, the same at every start), a machine-id generated now and kept for
    /// life, and its hostname (written to the guest's /etc/hostname). The definition is stored
    /// in /etc/berth/machines/NAME.machine. With --boot the image's own init (systemd) will be
    /// PID 1; otherwise give the command to run after '--'.
    #[command(
        after_help = "Examples:\n  berth create web --image debian --boot\n  berth create job --image debian --bind /srv/data:/data:ro -- /usr/bin/make -C /data"
    )]
    Create {
        /// The machine name: a valid hostname of 1-64 letters, digits, '-' and '.'.
        name: String,
        /// The image to copy (see 'berth images').
        #[arg(long)]
        image: String,
        /// Boot the image's init system (systemd) as PID 1.
        #[arg(long, conflicts_with = "command")]
        boot: bool,
        /// The hostname inside (default: the machine name).
        #[arg(long)]
        hostname: Option<String>,
        /// Bind-mount a host path into the machine; repeatable.
        #[arg(long = "bind", value_name = "SRC:DST[:ro]")]
        binds: Vec<String>,
        /// A resource-control property of the machine's scope in systemd's syntax
        /// (systemd.resource-control(5)), e.g. MemoryMax=1G, CPUQuota=50%,
        /// IOWeight=200, "IODeviceWeight=/dev/vda 500"; repeatable.
        #[arg(short = 'p', long = "property", value_name = "NAME=VALUE")]
        properties: Vec<String>,
        /// How the root is made: 'auto' (a btrfs snapshot, reflink copy or copy of the
        /// image) or 'volume' (an ext4 filesystem of its own, of --disk-size: its own
        /// journal, so its fsyncs don't wait on other machines' writes, and a hard size limit).
        #[arg(long, default_value = "auto", value_parser = ["auto", "volume"])]
        storage: String,
        /// The size of a --storage volume, e.g. 2G (K, M, G, T: powers of 1024).
        #[arg(long, value_name = "SIZE", value_parser = parse_disk_size)]
        disk_size: Option<u64>,
        /// The machine's timezone: 'host' (follow the host's zone, refreshed at each start)
        /// or a zone of the machine's tzdata, e.g. Europe/Berlin, written once as its
        /// /etc/localtime (the machine may change it; its /etc wins).
        #[arg(long, value_name = "ZONE", default_value = "host")]
        timezone: String,
        /// The machine's locale (LANG): 'host' (the host's LANG, refreshed at each start) or
        /// a locale, e.g. de_DE.UTF-8, written once to its /etc/locale.conf and
        /// /etc/default/locale; generated with the machine's locale-gen when it lacks it.
        #[arg(long, value_name = "LOCALE", default_value = "host")]
        locale: String,
        #[command(flatten)]
        app: AppOptions,
        #[command(flatten)]
        network: NetworkOptions,
        /// The command an app machine runs (after '--'; default: the image's Entrypoint and
        /// Cmd).
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Start a machine.
    ///
    /// Runs the machine in new mount, PID, UTS, IPC, cgroup and user namespaces (its own UID
    /// range, the image idmapped rather than chowned), in the transient scope
    /// machine-NAME.scope in machine.slice with Delegate=yes, registered with
    /// systemd-machined, so systemctl, machinectl and journalctl see it. A boot machine's PID
    /// 1 is its systemd; an app machine's is berth's small init, which runs the command,
    /// reaps zombies and forwards signals; the command's output goes to the journal
    /// ('berth logs NAME'). Returns once the init or command runs; with --wait, once the
    /// machine is ready (a boot machine's systemd has reported READY=1: booting finished).
    #[command(after_help = "Examples:
  berth start web
  berth start --wait web && berth shell web -- systemctl is-system-running")]
    Start {
        /// The machine to start.
        name: String,
        /// Return once the machine is ready, not just started.
        #[arg(long)]
        wait: bool,
        /// Stay in the foreground while the machine runs (as berth@NAME.service runs it): tell
        /// systemd when it is ready (sd_notify), stop it on SIGTERM, exit with its status. A
        /// machine already running is watched, not started again.
        #[arg(long)]
        watch: bool,
        /// Seconds --wait and --watch wait for readiness.
        #[arg(long, default_value_t = 300)]
        timeout: u32,
    },
    /// Start a machine at boot.
    ///
    /// Enables berth@NAME.service, which machines.target wants (and machines.target itself,
    /// as 'machinectl enable' does), so the machine starts at boot; 'systemctl
    /// start|stop|status berth@NAME.service' then manage it too. The machine itself still runs
    /// in machine-NAME.scope.
    Enable {
        /// The machines.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Stop starting a machine at boot (disables berth@NAME.service).
    Disable {
        /// The machines.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Create a machine, start it attached to this terminal or these pipes, and wait.
    ///
    /// Like 'berth create' then 'berth start', but the command's standard input, output and
    /// error are this command's: a new terminal of the machine when standard input is a
    /// terminal, the same pipes or files otherwise. Exits with the command's exit status
    /// (128 + N when it was killed by signal N). Ctrl-C, SIGTERM and SIGHUP are passed on to
    /// the command; a booted machine powers off.
    #[command(after_help = "Examples:
  berth run --rm --image debian -- sh -c 'exit 7'; echo $?
  echo hi | berth run --rm --image debian -- cat
  berth run --name shell --image debian -- bash")]
    Run {
        /// The machine name (default: run-XXXXXXXX).
        #[arg(long)]
        name: Option<String>,
        /// The image to copy (see 'berth images').
        #[arg(long)]
        image: String,
        /// Remove the machine (definition and root) once it stops.
        #[arg(long)]
        rm: bool,
        /// Boot the image's init system (systemd) as PID 1 instead of running a command.
        #[arg(long, conflicts_with = "command")]
        boot: bool,
        /// The hostname inside (default: the machine name).
        #[arg(long)]
        hostname: Option<String>,
        /// Bind-mount a host path into the machine; repeatable.
        #[arg(long = "bind", value_name = "SRC:DST[:ro]")]
        binds: Vec<String>,
        /// A resource-control property of the machine's scope in systemd's syntax
        /// (systemd.resource-control(5)), e.g. MemoryMax=1G, CPUQuota=50%,
        /// IOWeight=200, "IODeviceWeight=/dev/vda 500"; repeatable.
        #[arg(short = 'p', long = "property", value_name = "NAME=VALUE")]
        properties: Vec<String>,
        /// How the root is made: 'auto' (a btrfs snapshot, reflink copy or copy of the
        /// image) or 'volume' (an ext4 filesystem of its own, of --disk-size: its own
        /// journal, so its fsyncs don't wait on other machines' writes, and a hard size limit).
        #[arg(long, default_value = "auto", value_parser = ["auto", "volume"])]
        storage: String,
        /// The size of a --storage volume, e.g. 2G (K, M, G, T: powers of 1024).
        #[arg(long, value_name = "SIZE", value_parser = parse_disk_size)]
        disk_size: Option<u64>,
        /// The machine's timezone: 'host' (follow the host's zone, refreshed at each start)
        /// or a zone of the machine's tzdata, e.g. Europe/Berlin, written once as its
        /// /etc/localtime (the machine may change it; its /etc wins).
        #[arg(long, value_name = "ZONE", default_value = "host")]
        timezone: String,
        /// The machine's locale (LANG): 'host' (the host's LANG, refreshed at each start) or
        /// a locale, e.g. de_DE.UTF-8, written once to its /etc/locale.conf and
        /// /etc/default/locale; generated with the machine's locale-gen when it lacks it.
        #[arg(long, value_name = "LOCALE", default_value = "host")]
        locale: String,
        #[command(flatten)]
        app: AppOptions,
        #[command(flatten)]
        network: NetworkOptions,
        /// The command to run (after '--'; default: the image's Entrypoint and Cmd).
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Run a command inside a running machine.
    ///
    /// The command runs in all of the machine's namespaces, in its scope and its root, as
    /// USER of the machine's /etc/passwd (default root), attached to this terminal (a new
    /// terminal of the machine) or these pipes. Exits with the command's exit status.
    #[command(after_help = "Examples:
  berth exec web -- systemctl status
  berth exec --user alice web -- bash")]
    Exec {
        /// The machine.
        name: String,
        /// The user to run as: a name or UID of the machine's /etc/passwd.
        #[arg(long, short = 'u')]
        user: Option<String>,
        /// The command (after '--').
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Open a login session in a running boot machine.
    ///
    /// The machine's own systemd runs the command (default: USER's login shell) as a
    /// transient service with PAMName=login, as 'machinectl shell' does: logind inside
    /// registers the session (XDG_SESSION_ID, XDG_RUNTIME_DIR) and PAM applies the machine's
    /// /etc/environment and locale. It gets this terminal's TERM and COLORTERM; on a terminal
    /// it gets a new one of the machine (window size kept in step), otherwise these pipes, so
    /// it can be scripted. Unlike 'machinectl shell', exits with the command's exit status.
    #[command(after_help = "Examples:
  berth shell web
  berth shell --user alice web
  berth shell web -- date +%Z")]
    Shell {
        /// The machine (a boot machine; for app machines use 'berth exec').
        name: String,
        /// The user to log in as: a name or UID of the machine (default root).
        #[arg(long, short = 'u')]
        user: Option<String>,
        /// The command to run instead of the login shell (after '--').
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Copy a file or directory from the host into a machine.
    ///
    /// SOURCE is read as you (berth reads only what you may read); DEST is a path of the
    /// machine, by default the same path as SOURCE. When DEST is a directory, SOURCE goes
    /// into it; otherwise it is written as DEST, whose directory must exist. What is written
    /// is owned by the machine's root, with SOURCE's permission bits (not set-ID or sticky
    /// bits) and times; a directory is copied with everything in it, symlinks in it as
    /// symlinks (FIFOs, sockets and device nodes fail the copy). An
    /// existing file is replaced at once; an existing directory is not replaced. A copy that
    /// fails leaves nothing behind. Unlike 'machinectl copy-to', it works for machines with
    /// a private UID range, and for stopped machines (refusing a DEST their own mounts hide
    /// once they run, such as /tmp). To copy out of a machine use 'berth copy-from'.
    #[command(after_help = "Examples:
  berth copy-to web ./nginx.conf /etc/nginx/nginx.conf
  berth copy-to web ./site /srv/
  berth copy-to web /etc/ssl/certs/corp-ca.pem")]
    CopyTo {
        /// The machine (running or stopped).
        name: String,
        /// A file or directory of the host.
        source: std::path::PathBuf,
        /// Where in the machine (absolute; default: SOURCE's absolute path).
        dest: Option<String>,
    },
    /// Copy a file or directory out of a machine to the host.
    ///
    /// SOURCE is an absolute path of the machine, read there as the machine's root; DEST is a
    /// path of the host, by default the current directory. When DEST is a directory, SOURCE
    /// goes into it; otherwise it is written as DEST, whose directory must exist. berth writes
    /// it as you: what it writes is yours, with SOURCE's permission bits (not set-ID or sticky
    /// bits) and times; a directory is copied with everything in it, symlinks in it as
    /// symlinks (never followed on the host; FIFOs, sockets and device nodes fail the copy).
    /// An existing file is replaced at once; an existing directory is not replaced. A copy
    /// that fails leaves nothing behind.
    #[command(after_help = "Examples:
  berth copy-from web /etc/nginx/nginx.conf
  berth copy-from web /var/log/nginx ./web-logs
  berth copy-from web /etc/hostname /tmp/web-hostname")]
    CopyFrom {
        /// The machine (running or stopped).
        name: String,
        /// A file or directory of the machine (absolute).
        source: String,
        /// Where on the host (default: the current directory).
        dest: Option<std::path::PathBuf>,
    },
    /// Send a signal to a machine's processes.
    ///
    /// By default every process of the machine gets the signal (as with 'machinectl kill');
    /// with --leader only its PID 1.
    Kill {
        /// The machine.
        name: String,
        /// The signal: a name (TERM, SIGTERM, HUP, RTMIN+3) or number.
        #[arg(long, short = 's', default_value = "TERM")]
        signal: String,
        /// Signal only the machine's PID 1 (waits up to 10 s for it to handle the signal;
        /// an error if it never does, as the kernel would drop it).
        #[arg(long)]
        leader: bool,
    },
    /// Stop a machine (if it runs) and start it again.
    Restart {
        /// The machine.
        name: String,
        /// Seconds to wait for it to stop before killing it.
        #[arg(long, default_value_t = 90)]
        timeout: u32,
    },
    /// List forwarded ports.
    ///
    /// Every --port of private machines (or of NAME): the host port, where its IPv4 traffic
    /// goes (a DNAT of berth's nftables table 'inet berth', as 'nft list table inet berth'
    /// shows) and its IPv6 traffic (berthd's relay on [::]:PORT), and whether it is in place
    /// (the machine runs).
    Ports {
        /// Only this machine's.
        name: Option<String>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a machine's state, unit, limits, processes and last log lines.
    Status {
        /// The machine.
        name: String,
        /// Print JSON (without log lines) instead.
        #[arg(long)]
        json: bool,
    },
    /// Change resource-control properties, timezone or locale of a machine, live.
    ///
    /// Applies the properties to the running machine's scope at once (SetUnitProperties) and
    /// records them in its definition, so they hold at the next starts too; on a stopped
    /// machine, only the definition changes. Timezone=ZONE|host and Locale=LOCALE|host are
    /// written into the machine's /etc at once (as --timezone and --locale of create). Every
    /// value is checked first: an invalid one changes nothing. Same syntax as 'create -p'.
    #[command(
        after_help = "Examples:\n  berth set web CPUWeight=80 MemoryMax=2G\n  berth set --runtime web 'IOReadBandwidthMax=/dev/vda 10M'\n  berth set web Timezone=Asia/Tokyo Locale=ja_JP.UTF-8"
    )]
    Set {
        /// The machine.
        name: String,
        /// NAME=VALUE assignments (see 'berth create --help' and the README).
        #[arg(required = true, value_name = "NAME=VALUE")]
        properties: Vec<String>,
        /// Change only the running scope, not the definition.
        #[arg(long)]
        runtime: bool,
    },
    /// Show what running machines use, refreshed like top(1).
    ///
    /// CPU % (of one CPU, over the last interval), CPU time, memory now and at peak, IO read
    /// and written, tasks: read from each machine's scope cgroup files. Ctrl-C ends it; when
    /// standard output is not a terminal, one sample over one interval is printed.
    Top {
        /// Seconds between samples.
        #[arg(long, short = 'd', default_value_t = 2.0)]
        delay: f64,
        /// Print one sample (taken over one interval) and exit.
        #[arg(long)]
        once: bool,
    },
    /// Check whether the host can enforce berth's IO limits, and say how to fix what can't.
    ///
    /// For berth's machine directory (and each machine, or only NAME): the disk under it, its
    /// scheduler (BFQ or io.cost make IOWeight work), the io cgroup controller, and whether a
    /// machine shares its filesystem journal with others (then a neighbour's writes stall its
    /// fsyncs whatever the limits; --storage volume avoids that). berth never changes these
    /// host settings itself. Exits 1 when something can't be enforced.
    Doctor {
        /// Check only this machine.
        name: Option<String>,
    },
    /// Show a machine's logs from the journal.
    ///
    /// An app machine's output is logged by journald for its scope (SYSLOG_IDENTIFIER=NAME);
    /// a boot machine keeps its own journal in its root, read here as with
    /// 'journalctl -M NAME'. Runs journalctl, so reading needs what journalctl needs (root or
    /// the systemd-journal group).
    Logs {
        /// The machine.
        name: String,
        /// Keep printing new lines as they come.
        #[arg(long, short = 'f')]
        follow: bool,
        /// How many of the last lines to show.
        #[arg(long, short = 'n')]
        lines: Option<u32>,
    },
    /// Stop a machine.
    ///
    /// Asks a booted machine's systemd to power off (SIGRTMIN+3), an app's init to end
    /// (SIGTERM); after the timeout, kills every process of its scope.
    Stop {
        /// The machine to stop.
        name: String,
        /// Seconds to wait before killing it.
        #[arg(long, default_value_t = 90)]
        timeout: u32,
    },
    /// Remove machines: their definitions and roots.
    ///
    /// A running machine is refused unless --force is given, which stops it first (killing
    /// it after 10 seconds).
    Rm {
        /// The machines to remove.
        #[arg(required = true)]
        names: Vec<String>,
        /// Stop running machines first.
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// List machines.
    ///
    /// Shows every machine with its state, unit, leader PID, uptime, image, mode, hostname and
    /// UID range.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Only the machines whose image has a newer version, or whose image was built from
        /// a base that has one ('berth rebase' moves a machine to the newest).
        #[arg(long)]
        outdated: bool,
    },
    /// Move a stopped machine to another version of its image.
    ///
    /// Makes a fresh root from the image at --to (default: its newest version) and swaps it
    /// in atomically. Kept: the machine's definition (name, mode, command, hostname,
    /// machine-id, UID range, binds, -p properties, timezone and locale settings) and
    /// everything bind-mounted into it from outside its root (--bind directories). Replaced:
    /// everything inside the root, including what the machine changed there; keep data that
    /// must survive a rebase in --bind directories.
    Rebase {
        /// The machine (stopped).
        name: String,
        /// The image version to move to (default: the newest).
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
    },
    /// Copy a stopped machine as a new machine.
    ///
    /// The copy gets its own UID range, machine-id and hostname, and keeps the original's
    /// image record, mode, command, binds, properties and settings. It is a btrfs snapshot
    /// when the root is a subvolume (instant), a reflink copy on filesystems that share file
    /// data (btrfs, xfs), a plain copy elsewhere; berth says which.
    Clone {
        /// The machine to copy (stopped).
        source: String,
        /// The new machine's name.
        target: String,
        /// The new machine's hostname (default: its name).
        #[arg(long)]
        hostname: Option<String>,
    },
    /// Give a stopped machine a new name.
    ///
    /// Its definition, root directory and volume move to the new name, and a machine enabled
    /// at boot is enabled under it. Its hostname, machine-id, UID range, addresses and
    /// settings stay.
    #[command(after_help = "Example:
  berth rename web web-old")]
    Rename {
        /// The machine (stopped).
        name: String,
        /// Its new name.
        new_name: String,
    },
    /// Store a stopped machine's root as a new image.
    ///
    /// The image records the machine's image (name, version, digest) as its base, so 'berth
    /// images --tree' shows where it came from and 'berth list --outdated' tells when that
    /// base has a newer version. What makes the machine itself does not travel: /etc/hostname,
    /// /etc/machine-id, systemd's random seed and credential secret get the base image's
    /// versions back (or go), and the machine's journal goes. An app machine's command, user,
    /// working directory and environment become the image's defaults. It is a btrfs snapshot
    /// when the root is a subvolume on the pool's btrfs (instant), a copy elsewhere.
    #[command(
        disable_version_flag = true,
        after_help = "Examples:
  berth commit web web-golden --version 1.0
  berth create web2 --image web-golden --boot"
    )]
    Commit {
        /// The machine (stopped).
        name: String,
        /// The new image's name (see import-tar).
        image: String,
        /// Store it as this version of IMAGE (see import-tar).
        #[arg(long = "version", value_name = "VERSION")]
        image_version: Option<String>,
    },
    /// Take, list, restore and remove snapshots of a machine's root.
    ///
    /// A snapshot keeps a machine's root as it is, to go back to later ('berth snapshot
    /// restore'): before an upgrade, say. It is a btrfs snapshot when the root is a subvolume
    /// (instant, and taken of a running machine too, as a crash would leave it), a reflink
    /// or plain copy of a stopped machine (or of its volume file) elsewhere.
    #[command(
        disable_version_flag = true,
        subcommand,
        after_help = "Example:
  berth snapshot create web before-upgrade
  berth shell web -- apt-get -y full-upgrade
  berth stop web && berth snapshot restore web before-upgrade"
    )]
    Snapshot(SnapshotCommand),
}

/// `berth snapshot`'s own verbs.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum SnapshotCommand {
    /// Take a snapshot of a machine's root.
    ///
    /// A running machine is snapshotted only where its root is a btrfs subvolume (the
    /// snapshot is atomic); elsewhere stop it first. A machine on a volume of its own
    /// (--storage volume) gets a copy of its volume file.
    #[command(disable_version_flag = true)]
    Create {
        /// The machine.
        name: String,
        /// The snapshot's name (1-64 letters, digits, '.', '_' or '-'; default: snap0,
        /// snap1, ...).
        snapshot: Option<String>,
    },
    /// List a machine's snapshots, oldest first.
    #[command(disable_version_flag = true)]
    List {
        /// The machine.
        name: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put a stopped machine's root back as a snapshot has it.
    ///
    /// Everything in the root is replaced by the snapshot's (which stays, to restore again).
    /// The machine keeps its definition, hostname, machine-id and UID range; its image version
    /// becomes the one it had when the snapshot was taken.
    #[command(disable_version_flag = true)]
    Restore {
        /// The machine (stopped).
        name: String,
        /// The snapshot.
        snapshot: String,
    },
    /// Remove a snapshot.
    #[command(disable_version_flag = true)]
    Rm {
        /// The machine.
        name: String,
        /// The snapshot.
        snapshot: String,
    },
}

// How an app machine's command runs; each defaults to the image's (an OCI config's User,
// WorkingDir and Env, a build's USER, WORKDIR and ENV). Plain comments: a doc comment here
// would become the about text of the verbs that flatten it (their arguments are deferred).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AppOptions {
    /// Run the command as USER[:GROUP] of the machine's /etc/passwd and /etc/group (names or
    /// numbers; default root).
    #[arg(long, short = 'u', value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Start the command in this directory of the machine (default: the user's home).
    #[arg(long, short = 'w', value_name = "DIR")]
    pub workdir: Option<String>,
    /// Set an environment variable for the command, over the image's and the login
    /// environment; repeatable.
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE")]
    pub env: Vec<String>,
}

// How a machine is networked (a plain comment, as for AppOptions).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NetworkOptions {
    /// 'host' (share the host's network), 'none' (only loopback), 'private' (a veth pair to
    /// berth's bridge berth0, an address from 10.89.0.0/16 and fd89:6265:7274::/64, names of
    /// other machines resolvable) or 'bridge=BR' (a veth pair to your bridge BR).
    #[arg(long, value_name = "MODE", default_value = "host")]
    pub network: String,
    /// Don't masquerade a private machine's traffic to the outside (it then reaches only the
    /// host and other machines).
    #[arg(long)]
    pub no_masquerade: bool,
    /// Forward a host port to a private machine: [tcp:|udp:]HOSTPORT[:MACHINEPORT] (default
    /// tcp, the same port), from other hosts, the host itself (localhost too) and over IPv6;
    /// repeatable. 'berth ports' lists them.
    #[arg(long = "port", short = 'P', value_name = "[PROTO:]HOST[:MACHINE]")]
    pub ports: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// clap's own consistency checks (unique flags, valid defaults, …), which otherwise run
    /// only when a debug build parses the subcommand in question, and then panic.
    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
