//! `berth build`: an image made from a base image by a Containerfile's steps.
//!
//! The client sends the build context as a tar stream (`git archive` of the commit it
//! resolved, or a plain directory's tree), so berthd never runs git on a user's checkout
//! and builds exactly the commit it records. berthd unpacks the context into a private
//! directory, creates a transient app machine from the base image (its PID 1 is a shell
//! waiting on a pipe that berthd holds), runs every RUN step in it as `berth exec` does
//! (the machine's namespaces, UID range and scope), writes COPY sources into its root,
//! and finally stores the root as a new image version with its lineage: base
//! name@version@digest, source, ref, git commit and the Containerfile's digest. A failed
//! step stores nothing; the build machine and the context are removed however the build
//! ends.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use thiserror::Error;
use zbus::Connection;

mod copy;

use crate::image::containerfile::{self, Step};
use crate::image::{
    self, AppDefaults, BaseImage, BuildSource, ImageError, ImageRecord, ImageRef, ImportReport,
    Pool,
};
use crate::machine::lifecycle::{self, Attach};
use crate::machine::{CreateRequest, MachineError, Machines, Mode as MachineMode};
use crate::runtime::exec::Exec;
use crate::runtime::guest_etc;

/// Where build contexts are unpacked (each in a `.#berth-build-…` directory).
pub const BUILD_DIR: &str = "/var/lib/berth/builds";

#[derive(Debug, Error)]
pub enum BuildError {
    #[error("{path}: {error}")]
    Containerfile {
        path: String,
        error: containerfile::ContainerfileError,
    },
    #[error("the build context has no {0}; give the Containerfile's path with --file")]
    NoContainerfile(String),
    #[error("step {step} ({text}): {message}")]
    Step {
        step: usize,
        text: String,
        message: String,
    },
    #[error(
        "step {step} ({text}) failed ({status}); nothing was stored (the output above says why)"
    )]
    StepFailed {
        step: usize,
        text: String,
        status: String,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> BuildError {
    let context = context.into();
    move |source| BuildError::Io { context, source }
}

/// What to build, as the client resolved it.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The new image: `NAME@VERSION`.
    pub target: String,
    /// The Containerfile's path in the context.
    pub containerfile: String,
    /// As given to `berth build` (a git URL or a local path), recorded for rebuilds.
    pub source: String,
    /// The ref asked for (`#REF`), empty for the default.
    pub reference: String,
    /// The git commit the context was made from (empty: no git).
    pub commit: String,
}

/// Where the build's progress and its steps' output go: the client's stdout and stderr.
#[derive(Debug)]
pub struct BuildOutput {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

impl BuildOutput {
    /// A progress line for the client (lost, harmlessly, when it went away).
    fn say(&self, line: &str) {
        let _ = rustix::io::write(&self.stdout, format!("{line}\n").as_bytes());
    }
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, BuildError> {
    fd.try_clone()
        .map_err(io_error("duplicating an output descriptor"))
}

/// Everything a build has made so far; removed when dropped unless kept.
struct Workspace {
    context: PathBuf,
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.context);
    }
}

/// Builds `request` from the context tar `context`.
pub async fn build(
    conn: &Connection,
    pool: &Pool,
    machines: &Machines,
    helper: PathBuf,
    request: BuildRequest,
    context: File,
    output: BuildOutput,
) -> Result<ImportReport, BuildError> {
    let target = ImageRef::parse(&request.target)?;
    if target.version.is_none() {
        return Err(ImageError::io("building")(io::Error::other("no version")).into());
    }
    let workspace = unpack_context(context).await?;
    let text = read_in_context(&workspace.context, &request.containerfile)?;
    let recipe = containerfile::parse(&text).map_err(|error| BuildError::Containerfile {
        path: request.containerfile.clone(),
        error,
    })?;
    for warning in &recipe.warnings {
        output.say(&format!("warning: {warning}"));
    }
    let (from_name, from_version) = recipe.from.clone();
    let from = match &from_version {
        Some(v) => format!("{from_name}@{v}"),
        None => from_name.clone(),
    };
    let base = pool.get(&from)?;
    // Refuse an existing target before the work, not after.
    if pool.get(&target.to_string()).is_ok() {
        return Err(ImageError::Exists(target.to_string()).into());
    }
    output.say(&format!(
        "Building {target} from {} ({} steps)",
        base.reference(),
        recipe.steps.len()
    ));

    let name = format!("build-{}", &crate::machine::generated_name()?[4..]);
    let create = CreateRequest {
        name: name.clone(),
        image: base.reference(),
        // A shell builtin waiting on a pipe berthd holds: the machine lives until the build
        // closes it, and needs nothing from the image but /bin/sh.
        mode: MachineMode::App(vec!["/bin/sh".into(), "-c".into(), "read _".into()]),
        hostname: String::new(),
        binds: Vec::new(),
        ephemeral: true,
        properties: Vec::new(),
        disk_size: None,
        timezone: guest_etc::IMAGE.into(),
        locale: guest_etc::IMAGE.into(),
        // PID 1 is root whatever the base's USER; the steps run as the recipe says.
        user: "0".into(),
        working_directory: "/".into(),
        environment: Vec::new(),
        // RUN steps reach the network as the host does (package downloads).
        network: String::new(),
        masquerade: true,
        ports: Vec::new(),
    };
    // Its root becomes the image after it stops; the build removes it, not its reaper.
    let _kept = lifecycle::KeptAfterExit::hold(&name);
    let machines_c = machines.clone();
    blocking(move || machines_c.create(&create).map(drop)).await?;
    let result = run_steps(
        conn,
        machines,
        &helper,
        &name,
        &workspace,
        &recipe.steps,
        base.record.app.clone().unwrap_or_default(),
        &output,
    )
    .await;
    let stopped = stop_build_machine(conn, machines, &name).await;
    let outcome = match (result, stopped) {
        (Ok(app), Ok(())) => {
            store(
                pool, machines, &name, &base, &target, &request, &text, from, app,
            )
            .await
        }
        (Err(e), _) | (Ok(_), Err(e)) => Err(e),
    };
    let machines_c = machines.clone();
    let _ = blocking(move || machines_c.remove(&name)).await;
    drop(workspace);
    outcome
}

