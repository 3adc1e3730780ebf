//! Containerfiles (Dockerfiles): the subset berth builds images from.
//!
//! One stage, `FROM` a berth image, then RUN, COPY/ADD of local files, ENV, WORKDIR, USER,
//! ENTRYPOINT, CMD and LABEL. Variables (`ARG`, `ENV`) are substituted where Docker
//! substitutes them, with Docker's rules, except in RUN, CMD and ENTRYPOINT: the shell does
//! that when the command runs.

use std::collections::HashMap;

use thiserror::Error;

use super::version;
use crate::name;
use words::{expand, split_words};

mod words;

/// A parsed Containerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Containerfile {
    /// The image it builds on: name and version (the newest if none is given).
    pub from: (String, Option<String>),
    pub steps: Vec<Step>,
    /// One line for each instruction that was accepted but has no effect in berth.
    pub warnings: Vec<String>,
}

/// One instruction that changes the image or its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Run(Command),
    /// COPY, and ADD of local files.
    Copy {
        sources: Vec<String>,
        dest: String,
        chown: Option<String>,
    },
    Env(Vec<(String, String)>),
    /// Always absolute: a relative WORKDIR is resolved against the one before it.
    Workdir(String),
    User(String),
    Entrypoint(Command),
    Cmd(Command),
    Label(Vec<(String, String)>),
}

/// A command as written: shell form (`RUN make install`) or exec form (`RUN ["make"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Shell(String),
    Exec(Vec<String>),
}

impl Command {
    /// The command line to execute: the shell form runs under `/bin/sh -c`.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Self::Shell(text) => vec!["/bin/sh".into(), "-c".into(), text.clone()],
            Self::Exec(argv) => argv.clone(),
        }
    }
}

/// Why a Containerfile was refused, and where.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("line {line}: {message}")]
pub struct ContainerfileError {
    /// The first line of the instruction (1-based).
    pub line: usize,
    pub message: String,
}

const SUPPORTED: &str = "FROM, ARG, RUN, COPY, ADD, ENV, WORKDIR, USER, ENTRYPOINT, CMD and \
                         LABEL (EXPOSE, VOLUME and STOPSIGNAL are accepted and ignored)";
const KNOWN: &[&str] = &[
    "FROM",
    "ARG",
    "RUN",
    "COPY",
    "ADD",
    "ENV",
    "WORKDIR",
    "USER",
    "ENTRYPOINT",
    "CMD",
    "LABEL",
    "EXPOSE",
    "VOLUME",
    "STOPSIGNAL",
];

/// Parses a Containerfile.
pub fn parse(text: &str) -> Result<Containerfile, ContainerfileError> {
    let mut parser = Parser::default();
    for (line, instruction) in logical_lines(text) {
        parser
            .instruction(line, &instruction)
            .map_err(|message| ContainerfileError { line, message })?;
    }
    let Some(from) = parser.from else {
        return Err(ContainerfileError {
            line: text.lines().count().max(1),
            message: "there is no FROM: a Containerfile starts with 'FROM NAME[@VERSION]', \
                      the berth image to build on"
                .into(),
        });
    };
    Ok(Containerfile {
        from,
        steps: parser.steps,
        warnings: parser.warnings,
    })
}

/// The instructions with their first line numbers: continuation lines joined, comments and
/// blank lines dropped (also inside a continuation, as Docker does).
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut instructions = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (body, continues) = match raw.trim_end().strip_suffix('\\') {
            Some(body) => (body, true),
            None => (raw, false),
        };
        match &mut current {
            Some((_, instruction)) => instruction.push_str(body),
            None => current = Some((index + 1, body.trim_start().to_owned())),
        }
        if !continues {
            instructions.extend(current.take());
        }
    }
    instructions.extend(current);
    instructions
}

#[derive(Default)]
struct Parser {
    from: Option<(String, Option<String>)>,
    steps: Vec<Step>,
    warnings: Vec<String>,
    /// ARGs declared before FROM: visible to FROM, and after it only where declared again.
    global_args: HashMap<String, String>,
    args: HashMap<String, String>,
    env: HashMap<String, String>,
    workdir: Option<String>,
}

