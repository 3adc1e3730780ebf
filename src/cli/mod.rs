//! The `berth` command line: clap definitions and output formatting only. Every verb is one
//! D-Bus call to berthd (see `src/bin/berth.rs`).

pub mod format;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// berth: machines as first-class systemd citizens.
///
/// berth runs Linux containers ("machines") as transient systemd scopes registered with
/// systemd-machined, so systemctl, machinectl and journalctl work on them. This command is a
/// thin client of the berthd daemon on the system bus; read-only verbs work for every user,
/// changes need root or the polkit actions org.berth.berth1.*.
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
pub enum Command {
    /// Import a tar archive as an image.
    ///
    /// Reads a tar archive (plain, gzip, xz or zstd; told by its content) from FILE, or from
    /// standard input when FILE is '-', and stores it as the image NAME: a plain directory tree
    /// in /var/lib/machines (a btrfs subvolume when that is btrfs), never a stacked filesystem.
    /// Entries that would land outside the image (absolute paths, '..', paths through symlinks,
    /// hard links to files outside it) and device nodes are not written; each is listed as a
    /// warning. The image appears only once the import is complete.
    #[command(name = "import-tar")]
    ImportTar {
        /// The tar archive, or '-' for standard input.
        file: PathBuf,
        /// The image name: 1-64 letters, digits, '.', '_' or '-'; not starting with '.' or '-'.
        name: String,
    },
    /// Import a directory tree as an image.
    ///
    /// Copies DIR (owners, modes, times, extended attributes, symlinks and hard links kept) into
    /// the image NAME, reflinking file data where the filesystem can. Other filesystems mounted
    /// below DIR are not crossed; device nodes and sockets are skipped with a warning.
    #[command(name = "import-fs")]
    ImportFs {
        /// The directory to copy.
        dir: PathBuf,
        /// The image name: 1-64 letters, digits, '.', '_' or '-'; not starting with '.' or '-'.
        name: String,
    },
    /// List images.
    ///
    /// Shows every image in /var/lib/machines with its size, creation time, digest and origin
    /// (images berth did not import show no digest or origin).
    Images {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove images.
    Rmi {
        /// The images to remove.
        #[arg(required = true)]
        names: Vec<String>,
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
        /// The machine name: a valid hostname of 1-64 letters, digits, '.', '_' or '-'.
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
        /// The command an app machine runs (after '--').
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Start a machine.
    ///
    /// Runs the machine in new mount, PID, UTS, IPC, cgroup and user namespaces (its own UID
    /// range, the image idmapped rather than chowned), in the transient scope
    /// machine-NAME.scope in machine.slice with Delegate=yes, registered with
    /// systemd-machined, so systemctl, machinectl and journalctl see it. Returns once the init
    /// runs. (Boot machines; app machines come next.)
    Start {
        /// The machine to start.
        name: String,
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
    Rm {
        /// The machines to remove.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// List machines.
    ///
    /// Shows every machine with its state, image, mode, hostname and UID range.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}
