//! berth: the command-line client. Every verb is a D-Bus call to berthd; errors arrive as
//! one line on stderr and a non-zero exit status.

use std::fs::File;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use berth::api::{BUS_NAME, ImportResult, ManagerProxy};
use berth::cli::{Cli, Command, SnapshotCommand, format};
use clap::Parser;

mod build;
mod copy;

fn main() -> ExitCode {
    berth::sys::process::default_sigpipe();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&anyhow::Error::from(e)),
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("berth: {}", message(e));
    ExitCode::FAILURE
}

/// The name and message of an error reply (zbus reports the bus's own, org.freedesktop.DBus.*,
/// as `Error::FDO`, any other as `Error::MethodError`).
fn error_reply(e: &anyhow::Error) -> Option<(String, String)> {
    match e.downcast_ref::<zbus::Error>()? {
        zbus::Error::MethodError(name, text, _) => Some((
            name.to_string(),
            text.clone().unwrap_or_else(|| name.to_string()),
        )),
        zbus::Error::FDO(fdo) => {
            use zbus::DBusError;
            let name = fdo.name().to_string();
            let text = fdo
                .description()
                .map_or_else(|| name.clone(), str::to_owned);
            Some((name, text))
        }
        _ => None,
    }
}

/// One line for the user: berthd's own message for its errors, context for ours.
fn message(e: &anyhow::Error) -> String {
    if let Some((name, text)) = error_reply(e) {
        return match name.as_str() {
            "org.freedesktop.DBus.Error.ServiceUnknown"
            | "org.freedesktop.DBus.Error.NameHasNoOwner"
            | "org.freedesktop.DBus.Error.Spawn.ServiceNotFound"
            | "org.freedesktop.DBus.Error.Spawn.ChildExited" => format!(
                "cannot reach berthd ({BUS_NAME}) on the system bus: {text}; check that the berth package is installed and see 'journalctl -u berthd'"
            ),
            "org.freedesktop.DBus.Error.AccessDenied" => {
                format!("the system bus refused the call: {text}")
            }
            "org.freedesktop.DBus.Error.NoReply" if text.contains("disconnected") => format!(
                "berthd went away before it answered ({text}); it may have crashed: see 'journalctl -u berthd'. What the request did may be incomplete: check with 'berth list' or 'berth images', then retry"
            ),
            "org.freedesktop.DBus.Error.NoReply" => format!(
                "berthd did not answer ({text}); see 'journalctl -u berthd'. The request may still be in progress: check with 'berth list' or 'berth images'"
            ),
            _ => text,
        };
    }
    format!("{e:#}")
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let connection = zbus::Connection::system().await.context(
        "cannot connect to the system bus; is dbus running? (on a host without systemd, see README: the VM test host)",
    )?;
    let manager = ManagerProxy::new(&connection).await?;
    match command {
        Command::ImportTar {
            file,
            name,
            image_version,
        } => {
            let (input, origin) = open_tar_input(&file)?;
            let version = image_version.unwrap_or_default();
            let result = manager
                .import_tar(input.as_fd().into(), &name, &version, &origin)
                .await?;
            report_import(&result);
        }
        Command::ImportOci {
            file,
            name,
            image_version,
        } => {
            let (input, origin) = open_tar_input(&file)?;
            let result = manager
                .import_oci(
                    input.as_fd().into(),
                    &name,
                    &image_version.unwrap_or_default(),
                    &origin,
                )
                .await?;
            report_import(&result);
        }
        Command::ImportFs {
            dir,
            name,
            image_version,
        } => {
            let input = File::open(&dir)
                .with_context(|| format!("cannot open the directory {}", dir.display()))?;
            if !input.metadata()?.is_dir() {
                bail!(
                    "{} is not a directory; use 'berth import-tar' for archives",
                    dir.display()
                );
            }
            let origin = absolute(&dir);
            let result = manager
                .import_fs(
                    input.as_fd().into(),
                    &name,
                    &image_version.unwrap_or_default(),
                    &origin,
                )
                .await?;
            report_import(&result);
        }
        Command::Images { json, tree } => {
            let images = manager.list_images().await?;
            let table = if tree {
                format::images_tree
            } else {
                format::images_table
            };
            print_listing(
                &images,
                json,
                "No images. Import one with 'berth import-tar FILE NAME'.",
                table,
            )?;
        }
        Command::Build {
            source,
            name,
            image_version,
            file,
        } => {
            let result = build::build(&manager, &source, &name, image_version, file).await?;
            report_import(&result);
        }
        Command::Rebuild { name } => return build::rebuild(&manager, &name).await,
        Command::Export {
            name,
            dir,
            format,
            sign,
        } => {
            let directory = File::open(&dir)
                .with_context(|| format!("cannot open the directory {}", dir.display()))?;
            if !directory.metadata()?.is_dir() {
                bail!("{} is not a directory", dir.display());
            }
            let (file, sha256) = manager
                .export_image(&name, directory.as_fd().into(), &format)
                .await?;
            println!(
                "Exported image '{name}' as {} (sha256 {sha256}); its line is in {}.",
                dir.join(&file).display(),
                dir.join("SHA256SUMS").display()
            );
            if let Some(key) = sign {
                sign_sums(&dir, &key)?;
            }
        }
        Command::Pull {
            url,
            name,
            image_version,
            verify,
        } => {
            let result = manager
                .pull_image(
                    &url,
                    name.as_deref().unwrap_or(""),
                    image_version.as_deref().unwrap_or(""),
                    &verify,
                )
                .await?;
            report_import(&result);
        }
        Command::Rmi {
            names,
            all_versions,
        } => {
            for name in names {
                manager.remove_image(&name, all_versions).await?;
                println!("Removed image '{name}'.");
            }
        }
        Command::Create {
            name,
            image,
            boot,
            hostname,
            binds,
            properties,
            storage,
            disk_size,
            timezone,
            locale,
            app,
            network,
            command,
        } => {
            let (machine, warnings) = manager
                .create_machine(
                    &name,
                    &image,
                    boot,
                    &command,
                    hostname.as_deref().unwrap_or(""),
                    &binds,
                    &properties,
                    &storage,
                    disk_size.unwrap_or(0),
                    (&timezone, &locale),
                    app_options(&app),
                    (
                        network.network.as_str(),
                        !network.no_masquerade,
                        &network.ports,
                    ),
                )
                .await?;
            print_warnings(&warnings);
            println!(
                "Created machine '{}' from image '{}' ({} mode): root {} ({}), UIDs {}-{}, hostname {}, machine-id {}.",
                machine.name,
                machine.image,
                machine.mode,
                machine.root,
                machine.storage,
                machine.uid_base,
                machine.uid_base + (berth::machine::RANGE_SIZE - 1),
                machine.hostname,
                machine.machine_id
            );
        }
        Command::Start {
            name,
            wait,
            watch,
            timeout,
        } => {
            if watch {
                return watch_machine(&manager, &name, timeout).await;
            }
            let machine = manager.start_machine(&name).await?;
            if wait {
                manager.wait_ready(&name, timeout).await?;
            }
            println!(
                "Started machine '{}'{}: {} (leader PID {}). 'machinectl status {}' shows it.",
                machine.name,
                if wait { ", ready" } else { "" },
                machine.unit,
                machine.leader,
                machine.name
            );
        }
        Command::Enable { names } => {
            for name in names {
                let changes = manager.enable_machine(&name).await?;
                print_unit_file_changes(&changes);
                println!(
                    "Machine '{name}' starts at boot (berth@{name}.service, machines.target)."
                );
            }
        }
        Command::Disable { names } => {
            for name in names {
                let changes = manager.disable_machine(&name).await?;
                print_unit_file_changes(&changes);
                println!("Machine '{name}' no longer starts at boot.");
            }
        }
        Command::Stop { name, timeout } => {
            manager.stop_machine(&name, timeout).await?;
            println!("Stopped machine '{name}'.");
        }
        Command::Rm { names, force } => {
            for name in names {
                if force {
                    match manager.stop_machine(&name, 10).await {
                        Ok(()) => println!("Stopped machine '{name}'."),
                        Err(e) if is_error(&e, "InvalidState") => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                manager.remove_machine(&name).await?;
                println!("Removed machine '{name}'.");
            }
        }
        Command::Run {
            name,
            image,
            rm,
            boot,
            hostname,
            binds,
            properties,
            storage,
            disk_size,
            timezone,
            locale,
            app,
            network,
            command,
        } => {
            if name.as_deref() == Some("") {
                bail!(
                    "machine name is empty; give --name NAME, or leave --name out for a generated one"
                );
            }
            let tty = std::io::stdin().is_terminal();
            let term = std::env::var("TERM").unwrap_or_default();
            let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
            // Caught from here on: a Ctrl-C while berthd sets the machine up reaches the
            // machine once it runs (and --rm removes it), instead of leaving it running
            // without its caller.
            let mut signals = ForwardedSignals::catch(boot);
            let setting_up = manager.run_machine(
                name.as_deref().unwrap_or(""),
                &image,
                boot,
                &command,
                hostname.as_deref().unwrap_or(""),
                &binds,
                &properties,
                &storage,
                disk_size.unwrap_or(0),
                rm,
                tty,
                (
                    stdin.as_fd().into(),
                    stdout.as_fd().into(),
                    stderr.as_fd().into(),
                ),
                &term,
                (&timezone, &locale),
                app_options(&app),
                (
                    network.network.as_str(),
                    !network.no_masquerade,
                    &network.ports,
                ),
            );
            let (name, terminal) = signals.hold_while(setting_up).await?;
            let relay = tty.then(|| start_relay(terminal)).transpose()?;
            let waited = signals
                .forward_while(&manager, &name, manager.wait_machine(&name))
                .await;
            return finish(relay, waited);
        }
        Command::Exec {
            name,
            user,
            command,
        } => {
            let tty = std::io::stdin().is_terminal();
            let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
            let (id, terminal) = manager
                .exec_machine(
                    &name,
                    user.as_deref().unwrap_or(""),
                    &command,
                    tty,
                    window_size(),
                    stdin.as_fd().into(),
                    stdout.as_fd().into(),
                    stderr.as_fd().into(),
                    &caller_environment(),
                )
                .await?;
            let relay = tty.then(|| start_relay(terminal)).transpose()?;
            let waited = manager.wait_exec(id).await;
            return finish(relay, waited);
        }
        Command::Shell {
            name,
            user,
            command,
        } => {
            let tty = std::io::stdin().is_terminal();
            let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
            let (id, terminal) = manager
                .open_shell(
                    &name,
                    user.as_deref().unwrap_or(""),
                    &command,
                    tty,
                    window_size(),
                    stdin.as_fd().into(),
                    stdout.as_fd().into(),
                    stderr.as_fd().into(),
                    &caller_environment(),
                )
                .await?;
            let relay = tty.then(|| start_relay(terminal)).transpose()?;
            let waited = manager.wait_exec(id).await;
            return finish(relay, waited);
        }
        Command::CopyTo { name, source, dest } => {
            copy::copy_to(&manager, &name, &source, dest).await?;
        }
        Command::CopyFrom { name, source, dest } => {
            copy::copy_from(&manager, &name, &source, dest).await?;
        }
        Command::Kill {
            name,
            signal,
            leader,
        } => {
            let number = berth::cli::signal::parse(&signal).map_err(anyhow::Error::msg)?;
            manager.kill_machine(&name, leader, number).await?;
            println!(
                "Sent {} to {} of machine '{name}'.",
                berth::runtime::signals::name(number),
                if leader {
                    "the leader"
                } else {
                    "every process"
                }
            );
        }
        Command::Restart { name, timeout } => {
            let machine = manager.restart_machine(&name, timeout).await?;
            println!(
                "Restarted machine '{}': {} (leader PID {}).",
                machine.name, machine.unit, machine.leader
            );
        }
        Command::Set {
            name,
            properties,
            runtime,
        } => {
            let warnings = manager.set_properties(&name, &properties, runtime).await?;
            print_warnings(&warnings);
            let running = manager
                .list_machines()
                .await?
                .into_iter()
                .any(|m| m.name == name && m.state == "running");
            println!(
                "Set {} on machine '{name}'{}.",
                properties.join(" "),
                match (running, runtime) {
                    (true, true) => " (running scope only)",
                    (true, false) => " (running scope and definition)",
                    _ => " (definition; applies at the next start)",
                }
            );
        }
        Command::Top { delay, once } => {
            let interval = std::time::Duration::from_secs_f64(delay.clamp(0.2, 3600.0));
            let mut before = manager.machine_usage(&[]).await?;
            let interactive = !once && std::io::stdout().is_terminal();
            loop {
                tokio::time::sleep(interval).await;
                let now = manager.machine_usage(&[]).await?;
                if interactive {
                    print!("\x1b[H\x1b[2J");
                }
                if now.is_empty() {
                    println!("No running machines.");
                } else {
                    println!("{}", format::usage_table(&before, &now));
                }
                if !interactive {
                    break;
                }
                before = now;
            }
        }
        Command::Doctor { name } => {
            let mut targets = vec![(String::new(), "berth's machine directory".to_owned())];
            match name {
                Some(name) => targets = vec![(name.clone(), format!("machine '{name}'"))],
                None => {
                    for m in manager.list_machines().await? {
                        targets.push((m.name.clone(), format!("machine '{}'", m.name)));
                    }
                }
            }
            let mut problems = 0;
            for (name, label) in targets {
                println!("{label}:");
                for (ok, text, fix) in manager.check_io(&name).await? {
                    println!("  {} {text}", if ok { "ok  " } else { "FIX " });
                    if !ok {
                        problems += 1;
                        println!("       how: {fix}");
                    }
                }
            }
            if problems > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Status { name, json } => {
            let status = manager.machine_status(&name).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                let mut usage = String::new();
                if status.machine.state == "running" {
                    let names = [name.clone()];
                    let before = manager.machine_usage(&names).await?;
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    let now = manager.machine_usage(&names).await?;
                    if let Some(now) = now.first() {
                        usage = format::usage_lines(before.first(), now);
                    }
                }
                print!("{}", format::status(&status, now_usec(), &usage));
                for (_, text, _) in manager
                    .check_io(&name)
                    .await?
                    .into_iter()
                    .filter(|(ok, _, _)| !ok)
                {
                    println!("{:>12}: {text} (see 'berth doctor {name}')", "IO warning");
                }
                let _ = std::io::Write::flush(&mut std::io::stdout());
                let mut journal = std::process::Command::new("journalctl");
                journal.args(["--no-pager", "-n", "10", "-q"]);
                journal.args(logs_selector(&status.machine));
                let _ = journal.status();
            }
        }
        Command::Logs {
            name,
            follow,
            lines,
        } => {
            let machines = manager.list_machines().await?;
            let Some(machine) = machines.iter().find(|m| m.name == name) else {
                bail!("no machine named '{name}'; 'berth list' shows the machines there are");
            };
            let mut journal = std::process::Command::new("journalctl");
            journal.arg("--no-pager");
            if follow {
                journal.arg("--follow");
            }
            if let Some(lines) = lines {
                journal.args(["-n", &lines.to_string()]);
            }
            journal.args(logs_selector(machine));
            let status = journal
                .status()
                .context("cannot run journalctl (is systemd installed?)")?;
            return Ok(ExitCode::from(
                u8::try_from(status.code().unwrap_or(1)).unwrap_or(1),
            ));
        }
        Command::List {
            json,
            outdated: true,
        } => {
            let outdated = manager.list_outdated().await?;
            print_listing(
                &outdated,
                json,
                "No machine is outdated: each is made from the newest version of its image.",
                format::outdated_table,
            )?;
        }
        Command::Rebase { name, to } => {
            let (machine, storage, warnings) = manager
                .rebase_machine(&name, to.as_deref().unwrap_or(""))
                .await?;
            print_warnings(&warnings);
            println!(
                "Rebased machine '{name}' onto image '{}' ({storage}); its machine-id {}, UIDs {}-{} and binds are unchanged. 'berth start {name}' starts it.",
                machine.image,
                machine.machine_id,
                machine.uid_base,
                machine.uid_base + (berth::machine::RANGE_SIZE - 1)
            );
        }
        Command::Rename { name, new_name } => {
            let machine = manager.rename_machine(&name, &new_name).await?;
            println!(
                "Renamed machine '{name}' to '{}'; its hostname stays '{}'.",
                machine.name, machine.hostname
            );
        }
        Command::Commit {
            name,
            image,
            image_version,
        } => {
            let result = manager
                .commit_machine(&name, &image, &image_version.unwrap_or_default())
                .await?;
            println!(
                "Committed machine '{name}' as image '{}': {} in a {}.",
                result.name,
                format::size(result.size_bytes),
                result.storage
            );
            print_refused(&result.refused);
        }
        Command::Clone {
            source,
            target,
            hostname,
        } => {
            let (machine, storage) = manager
                .clone_machine(&source, &target, hostname.as_deref().unwrap_or(""))
                .await?;
            println!(
                "Cloned machine '{source}' as '{target}' ({storage}): UIDs {}-{}, hostname {}, machine-id {}.",
                machine.uid_base,
                machine.uid_base + (berth::machine::RANGE_SIZE - 1),
                machine.hostname,
                machine.machine_id
            );
        }
        Command::Snapshot(SnapshotCommand::Create { name, snapshot }) => {
            let (snapshot, storage) = manager
                .snapshot_machine(&name, snapshot.as_deref().unwrap_or(""))
                .await?;
            println!(
                "Took snapshot '{snapshot}' of machine '{name}' ({storage}). 'berth snapshot restore {name} {snapshot}' puts the machine back to it."
            );
        }
        Command::Snapshot(SnapshotCommand::List { name, json }) => {
            let snapshots = manager.list_snapshots(&name).await?;
            print_listing(
                &snapshots,
                json,
                &format!(
                    "Machine '{name}' has no snapshots. 'berth snapshot create {name}' takes one."
                ),
                format::snapshots_table,
            )?;
        }
        Command::Snapshot(SnapshotCommand::Restore { name, snapshot }) => {
            let (machine, storage, warnings) = manager.restore_machine(&name, &snapshot).await?;
            print_warnings(&warnings);
            println!(
                "Restored machine '{name}' from snapshot '{snapshot}' ({storage}, image '{}'); its machine-id {}, UIDs {}-{} and binds are unchanged. 'berth start {name}' starts it.",
                machine.image,
                machine.machine_id,
                machine.uid_base,
                machine.uid_base + (berth::machine::RANGE_SIZE - 1),
            );
        }
        Command::Snapshot(SnapshotCommand::Rm { name, snapshot }) => {
            manager.remove_snapshot(&name, &snapshot).await?;
            println!("Removed snapshot '{snapshot}' of machine '{name}'.");
        }
        Command::Ports { name, json } => {
            let ports = manager.list_ports(name.as_deref().unwrap_or("")).await?;
            print_listing(
                &ports,
                json,
                "No forwarded ports. Give --port HOSTPORT[:MACHINEPORT] to a --network private machine at create.",
                format::ports_table,
            )?;
        }
        Command::List { json, .. } => {
            let machines = manager.list_machines().await?;
            print_listing(
                &machines,
                json,
                "No machines. Create one with 'berth create NAME --image IMAGE --boot'.",
                format::machines_table,
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether a berthd error has this name (after `org.berth.Berth1.Error.`).
fn is_error(e: &zbus::Error, name: &str) -> bool {
    matches!(e, zbus::Error::MethodError(n, _, _) if n.as_str() == format!("org.berth.Berth1.Error.{name}"))
}

/// What journalctl shows for a machine: a boot machine's own journal in its root (what
/// `journalctl -M` opens, and readable while it is stopped), an app's lines in the host's.
fn logs_selector(machine: &berth::api::MachineEntry) -> Vec<String> {
    if machine.mode == "boot" && machine.storage == "volume" {
        // Its journal is on its volume, mounted only while it runs.
        vec!["-M".into(), machine.name.clone()]
    } else if machine.mode == "boot" {
        vec!["-D".into(), format!("{}/var/log/journal", machine.root)]
    } else {
        vec![
            "-u".into(),
            berth::systemd::unit_name::machine_scope(&machine.name),
            format!("SYSLOG_IDENTIFIER={}", machine.name),
        ]
    }
}

fn now_usec() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(0))
}

/// Ctrl-C, SIGTERM and SIGHUP, caught to be passed to the machine's PID 1: an app machine's
/// init passes them on to the command; a booted systemd gets a poweroff request (SIGRTMIN+3)
/// instead, as systemd-nspawn sends it (to systemd, SIGINT means reboot and SIGTERM
/// re-execute). One caught while berthd sets the machine up is held until it runs. A booted
/// one gets its request once it has booted: the kernel drops a signal sent while its systemd
/// starts up, before that handles signals.
struct ForwardedSignals {
    interrupt: Option<tokio::signal::unix::Signal>,
    terminate: Option<tokio::signal::unix::Signal>,
    hangup: Option<tokio::signal::unix::Signal>,
    boot: bool,
    /// A booted machine's systemd has told it is up (so it takes signals).
    booted: bool,
    held: Vec<i32>,
}

impl ForwardedSignals {
    fn catch(boot: bool) -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Self {
            interrupt: signal(SignalKind::interrupt()).ok(),
            terminate: signal(SignalKind::terminate()).ok(),
            hangup: signal(SignalKind::hangup()).ok(),
            boot,
            booted: false,
            held: Vec::new(),
        }
    }

    /// Passes signal `number` on to machine `name` (a booted one gets a poweroff request,
    /// once it has booted).
    async fn pass_on(&mut self, manager: &ManagerProxy<'_>, name: &str, number: i32) {
        let number = if self.boot {
            if !self.booted {
                let _ = manager.wait_ready(name, 90).await;
                self.booted = true;
            }
            libc::SIGRTMIN() + 3
        } else {
            number
        };
        let _ = manager.kill_machine(name, true, number).await;
    }

    /// The next signal caught: its number and name.
    async fn next(&mut self) -> (i32, &'static str) {
        async fn on(stream: &mut Option<tokio::signal::unix::Signal>) {
            match stream {
                Some(stream) => {
                    stream.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = on(&mut self.interrupt) => (libc::SIGINT, "SIGINT"),
            () = on(&mut self.terminate) => (libc::SIGTERM, "SIGTERM"),
            () = on(&mut self.hangup) => (libc::SIGHUP, "SIGHUP"),
        }
    }

    /// Waits for `setting_up` (the machine's RunMachine), holding the signals caught meanwhile.
    async fn hold_while<T>(
        &mut self,
        setting_up: impl std::future::Future<Output = zbus::Result<T>>,
    ) -> zbus::Result<T> {
        tokio::pin!(setting_up);
        loop {
            let (number, signal) = tokio::select! {
                result = &mut setting_up => return result,
                caught = self.next() => caught,
            };
            if !self.held.contains(&number) {
                let what = if self.boot {
                    "the machine powers off once it has booted"
                } else {
                    "the machine gets it as soon as it runs"
                };
                eprintln!("berth: caught {signal} while berthd sets the machine up; {what}");
                self.held.push(number);
            }
        }
    }

    /// Passes the held signals to machine `name`, then waits for `waiting`, passing each
    /// signal caught meanwhile.
    async fn forward_while(
        mut self,
        manager: &ManagerProxy<'_>,
        name: &str,
        waiting: impl std::future::Future<Output = zbus::Result<(i32, String)>>,
    ) -> zbus::Result<(i32, String)> {
        let held = std::mem::take(&mut self.held);
        for number in held {
            self.pass_on(manager, name, number).await;
        }
        tokio::pin!(waiting);
        loop {
            let (number, _) = tokio::select! {
                result = &mut waiting => return result,
                caught = self.next() => caught,
            };
            self.pass_on(manager, name, number).await;
        }
    }
}

/// This terminal's window size (rows, columns); (0, 0) when stdin is no terminal.
fn window_size() -> (u16, u16) {
    rustix::termios::tcgetwinsize(std::io::stdin().as_fd())
        .map_or((0, 0), |size| (size.ws_row, size.ws_col))
}

/// The caller's TERM and COLORTERM, passed into the machine.
fn caller_environment() -> Vec<String> {
    ["TERM", "COLORTERM"]
        .iter()
        .filter_map(|key| {
            let value = std::env::var(key).ok().filter(|v| !v.is_empty())?;
            Some(format!("{key}={value}"))
        })
        .collect()
}

/// Relays this terminal to the machine's, and keeps its window size in step.
fn start_relay(terminal: zbus::OwnedFd) -> anyhow::Result<berth::terminal::Relay> {
    let master: std::os::fd::OwnedFd = terminal.into();
    let resized = master.try_clone()?;
    if let Ok(mut winch) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
    {
        tokio::spawn(async move {
            while winch.recv().await.is_some() {
                berth::terminal::resize(&resized);
            }
        });
    }
    Ok(berth::terminal::Relay::start(master)?)
}

/// As systemctl reports them: "Created symlink LINK → TARGET." / "Removed LINK.".
fn print_unit_file_changes(changes: &[(String, String, String)]) {
    for (kind, link, target) in changes {
        match kind.as_str() {
            "symlink" => println!("Created symlink {link} → {target}."),
            "unlink" => println!("Removed \"{link}\"."),
            _ => println!("{kind}: {link} {target}"),
        }
    }
}

/// `berth start --watch`, as berth@NAME.service runs it: starts the machine (unless it
/// runs), tells systemd when it is ready, stops it on SIGTERM (systemctl stop), and exits
/// with its status once it stops. A berthd restart (package upgrade) is waited out.
async fn watch_machine(
    manager: &ManagerProxy<'_>,
    name: &str,
    timeout: u32,
) -> anyhow::Result<ExitCode> {
    use sd_notify::NotifyState;
    // Handled from the start, so `systemctl stop` during a slow boot stops the machine too.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    match manager.start_machine(name).await {
        Ok(machine) => eprintln!("Started machine '{name}' (leader PID {}).", machine.leader),
        Err(e) if is_error(&e, "InvalidState") => {
            eprintln!("Machine '{name}' runs already; watching it.")
        }
        Err(e) => return Err(e.into()),
    }
    tokio::select! {
        ready = manager.wait_ready(name, timeout) => ready?,
        _ = term.recv() => {
            eprintln!("Stopping machine '{name}' before it was ready.");
            manager.stop_machine(name, 90).await?;
            return Ok(ExitCode::SUCCESS);
        }
    }
    let _ = sd_notify::notify(&[
        NotifyState::Ready,
        NotifyState::Status(&format!("Machine '{name}' is ready.")),
    ]);
    eprintln!("Machine '{name}' is ready.");
    let mut stopping = false;
    loop {
        tokio::select! {
            waited = manager.wait_machine(name) => match waited {
                Ok((code, description)) => {
                    // A reboot (machinectl reboot) stops and starts it again.
                    if !stopping && code == 128 + libc::SIGHUP && running_again(manager, name).await {
                        continue;
                    }
                    eprintln!("Machine '{name}' {description}.");
                    return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
                }
                Err(e) if is_error(&e, "InvalidState") => {
                    eprintln!("Machine '{name}' stopped.");
                    return Ok(ExitCode::SUCCESS);
                }
                // berthd went away (an upgrade restarts it): ask again; that activates it.
                Err(e) => {
                    eprintln!("Lost berthd while watching '{name}' ({e}); asking again.");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            },
            _ = term.recv(), if !stopping => {
                stopping = true;
                let _ = sd_notify::notify(&[NotifyState::Stopping]);
                eprintln!("Stopping machine '{name}'.");
                match manager.stop_machine(name, 90).await {
                    Ok(()) => {}
                    Err(e) if is_error(&e, "InvalidState") => {}
                    Err(e) => eprintln!("Stopping machine '{name}' failed: {e}"),
                }
            }
        }
    }
}

/// Whether machine `name` runs again within 60 s (after a reboot).
async fn running_again(manager: &ManagerProxy<'_>, name: &str) -> bool {
    for _ in 0..120 {
        if let Ok(machines) = manager.list_machines().await
            && machines
                .iter()
                .any(|m| m.name == name && m.state == "running")
        {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    false
}

fn print_warnings(warnings: &[String]) {
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
}

/// Restores the terminal, copies out the rest of the output and turns the command's exit
/// code into ours.
fn finish(
    relay: Option<berth::terminal::Relay>,
    waited: zbus::Result<(i32, String)>,
) -> anyhow::Result<ExitCode> {
    if let Some(relay) = relay {
        relay.finish();
    }
    let (code, _description) = waited?;
    Ok(ExitCode::from(u8::try_from(code & 0xff).unwrap_or(255)))
}

/// Prints a listing as JSON, as a table, or as a hint when there is nothing to list.
fn print_listing<T: serde::Serialize>(
    items: &[T],
    json: bool,
    empty_hint: &str,
    table: fn(&[T]) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(items)?);
    } else if items.is_empty() {
        println!("{empty_hint}");
    } else {
        println!("{}", table(items));
    }
    Ok(())
}

/// Opens the archive as the calling user (so berthd never reads what the user couldn't) and
/// says where it came from.
fn open_tar_input(file: &Path) -> anyhow::Result<(File, String)> {
    if file.as_os_str() == "-" {
        if std::io::stdin().is_terminal() {
            bail!("standard input is a terminal; pipe a tar archive in, or name a file");
        }
        let stdin = std::io::stdin().as_fd().try_clone_to_owned()?;
        return Ok((File::from(stdin), "-".into()));
    }
    let input = File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    if input.metadata()?.is_dir() {
        bail!(
            "{} is a directory; use 'berth import-fs DIR NAME' for directories",
            file.display()
        );
    }
    Ok((input, absolute(file)))
}

fn absolute(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_owned())
        .display()
        .to_string()
}

/// Signs DIR/SHA256SUMS with the user's gpg key `key` as DIR/SHA256SUMS.gpg.
fn sign_sums(dir: &Path, key: &str) -> anyhow::Result<()> {
    let sums = dir.join("SHA256SUMS");
    let signature = dir.join("SHA256SUMS.gpg");
    let output = std::process::Command::new("gpg")
        .args([
            "--batch",
            "--yes",
            "--local-user",
            key,
            "--detach-sign",
            "--output",
        ])
        .arg(&signature)
        .arg(&sums)
        .output()
        .context("cannot run gpg to sign SHA256SUMS; is gnupg installed?")?;
    if !output.status.success() {
        bail!(
            "gpg could not sign {} with key '{key}': {}",
            sums.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    println!("Signed {} as {}.", sums.display(), signature.display());
    Ok(())
}

pub(crate) fn report_import(result: &ImportResult) {
    println!(
        "Imported image '{}': {} in a {}{}.",
        result.name,
        format::size(result.size_bytes),
        result.storage,
        if result.digest.is_empty() {
            String::new()
        } else {
            format!(", {}", result.digest)
        }
    );
    print_refused(&result.refused);
}

fn print_refused(refused: &[String]) {
    if !refused.is_empty() {
        eprintln!(
            "berth: warning: {} entries were not written into the image:",
            refused.len()
        );
        for line in refused {
            eprintln!("  {line}");
        }
    }
}

/// `--user`, `--workdir`, `--env` as CreateMachine and RunMachine take them (empty: the
/// image's default).
fn app_options(app: &berth::cli::AppOptions) -> (&str, &str, &[String]) {
    (
        app.user.as_deref().unwrap_or(""),
        app.workdir.as_deref().unwrap_or(""),
        &app.env,
    )
}
