//! berth: the command-line client. Every verb is one D-Bus call to berthd; errors arrive as
//! one line on stderr and a non-zero exit status.

use std::fs::File;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use berth::api::{BUS_NAME, ImportResult, ManagerProxy};
use berth::cli::{Cli, Command, format};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&anyhow::Error::from(e)),
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("berth: {}", message(e));
    ExitCode::FAILURE
}

/// One line for the user: berthd's own message for its errors, context for ours.
fn message(e: &anyhow::Error) -> String {
    if let Some(zbus::Error::MethodError(name, text, _)) = e.downcast_ref::<zbus::Error>() {
        let text = text.clone().unwrap_or_else(|| name.to_string());
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
            _ => text,
        };
    }
    format!("{e:#}")
}

async fn run(command: Command) -> anyhow::Result<()> {
    let connection = zbus::Connection::system().await.context(
        "cannot connect to the system bus; is dbus running? (on a host without systemd, see README: the VM test host)",
    )?;
    let manager = ManagerProxy::new(&connection).await?;
    match command {
        Command::ImportTar { file, name } => {
            let (input, origin) = open_tar_input(&file)?;
            let result = manager
                .import_tar(input.as_fd().into(), &name, &origin)
                .await?;
            report_import(&result);
        }
        Command::ImportFs { dir, name } => {
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
                .import_fs(input.as_fd().into(), &name, &origin)
                .await?;
            report_import(&result);
        }
        Command::Images { json } => {
            let images = manager.list_images().await?;
            print_listing(
                &images,
                json,
                "No images. Import one with 'berth import-tar FILE NAME'.",
                format::images_table,
            )?;
        }
        Command::Rmi { names } => {
            for name in names {
                manager.remove_image(&name).await?;
                println!("Removed image '{name}'.");
            }
        }
        Command::Create {
            name,
            image,
            boot,
            hostname,
            binds,
            command,
        } => {
            if !boot && command.is_empty() {
                bail!("no command for machine '{name}': give --boot, or the command after '--'");
            }
            let machine = manager
                .create_machine(
                    &name,
                    &image,
                    boot,
                    &command,
                    hostname.as_deref().unwrap_or(""),
                    &binds,
                )
                .await?;
            println!(
                "Created machine '{}' from image '{}' ({} mode): root {}, UIDs {}-{}, hostname {}, machine-id {}.",
                machine.name,
                machine.image,
                machine.mode,
                machine.root,
                machine.uid_base,
                machine.uid_base + (berth::machine::RANGE_SIZE - 1),
                machine.hostname,
                machine.machine_id
            );
        }
        Command::Start { name } => {
            let machine = manager.start_machine(&name).await?;
            println!(
                "Started machine '{}': {} (leader PID {}). 'machinectl status {}' shows it.",
                machine.name, machine.unit, machine.leader, machine.name
            );
        }
        Command::Stop { name, timeout } => {
            manager.stop_machine(&name, timeout).await?;
            println!("Stopped machine '{name}'.");
        }
        Command::Rm { names } => {
            for name in names {
                manager.remove_machine(&name).await?;
                println!("Removed machine '{name}'.");
            }
        }
        Command::List { json } => {
            let machines = manager.list_machines().await?;
            print_listing(
                &machines,
                json,
                "No machines. Create one with 'berth create NAME --image IMAGE --boot'.",
                format::machines_table,
            )?;
        }
    }
    Ok(())
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

fn report_import(result: &ImportResult) {
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
    if !result.refused.is_empty() {
        eprintln!(
            "berth: warning: {} entries were not written into the image:",
            result.refused.len()
        );
        for line in &result.refused {
            eprintln!("  {line}");
        }
    }
}
