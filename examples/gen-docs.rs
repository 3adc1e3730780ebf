//! Generates berth's man pages and shell completions from its command line definition, for
//! the packages: `cargo run --example gen-docs -- MANDIR COMPLETIONDIR`.
//!
//! Writes berth.1 (every verb listed) and berth-VERB.1 (each verb's options and examples;
//! berth-VERB-SUB.1 for a verb's own verbs) into MANDIR, and berth.bash, _berth and berth.fish into COMPLETIONDIR. The hand-written
//! pages berthd(8) and berth.machine(5) live in docs/man.

use std::fs;
use std::path::PathBuf;

use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let (Some(mandir), Some(compdir)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: gen-docs MANDIR COMPLETIONDIR");
    };
    fs::create_dir_all(&mandir)?;
    fs::create_dir_all(&compdir)?;
    let cli = berth::cli::Cli::command();

    let mut page = Vec::new();
    clap_mangen::Man::new(cli.clone()).render(&mut page)?;
    fs::write(mandir.join("berth.1"), page)?;
    for verb in cli.get_subcommands() {
        write_page(&mandir, verb, &["berth"])?;
        // A verb's own verbs (berth snapshot create, ...) get pages of their own too.
        for sub in verb.get_subcommands() {
            write_page(&mandir, sub, &["berth", verb.get_name()])?;
        }
    }

    for (shell, file) in [
        (Shell::Bash, "berth.bash"),
        (Shell::Zsh, "_berth"),
        (Shell::Fish, "berth.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cli.clone(), "berth", &mut out);
        fs::write(compdir.join(file), out)?;
    }
    Ok(())
}

/// Writes `berth-VERB.1` (or `berth-VERB-SUB.1`) for `verb`, invoked as `parents` then it.
fn write_page(
    mandir: &std::path::Path,
    verb: &clap::Command,
    parents: &[&str],
) -> anyhow::Result<()> {
    let words: Vec<&str> = parents.iter().copied().chain([verb.get_name()]).collect();
    // clap names are &'static str; this short-lived generator may leak a few.
    let name: &'static str = Box::leak(words.join("-").into_boxed_str());
    let command = verb.clone().name(name).bin_name(words.join(" "));
    let mut page = Vec::new();
    clap_mangen::Man::new(command)
        .title(name.to_uppercase())
        .render(&mut page)?;
    fs::write(mandir.join(format!("{name}.1")), page)?;
    Ok(())
}
