//! Generates berth's man pages and shell completions from its command line definition, for
//! the packages: `cargo run --example gen-docs -- MANDIR COMPLETIONDIR`.
//!
//! Writes berth.1 (every verb listed) and berth-VERB.1 (each verb's options and examples)
//! into MANDIR, and berth.bash, _berth and berth.fish into COMPLETIONDIR. The hand-written
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
        // clap names are &'static str; this short-lived generator may leak a few.
        let name: &'static str = Box::leak(format!("berth-{}", verb.get_name()).into_boxed_str());
        let command = verb
            .clone()
            .name(name)
            .bin_name(format!("berth {}", verb.get_name()));
        let mut page = Vec::new();
        clap_mangen::Man::new(command)
            .title(name.to_uppercase())
            .render(&mut page)?;
        fs::write(mandir.join(format!("{name}.1")), page)?;
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