impl Parser {
    fn instruction(&mut self, line: usize, text: &str) -> Result<(), String> {
        if text.contains('\0') {
            return Err("the instruction contains a NUL byte".into());
        }
        let (word, rest) = split_first_word(text);
        let keyword = word.to_ascii_uppercase();
        if !KNOWN.contains(&keyword.as_str()) {
            return Err(match keyword.as_str() {
                "HEALTHCHECK" | "ONBUILD" | "SHELL" | "MAINTAINER" => {
                    format!("{keyword} is not supported; berth supports {SUPPORTED}")
                }
                _ => format!(
                    "unknown instruction {}; berth supports {SUPPORTED}",
                    quoted(word)
                ),
            });
        }
        if self.from.is_none() && keyword != "FROM" && keyword != "ARG" {
            return Err(format!(
                "{keyword} comes before FROM: a Containerfile starts with 'FROM NAME[@VERSION]' \
                 (only ARG may come before it)"
            ));
        }
        let step = match keyword.as_str() {
            "FROM" => return self.base(line, rest),
            "ARG" => return self.arg(line, rest),
            "EXPOSE" | "VOLUME" | "STOPSIGNAL" => {
                let why = match keyword.as_str() {
                    "EXPOSE" => "a berth image records no ports",
                    "VOLUME" => "a berth image records no volumes; bind host paths with --bind",
                    _ => "berth stops every machine the same way",
                };
                self.warnings
                    .push(format!("line {line}: {keyword} is ignored: {why}"));
                return Ok(());
            }
            "RUN" => {
                if rest.starts_with("--") {
                    let (flag, _) = split_first_word(rest);
                    return Err(format!("RUN {} is not supported", quoted(flag)));
                }
                let command = self.command(line, "RUN", rest)?;
                if command == Command::Exec(Vec::new()) {
                    return Err("RUN [] runs nothing: give the program and its arguments".into());
                }
                Step::Run(command)
            }
            "CMD" => Step::Cmd(self.command(line, "CMD", rest)?),
            "ENTRYPOINT" => Step::Entrypoint(self.command(line, "ENTRYPOINT", rest)?),
            "COPY" | "ADD" => self.copy(line, &keyword, rest)?,
            "ENV" => {
                let pairs = self.pairs(line, "ENV", rest)?;
                for (name, _) in &pairs {
                    check_variable_name("ENV", name)?;
                }
                self.env.extend(pairs.iter().cloned());
                Step::Env(pairs)
            }
            "LABEL" => Step::Label(self.pairs(line, "LABEL", rest)?),
            "WORKDIR" => {
                let path = self.expand(line, rest.trim())?;
                if path.is_empty() {
                    return Err("WORKDIR needs a directory: WORKDIR /PATH".into());
                }
                let path = match &self.workdir {
                    Some(before) if !path.starts_with('/') => {
                        format!("{}/{path}", before.trim_end_matches('/'))
                    }
                    _ if !path.starts_with('/') => format!("/{path}"),
                    _ => path,
                };
                self.workdir = Some(path.clone());
                Step::Workdir(path)
            }
            _ => {
                let user = self.expand(line, rest.trim())?;
                if user.is_empty() {
                    return Err("USER needs a user: USER NAME[:GROUP] or USER UID[:GID]".into());
                }
                Step::User(user)
            }
        };
        self.steps.push(step);
        Ok(())
    }

    fn base(&mut self, line: usize, rest: &str) -> Result<(), String> {
        if self.from.is_some() {
            let message = "a second FROM: multi-stage builds are not supported; build each \
                           stage as an image of its own and start the next one FROM it";
            return Err(message.into());
        }
        let (flags, rest) = split_flags(rest);
        if let Some((flag, _)) = flags.first() {
            return Err(format!("FROM --{flag} is not supported"));
        }
        let words = self.words(line, rest)?;
        let reference = match words.as_slice() {
            [] => return Err("FROM needs an image: FROM NAME[@VERSION]".into()),
            [reference] if reference.is_empty() => {
                return Err("FROM needs an image: FROM NAME[@VERSION] (it is empty here)".into());
            }
            [reference] => reference,
            [reference, as_, _stage] if as_.eq_ignore_ascii_case("as") => reference,
            _ => return Err("FROM takes one image: FROM NAME[@VERSION]".into()),
        };
        if reference.eq_ignore_ascii_case("scratch") {
            let message = "FROM scratch is not supported: berth builds on a berth image; \
                           import a root file system first (berth import-tar) and build FROM it";
            return Err(message.into());
        }
        let (image, version) = version::parse_reference(reference)
            .map_err(|e| format!("FROM {}: {e}", quoted(reference)))?;
        if let Err(e) = name::validate("image", &image) {
            let hint = if image.contains(':') {
                " (berth writes a version as NAME@VERSION, not NAME:TAG)"
            } else if image.contains('/') {
                " (berth builds on its own images, which 'berth images' lists, not on registries)"
            } else {
                ""
            };
            return Err(format!("FROM {}: {e}{hint}", quoted(reference)));
        }
        self.from = Some((image, version));
        Ok(())
    }

