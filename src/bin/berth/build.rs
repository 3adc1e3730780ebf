//! `berth build` and `berth rebuild`: resolve the source here, as the user, and let berthd
//! build from its tree.

use std::os::fd::AsFd;
use std::process::ExitCode;

use anyhow::{Context, bail};
use berth::api::{ImportResult, ManagerProxy};
use berth::image::version;
use berth::source::{self, Resolved};

/// Builds `spec` as image `name` (version `version`, else the commit's date and hash).
pub async fn build(
    manager: &ManagerProxy<'_>,
    spec: &str,
    name: &str,
    version: Option<String>,
    file: Option<String>,
) -> anyhow::Result<ImportResult> {
    let resolved = source::resolve(spec)?;
    if resolved.is_dirty() {
        eprintln!(
            "berth: warning: {} has uncommitted changes; they are not built (commit them first)",
            resolved.source
        );
    }
    let version = match version {
        Some(v) => v,
        None => free_version(manager, name, &resolved.default_version).await?,
    };
    let containerfile = match file {
        Some(file) => file,
        None => default_containerfile(&resolved),
    };
    run_build(manager, &resolved, name, &version, &containerfile).await
}

async fn run_build(
    manager: &ManagerProxy<'_>,
    resolved: &Resolved,
    name: &str,
    version: &str,
    containerfile: &str,
) -> anyhow::Result<ImportResult> {
    let mut archive = resolved.archive()?;
    let context = archive
        .stdout
        .take()
        .context("the source's tar stream has no output")?;
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let result = manager
        .build_image(
            context.as_fd().into(),
            containerfile,
            name,
            version,
            (&resolved.source, &resolved.reference, &resolved.commit),
            stdout.as_fd().into(),
            stderr.as_fd().into(),
        )
        .await;
    drop(context);
    let archived = archive.wait();
    let result = result?;
    match archived {
        Ok(status) if status.success() => Ok(result),
        Ok(status) => bail!("making the source's tar stream failed ({status})"),
        Err(e) => bail!("waiting for the source's tar stream: {e}"),
    }
}

/// `Containerfile` when the tree has one, else `Dockerfile` (looked up in the tree berthd
/// gets; a plain directory is looked at directly).
fn default_containerfile(resolved: &Resolved) -> String {
    if resolved.has_file("Containerfile") || !resolved.has_file("Dockerfile") {
        "Containerfile".into()
    } else {
        "Dockerfile".into()
    }
}

/// `wanted`, or `wanted.N` for the first N not taken (a rebuild of the same commit on a
/// newer base).
async fn free_version(
    manager: &ManagerProxy<'_>,
    name: &str,
    wanted: &str,
) -> anyhow::Result<String> {
    let taken: Vec<String> = manager
        .list_images()
        .await?
        .into_iter()
        .filter(|i| i.name == name)
        .map(|i| i.version)
        .collect();
    let mut candidate = wanted.to_owned();
    let mut n = 1;
    while taken.contains(&candidate) {
        candidate = format!("{wanted}.{n}");
        n += 1;
    }
    Ok(candidate)
}

/// Rebuilds image `name` when its source's ref or its base image moved.
pub async fn rebuild(manager: &ManagerProxy<'_>, name: &str) -> anyhow::Result<ExitCode> {
    let (current, source, reference, commit, containerfile, from, base_version) =
        manager.image_build(name).await?;
    if source.is_empty() {
        bail!(
            "image '{name}' was not made by 'berth build', so berth can't build it again; build it with 'berth build SOURCE --name {name}'"
        );
    }
    let spec = if reference.is_empty() {
        source.clone()
    } else {
        format!("{source}#{reference}")
    };
    let resolved = source::resolve(&spec)?;
    let mut reasons = Vec::new();
    if resolved.commit != commit {
        reasons.push(format!(
            "{spec} moved from {} to {}",
            short(&commit),
            short(&resolved.commit)
        ));
    }
    // A FROM without a version follows the base image's newest version.
    if !from.contains('@') {
        let newest = manager
            .list_images()
            .await?
            .into_iter()
            .find(|i| i.name == from)
            .map(|i| i.version)
            .unwrap_or_default();
        if !newest.is_empty() && version::compare(&newest, &base_version).is_gt() {
            reasons.push(format!(
                "its base {from} has a newer version, {newest} (built on {base_version})"
            ));
        }
    }
    if reasons.is_empty() {
        println!(
            "Image '{name}@{current}' is up to date: {spec} is still at {} and its base {from} has no newer version.",
            short(&commit)
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("Rebuilding image '{name}': {}.", reasons.join("; "));
    let version = free_version(manager, name, &resolved.default_version).await?;
    let result = run_build(manager, &resolved, name, &version, &containerfile).await?;
    super::report_import(&result);
    Ok(ExitCode::SUCCESS)
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}