/// Stores the stopped build machine's root as the new image, with its lineage.
#[allow(clippy::too_many_arguments)] // the facts of one build
async fn store(
    pool: &Pool,
    machines: &Machines,
    name: &str,
    base: &image::ImageInfo,
    target: &ImageRef,
    request: &BuildRequest,
    text: &str,
    from: String,
    app: AppDefaults,
) -> Result<ImportReport, BuildError> {
    let root = machines.root_of(name);
    let base_path = base.path.clone();
    let record = ImageRecord {
        origin: format!("build:{}", request.source),
        base: Some(BaseImage {
            name: base.name.clone(),
            version: base.version.clone(),
            digest: base.record.digest.clone(),
        }),
        build: Some(BuildSource {
            source: request.source.clone(),
            reference: request.reference.clone(),
            commit: request.commit.clone(),
            containerfile: request.containerfile.clone(),
            recipe_digest: format!("sha256:{:x}", Sha256::digest(text.as_bytes())),
            from,
        }),
        app: Some(app),
        ..ImageRecord::default()
    };
    let pool = pool.clone();
    let target = target.to_string();
    blocking(move || pool.import_machine_root(&target, &root, Some(&base_path), record)).await
}

async fn blocking<T: Send + 'static, E: Send + 'static>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, BuildError>
where
    BuildError: From<E>,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(BuildError::from),
        Err(e) => Err(BuildError::Io {
            context: "a build task".into(),
            source: io::Error::other(e.to_string()),
        }),
    }
}

/// Unpacks the context tar into a fresh private directory.
async fn unpack_context(context: File) -> Result<Workspace, BuildError> {
    fs::create_dir_all(BUILD_DIR).map_err(io_error(format!("creating {BUILD_DIR}")))?;
    let dir = Path::new(BUILD_DIR).join(format!(
        ".#berth-build-{}-{}",
        std::process::id(),
        &crate::machine::generated_name()?[4..]
    ));
    fs::create_dir(&dir).map_err(io_error(format!("creating {}", dir.display())))?;
    let workspace = Workspace { context: dir };
    let target = workspace.context.clone();
    blocking(move || image::unpack_tar(context, &target).map(drop)).await?;
    Ok(workspace)
}

fn read_in_context(context: &Path, path: &str) -> Result<String, BuildError> {
    let fd =
        copy::open_in_root(context, path).map_err(|_| BuildError::NoContainerfile(path.into()))?;
    io::read_to_string(File::from(fd)).map_err(io_error(format!("reading {path}")))
}