    fn arg(&mut self, line: usize, rest: &str) -> Result<(), String> {
        let words = self.words(line, rest)?;
        if words.is_empty() {
            return Err("ARG needs a name: ARG NAME[=DEFAULT]".into());
        }
        for word in words {
            let (name, default) = match word.split_once('=') {
                Some((name, default)) => (name, Some(default)),
                None => (word.as_str(), None),
            };
            check_variable_name("ARG", name)?;
            if self.from.is_none() {
                self.global_args
                    .insert(name.into(), default.unwrap_or_default().into());
            } else {
                let value = default
                    .or_else(|| self.global_args.get(name).map(String::as_str))
                    .unwrap_or_default();
                self.args.insert(name.into(), value.into());
            }
        }
        Ok(())
    }

    fn command(&mut self, line: usize, keyword: &str, rest: &str) -> Result<Command, String> {
        let rest = rest.trim();
        if rest.starts_with('[') {
            match serde_json::from_str::<Vec<String>>(rest) {
                Ok(argv) => return Ok(Command::Exec(argv)),
                Err(_) if rest.ends_with(']') => self.warnings.push(format!(
                    "line {line}: {keyword} is not a JSON array of strings (they need double \
                     quotes), so it runs as a shell command"
                )),
                Err(_) => {}
            }
        }
        if rest.is_empty() {
            return Err(format!(
                "{keyword} needs a command: {keyword} COMMAND or {keyword} [\"PROGRAM\", \"ARG\"...]"
            ));
        }
        if rest.split_whitespace().any(is_heredoc) {
            return Err(heredoc_error());
        }
        Ok(Command::Shell(rest.to_owned()))
    }

    fn copy(&mut self, line: usize, keyword: &str, rest: &str) -> Result<Step, String> {
        let (flags, rest) = split_flags(rest);
        let mut chown = None;
        for (flag, value) in flags {
            match (flag, value) {
                ("chown", Some(value)) if !value.is_empty() => {
                    chown = Some(self.expand(line, value)?);
                }
                ("chown", _) => {
                    return Err(format!(
                        "{keyword} --chown needs a value: --chown=USER[:GROUP]"
                    ));
                }
                ("from", _) => {
                    return Err(format!(
                        "{keyword} --from (copying from another stage or image) is not \
                         supported: only files of the build context can be copied"
                    ));
                }
                _ => {
                    return Err(format!(
                        "{keyword} --{flag} is not supported (only --chown is)"
                    ));
                }
            }
        }
        let raw = match serde_json::from_str::<Vec<String>>(rest.trim()) {
            Ok(list) => list,
            Err(_) => split_words(rest),
        };
        let mut paths = Vec::new();
        for word in &raw {
            if is_heredoc(word) {
                return Err(heredoc_error());
            }
            paths.push(self.expand(line, word)?);
        }
        let Some((dest, sources)) = paths.split_last().filter(|(_, s)| !s.is_empty()) else {
            return Err(format!(
                "{keyword} needs at least one source and a destination: {keyword} SOURCE... DEST"
            ));
        };
        if sources.len() > 1 && !dest.ends_with('/') {
            return Err(format!(
                "{keyword} of several sources needs a directory as the destination, written \
                 with a trailing '/': {}",
                quoted(&format!("{dest}/"))
            ));
        }
        if keyword == "ADD" {
            check_add_source(sources)?;
        }
        Ok(Step::Copy {
            sources: sources.to_vec(),
            dest: dest.clone(),
            chown,
        })
    }

    /// ENV and LABEL arguments: `K=V K2="V 2"`, or the legacy `K VALUE WITH SPACES`. All
    /// values are substituted with the variables from before the instruction.
    fn pairs(
        &mut self,
        line: usize,
        keyword: &str,
        rest: &str,
    ) -> Result<Vec<(String, String)>, String> {
        let mut pairs = Vec::new();
        let (first, after) = split_first_word(rest);
        if first.is_empty() {
            return Err(format!("{keyword} needs KEY=VALUE"));
        }
        if !first.contains('=') {
            if after.is_empty() {
                return Err(format!(
                    "{keyword} {first} needs a value: {keyword} {first}=VALUE"
                ));
            }
            pairs.push((self.expand(line, first)?, self.expand(line, after)?));
            return check_keys(keyword, pairs);
        }
        for word in split_words(rest) {
            let Some((key, value)) = word.split_once('=') else {
                return Err(format!(
                    "{keyword} {}: expected KEY=VALUE (quote values with spaces)",
                    quoted(&word)
                ));
            };
            let key = self.expand(line, key)?;
            pairs.push((key, self.expand(line, value)?));
        }
        check_keys(keyword, pairs)
    }