/// Runs the steps; returns the app defaults: the base image's (`inherited`: its ENV, WORKDIR,
/// USER, ENTRYPOINT, CMD and LABELs, as Docker inherits them) with the Containerfile's over
/// them.
#[allow(clippy::too_many_arguments)] // the facts of one build
async fn run_steps(
    conn: &Connection,
    machines: &Machines,
    helper: &Path,
    name: &str,
    workspace: &Workspace,
    steps: &[Step],
    inherited: AppDefaults,
    output: &BuildOutput,
) -> Result<AppDefaults, BuildError> {
    let (hold, keep_open) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| io_error("creating a pipe")(e.into()))?;
    let streams = [hold, dup(&output.stdout)?, dup(&output.stderr)?];
    lifecycle::start(
        conn,
        machines,
        helper.to_owned(),
        name,
        Attach::Streams(streams),
    )
    .await?;
    // PID 1 waits for EOF here; dropped when the build is done (or failed).
    let _keep_open = keep_open;
    let definition = machines.get(name)?;
    let leader = lifecycle::state(conn, name)
        .await?
        .map(|r| r.leader)
        .ok_or_else(|| MachineError::NotRunning(name.to_owned()))?;
    let mut app = inherited;
    let mut env: Vec<(String, String)> = app
        .env
        .iter()
        .filter_map(|a| a.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let mut labels: BTreeMap<String, String> = std::mem::take(&mut app.labels);
    let mut workdir = if app.working_dir.is_empty() {
        String::from("/")
    } else {
        app.working_dir.clone()
    };
    let mut user = app.user.clone();
    let mut cmd_set = false;
    let root = machines.root_of(name);
    for (index, step) in steps.iter().enumerate() {
        let number = index + 1;
        let text = describe(step);
        output.say(&format!("STEP {number}/{}: {text}", steps.len()));
        let step_error = |message: String| BuildError::Step {
            step: number,
            text: text.clone(),
            message,
        };
        match step {
            Step::Run(command) => {
                let mut config = lifecycle::exec_config(
                    &definition,
                    i32::try_from(leader).unwrap_or(0),
                    user.clone(),
                    command.argv(),
                    false,
                    Vec::new(),
                );
                config.extra_environment = env.clone();
                config.working_dir = workdir.clone();
                let null = File::open("/dev/null").map_err(io_error("opening /dev/null"))?;
                let stdio = [
                    OwnedFd::from(null),
                    dup(&output.stdout)?,
                    dup(&output.stderr)?,
                ];
                let helper = helper.to_owned();
                let status = blocking(move || {
                    Exec::start(&helper, &config, Some(stdio))
                        .and_then(Exec::wait)
                        .map_err(MachineError::from)
                })
                .await
                .map_err(|e| step_error(e.to_string()))?;
                if status.code() != 0 {
                    return Err(BuildError::StepFailed {
                        step: number,
                        text,
                        status: status.to_line(),
                    });
                }
            }
            Step::Copy {
                sources,
                dest,
                chown,
            } => {
                let dest = absolute(&workdir, dest);
                let owner = chown
                    .as_deref()
                    .map(|spec| copy::owner(&root, spec))
                    .transpose()
                    .map_err(step_error)?;
                copy::copy_into(&workspace.context, &root, sources, &dest, owner)
                    .map_err(step_error)?;
            }
            Step::Env(pairs) => {
                for (key, value) in pairs {
                    env.retain(|(k, _)| k != key);
                    env.push((key.clone(), value.clone()));
                }
            }
            Step::Workdir(dir) => {
                workdir = absolute(&workdir, dir);
                copy::make_directory(&root, &workdir).map_err(step_error)?;
            }
            Step::User(who) => who.clone_into(&mut user),
            Step::Entrypoint(command) => {
                app.entrypoint = command.argv();
                // As Docker does: a new ENTRYPOINT drops the CMD the base image had.
                if !cmd_set {
                    app.cmd.clear();
                }
            }
            Step::Cmd(command) => {
                app.cmd = command.argv();
                cmd_set = true;
            }
            Step::Label(pairs) => labels.extend(pairs.iter().cloned()),
        }
    }
    app.env = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    app.working_dir = if workdir == "/" {
        String::new()
    } else {
        workdir
    };
    app.user = user;
    app.labels = labels;
    Ok(app)
}

/// The step as the Containerfile said it, shortened for progress lines.
fn describe(step: &Step) -> String {
    let text = match step {
        Step::Run(c) => format!("RUN {}", c.argv().join(" ")),
        Step::Copy { sources, dest, .. } => format!("COPY {} {dest}", sources.join(" ")),
        Step::Env(pairs) => format!(
            "ENV {}",
            pairs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Step::Workdir(d) => format!("WORKDIR {d}"),
        Step::User(u) => format!("USER {u}"),
        Step::Entrypoint(c) => format!("ENTRYPOINT {:?}", c.argv()),
        Step::Cmd(c) => format!("CMD {:?}", c.argv()),
        Step::Label(pairs) => format!("LABEL {}", pairs.len()),
    };
    const MAX: usize = 100;
    if text.chars().count() > MAX {
        format!("{}…", text.chars().take(MAX).collect::<String>())
    } else {
        text
    }
}

/// `path` made absolute against `workdir`, as WORKDIR and COPY's destination are.
fn absolute(workdir: &str, path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{}/{path}", workdir.trim_end_matches('/'))
    }
}

/// Stops the build machine: closing its pipe ends its shell; a machine still running after
/// that is stopped as `berth stop` does.
async fn stop_build_machine(
    conn: &Connection,
    machines: &Machines,
    name: &str,
) -> Result<(), BuildError> {
    for _ in 0..50 {
        if lifecycle::state(conn, name).await?.is_none() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lifecycle::stop(conn, machines, name, Duration::from_secs(10)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_made_absolute_against_the_workdir() {
        assert_eq!(absolute("/", "app"), "/app");
        assert_eq!(absolute("/srv/", "x/y"), "/srv/x/y");
        assert_eq!(absolute("/srv", "/etc"), "/etc");
    }

    #[test]
    fn long_steps_are_shortened() {
        let step = Step::Run(containerfile::Command::Shell("x".repeat(300)));
        assert!(describe(&step).chars().count() <= 101);
    }
}