    fn words(&mut self, line: usize, text: &str) -> Result<Vec<String>, String> {
        split_words(text)
            .iter()
            .map(|word| self.expand(line, word))
            .collect()
    }

    /// Docker's processing of one word; warns about ARGs declared before FROM and used
    /// after it without being declared again (Docker makes them empty there).
    fn expand(&mut self, line: usize, word: &str) -> Result<String, String> {
        let mut missing = Vec::new();
        let lookup = |name: &str| match self.from {
            None => self.global_args.get(name).cloned(),
            Some(_) => self.env.get(name).or(self.args.get(name)).cloned(),
        };
        let expanded = expand(word, &lookup, &mut missing)?;
        for name in missing {
            if self.from.is_some() && self.global_args.contains_key(&name) {
                self.warnings.push(format!(
                    "line {line}: ${name} is empty here: an ARG before FROM is visible only to \
                     FROM; declare it again after FROM with 'ARG {name}'"
                ));
            }
        }
        Ok(expanded)
    }
}

/// The first word and the rest, both trimmed.
fn split_first_word(text: &str) -> (&str, &str) {
    let text = text.trim();
    match text.split_once(char::is_whitespace) {
        Some((first, rest)) => (first, rest.trim()),
        None => (text, ""),
    }
}

/// Leading `--name[=value]` flags and the text after them.
fn split_flags(text: &str) -> (Vec<(&str, Option<&str>)>, &str) {
    let mut flags = Vec::new();
    let mut rest = text.trim();
    while let Some(flag) = rest.strip_prefix("--") {
        let (word, after) = split_first_word(flag);
        flags.push(match word.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (word, None),
        });
        rest = after;
    }
    (flags, rest)
}

fn check_keys(
    keyword: &str,
    pairs: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, String> {
    if pairs.iter().any(|(key, _)| key.is_empty()) {
        return Err(format!("{keyword} has an empty key: {keyword} KEY=VALUE"));
    }
    Ok(pairs)
}

fn check_variable_name(keyword: &str, name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{keyword} {}: a variable name is letters, digits and '_', not starting with a digit",
            quoted(name)
        ))
    }
}

/// ADD of anything but a plain local file: Docker would download URLs and unpack archives.
fn check_add_source(sources: &[String]) -> Result<(), String> {
    for source in sources {
        if source.contains("://") || source.starts_with("git@") {
            return Err(format!(
                "ADD of the URL {} is not supported: only local files are; download it into \
                 the build context and COPY it",
                quoted(source)
            ));
        }
        let lower = source.to_ascii_lowercase();
        let file = lower.rsplit('/').next().unwrap_or_default();
        let archive = file.ends_with(".tar")
            || file.contains(".tar.")
            || [".tgz", ".tbz", ".tbz2", ".txz", ".tzst"]
                .iter()
                .any(|suffix| file.ends_with(suffix));
        if archive {
            return Err(format!(
                "ADD of {} would unpack the archive, which berth does not do: only local \
                 files are supported; COPY it and unpack it with RUN tar",
                quoted(source)
            ));
        }
    }
    Ok(())
}

/// BuildKit's heredocs (`RUN <<EOF`): a word starting with `<<` (not bash's `<<<`).
fn is_heredoc(word: &str) -> bool {
    let word = word.trim_start_matches(|c: char| c.is_ascii_digit());
    word.starts_with("<<") && !word.starts_with("<<<")
}

fn heredoc_error() -> String {
    "heredocs ('<<EOF') are not supported: put the script in a file, COPY it and RUN it".into()
}

/// Input text for a message: quoted, control characters escaped, long text shortened.
fn quoted(text: &str) -> String {
    const MAX: usize = 60;
    let mut shown = String::new();
    for c in text.chars().take(MAX) {
        if c.is_control() {
            shown.extend(c.escape_debug());
        } else {
            shown.push(c);
        }
    }
    if text.chars().count() > MAX {
        shown.push_str("...");
    }
    format!("'{shown}'")
}

#[cfg(test)]
mod tests;
