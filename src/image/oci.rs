//! Importing a container image (an OCI image layout or a `docker save` archive) as one flattened
//! root filesystem.
//!
//! The outer archive is read once, in order. The files an image may need are stored in a scratch
//! directory under names of our own (never a path taken from the archive) and hashed as they are
//! stored. The manifest then names the config and the layers; every file whose name is its
//! digest (`blobs/sha256/HEX`, docker's `HEX.json`) is checked against it, and each layer's
//! uncompressed content against the config's `rootfs.diff_ids`.
//!
//! Layers are applied in order, each in two passes: the first reads the layer's whiteouts and
//! verifies its diff_id, then deletes what they hide in the lower layers; the second extracts
//! the layer's other entries with [`tar_import`]'s confinement rules.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::tree::{EntryError, RefuseReason, TreePath, TreeWriter};
use super::{ImageError, source, tar_import};

/// Manifests, indexes and configs are small; a bigger one is not an image's.
const MAX_JSON_BYTES: u64 = 16 * 1024 * 1024;
/// Image indexes nested deeper than this are refused.
const MAX_INDEX_DEPTH: usize = 4;
/// Symlinks between archive entries followed at most (docker links duplicate layers once).
const MAX_LINK_HOPS: usize = 8;
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// `.wh..wh..opq` without the whiteout prefix.
const OPAQUE_MARKER: &[u8] = b".wh..opq";

const IMAGE_CONFIG_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];
/// Layer media types whose blob is a tar stream, plain or compressed; the compression itself is
/// told by the blob's first bytes.
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

#[derive(Debug, Error)]
pub enum OciError {
    #[error(
        "the archive is neither an OCI image layout (it has no index.json) nor a 'docker save' archive (it has no manifest.json); import a plain root filesystem tarball with 'berth import-tar'"
    )]
    NotAnImage,
    #[error("{what} '{path}' is not in the archive; the image is incomplete")]
    Missing { what: String, path: String },
    #[error(
        "{what} '{path}' does not match its digest {expected} (its content hashes to sha256:{actual}); the archive is corrupt or was tampered with"
    )]
    DigestMismatch {
        what: String,
        path: String,
        expected: String,
        actual: String,
    },
    #[error(
        "{what} has the digest '{digest}', which is not 'sha256:' and 64 hex digits; berth verifies sha256 digests only"
    )]
    UnsupportedDigest { what: String, digest: String },
    #[error("{what} '{path}' is not valid JSON of the expected form: {source}")]
    BadJson {
        what: String,
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} '{path}' is {size} bytes, too large for image metadata")]
    JsonTooLarge {
        what: String,
        path: String,
        size: u64,
    },
    #[error("{what} '{path}' is neither an image manifest nor an image index")]
    NotAManifest { what: String, path: String },
    #[error("{0} lists no image")]
    NoImage(String),
    #[error(
        "manifest.json lists {0} images; save just one (e.g. 'docker save IMAGE:TAG -o FILE') and import that"
    )]
    SeveralImages(usize),
    #[error(
        "{index} has no image for this machine's platform {host} and more than one to choose from: {available}"
    )]
    NoMatchingPlatform {
        index: String,
        host: String,
        available: String,
    },
    #[error("image indexes are nested more than {MAX_INDEX_DEPTH} deep")]
    IndexTooDeep,
    #[error(
        "the image config has media type '{0}': this is not a container image (an artifact such as a Helm chart, or a signature?)"
    )]
    NotAContainerImage(String),
    #[error("{what} has media type '{media_type}', which berth cannot unpack")]
    UnsupportedLayer { what: String, media_type: String },
    #[error(
        "the image config lists {diff_ids} layer digests (rootfs.diff_ids) for {layers} layers; the image is inconsistent"
    )]
    LayerCountMismatch { diff_ids: usize, layers: usize },
    #[error(
        "{what} '{path}' is not a readable tar archive (or it is truncated): {}",
        super::printable(.source)
    )]
    LayerNotATar {
        what: String,
        path: String,
        #[source]
        source: io::Error,
    },
}

/// How an image wants to be run: its config's `config` object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

/// What [`import_archive`] imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciImage {
    pub config: OciConfig,
    /// "oci" (an OCI image layout, which newer `docker save` writes too) or "docker" (a
    /// `docker save` manifest.json only).
    pub format: &'static str,
    /// `sha256:HEX` of the image manifest used; for "docker", of manifest.json.
    pub manifest_digest: String,
    /// `sha256:HEX` of the image config: what docker calls the image ID.
    pub config_digest: String,
    pub layers: usize,
}

/// Reads an OCI image layout tarball or a `docker save` archive (either possibly gzip, xz or
/// zstd compressed) from `input` and writes the flattened root filesystem into `tree`.
/// `scratch` is an empty private directory on the same filesystem for the archive's files; the
/// caller deletes it afterwards.
pub fn import_archive(
    input: impl Read,
    tree: &mut TreeWriter,
    scratch: &Path,
) -> Result<OciImage, ImageError> {
    let archive = StoredArchive::read(input, scratch)?;
    if archive.contains("index.json") {
        import_oci(&archive, tree)
    } else if archive.contains("manifest.json") {
        import_docker(&archive, tree)
    } else {
        Err(OciError::NotAnImage.into())
    }
}

fn import_oci(archive: &StoredArchive, tree: &mut TreeWriter) -> Result<OciImage, ImageError> {
    let mut what = "the image index".to_owned();
    let mut path = "index.json".to_owned();
    for _ in 0..=MAX_INDEX_DEPTH {
        let (document, digest): (ManifestOrIndex, String) = archive.read_json(&what, &path)?;
        match (document.manifests, document.config) {
            (Some(manifests), _) => {
                let chosen = choose_manifest(&path, &manifests)?;
                what = format!("the manifest {}", chosen.digest);
                path = blob_path(&what, &chosen.digest)?;
            }
            (None, Some(config)) => {
                let layers = document.layers;
                for (i, layer) in layers.iter().enumerate() {
                    if !LAYER_TYPES.contains(&layer.media_type.as_str()) {
                        return Err(OciError::UnsupportedLayer {
                            what: format!("layer {} ({})", i + 1, layer.digest),
                            media_type: layer.media_type.clone(),
                        }
                        .into());
                    }
                }
                if !config.media_type.is_empty()
                    && !IMAGE_CONFIG_TYPES.contains(&config.media_type.as_str())
                {
                    return Err(OciError::NotAContainerImage(config.media_type).into());
                }
                let config_path = blob_path("the image config", &config.digest)?;
                let layer_paths = layers
                    .iter()
                    .enumerate()
                    .map(|(i, layer)| blob_path(&format!("layer {}", i + 1), &layer.digest))
                    .collect::<Result<Vec<_>, _>>()?;
                let (config, config_digest) =
                    apply_image(archive, tree, &config_path, &layer_paths)?;
                return Ok(OciImage {
                    config,
                    format: "oci",
                    manifest_digest: digest,
                    config_digest,
                    layers: layer_paths.len(),
                });
            }
            (None, None) => return Err(OciError::NotAManifest { what, path }.into()),
        }
    }
    Err(OciError::IndexTooDeep.into())
}

fn import_docker(archive: &StoredArchive, tree: &mut TreeWriter) -> Result<OciImage, ImageError> {
    let (entries, manifest_digest): (Vec<DockerManifestEntry>, String) =
        archive.read_json("the docker manifest", "manifest.json")?;
    let entry = match entries.as_slice() {
        [one] => one,
        [] => return Err(OciError::NoImage("manifest.json".into()).into()),
        several => return Err(OciError::SeveralImages(several.len()).into()),
    };
    let named = |what: &str, raw: &str| {
        normalize(raw.as_bytes()).ok_or_else(|| OciError::Missing {
            what: what.to_owned(),
            path: raw.to_owned(),
        })
    };
    let config_path = named("the image config", &entry.config)?;
    let layer_paths = entry
        .layers
        .iter()
        .enumerate()
        .map(|(i, raw)| named(&format!("layer {}", i + 1), raw))
        .collect::<Result<Vec<_>, _>>()?;
    let (config, config_digest) = apply_image(archive, tree, &config_path, &layer_paths)?;
    Ok(OciImage {
        config,
        format: "docker",
        manifest_digest,
        config_digest,
        layers: layer_paths.len(),
    })
}

/// Reads the image config and applies the layers in order; returns the run configuration and
/// the config's digest.
fn apply_image(
    archive: &StoredArchive,
    tree: &mut TreeWriter,
    config_path: &str,
    layer_paths: &[String],
) -> Result<(OciConfig, String), ImageError> {
    let (image, config_digest): (ImageConfig, String) =
        archive.read_json("the image config", config_path)?;
    let diff_ids = image.rootfs.and_then(|r| r.diff_ids).unwrap_or_default();
    if !diff_ids.is_empty() && diff_ids.len() != layer_paths.len() {
        return Err(OciError::LayerCountMismatch {
            diff_ids: diff_ids.len(),
            layers: layer_paths.len(),
        }
        .into());
    }
    for (i, path) in layer_paths.iter().enumerate() {
        let what = format!("layer {}", i + 1);
        apply_layer(
            archive,
            tree,
            &what,
            path,
            diff_ids.get(i).map(String::as_str),
        )?;
    }
    let run = image.config.unwrap_or_default();
    let config = OciConfig {
        entrypoint: run.entrypoint.unwrap_or_default(),
        cmd: run.cmd.unwrap_or_default(),
        env: run.env.unwrap_or_default(),
        working_dir: run.working_dir.unwrap_or_default(),
        user: run.user.unwrap_or_default(),
    };
    Ok((config, config_digest))
}

/// One layer, in two passes over its (decompressed) blob; see the module comment.
fn apply_layer(
    archive: &StoredArchive,
    tree: &mut TreeWriter,
    what: &str,
    path: &str,
    diff_id: Option<&str>,
) -> Result<(), ImageError> {
    let stored = archive.verified(what, path)?;
    let not_a_tar = |source: io::Error| OciError::LayerNotATar {
        what: what.to_owned(),
        path: path.to_owned(),
        source,
    };

    let mut hashed = HashingReader::new(open_layer(&stored.path)?);
    let whiteouts = read_whiteouts(&mut hashed).map_err(not_a_tar)?;
    io::copy(&mut hashed, &mut io::sink()).map_err(not_a_tar)?;
    let actual = hashed.finish();
    if let Some(diff_id) = diff_id {
        let expected = digest_hex(&format!("{what}'s diff_id"), diff_id)?;
        if actual != expected {
            return Err(OciError::DigestMismatch {
                what: format!("the uncompressed {what}"),
                path: path.to_owned(),
                expected: diff_id.to_owned(),
                actual,
            }
            .into());
        }
    }
    for (shown, whiteout) in whiteouts {
        let result = match &whiteout {
            Ok(Whiteout::Remove(target)) => tree.remove(target),
            Ok(Whiteout::Opaque(dir)) => tree.empty_dir(dir),
            Err(reason) => Err(EntryError::Refused(reason.clone())),
        };
        tree.settle(&shown, result)
            .map_err(ImageError::io(format!("applying the whiteouts of {what}")))?;
    }

    let mut layer = tar::Archive::new(open_layer(&stored.path)?);
    let entries = layer.entries().map_err(not_a_tar)?;
    for entry in entries {
        let mut entry = entry.map_err(not_a_tar)?;
        let raw = entry.path_bytes().into_owned();
        if whiteout(&raw).is_some() {
            continue;
        }
        if raw
            .split(|b| *b == b'/')
            .any(|part| part.starts_with(WHITEOUT_PREFIX))
        {
            // The prefix is reserved: nothing named so may appear in the image.
            tree.refuse(String::from_utf8_lossy(&raw), RefuseReason::ReservedName);
            continue;
        }
        tar_import::write_entry(&mut entry, tree).map_err(|e| match e {
            ImageError::NotATar(source) => not_a_tar(source).into(),
            other => other,
        })?;
    }
    Ok(())
}

/// The whiteouts of one layer, with their paths as the layer names them.
type LayerWhiteouts = Vec<(String, Result<Whiteout, RefuseReason>)>;

fn read_whiteouts(layer: &mut impl Read) -> io::Result<LayerWhiteouts> {
    let mut whiteouts = Vec::new();
    let mut archive = tar::Archive::new(layer);
    for entry in archive.entries()? {
        let entry = entry?;
        let raw = entry.path_bytes();
        if let Some(whiteout) = whiteout(&raw) {
            whiteouts.push((String::from_utf8_lossy(&raw).into_owned(), whiteout));
        }
    }
    Ok(whiteouts)
}

/// What a whiteout entry hides from the lower layers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Whiteout {
    /// `DIR/.wh.NAME`: DIR/NAME, a file or a whole tree.
    Remove(TreePath),
    /// `DIR/.wh..wh..opq`: everything in DIR.
    Opaque(TreePath),
}

/// Whether a layer entry is a whiteout (by its name) and, if so, what it hides.
fn whiteout(raw: &[u8]) -> Option<Result<Whiteout, RefuseReason>> {
    let name = raw
        .split(|b| *b == b'/')
        .rfind(|part| !part.is_empty() && *part != b".")?;
    let hidden = name.strip_prefix(WHITEOUT_PREFIX)?;
    let path = match TreePath::parse(raw) {
        Ok(path) => path,
        Err(reason) => return Some(Err(reason)),
    };
    let dir = path.parent()?;
    Some(match hidden {
        OPAQUE_MARKER => Ok(Whiteout::Opaque(dir)),
        b".." => Err(RefuseReason::DotDot),
        b"" | b"." => Err(RefuseReason::ReservedName),
        hidden => Ok(Whiteout::Remove(
            dir.join(std::ffi::OsStr::from_bytes(hidden)),
        )),
    })
}

/// A layer blob, decompressed as its first bytes say; an empty file is an empty layer.
fn open_layer(path: &Path) -> Result<Box<dyn Read>, ImageError> {
    let file = File::open(path).map_err(ImageError::io(format!("opening {}", path.display())))?;
    let len = file
        .metadata()
        .map_err(ImageError::io(format!("reading {}", path.display())))?
        .len();
    if len == 0 {
        return Ok(Box::new(io::empty()));
    }
    source::decompress(file)
}

/// The image for this machine's platform in an image index (docker: manifest list), else its
/// only image.
fn choose_manifest<'d>(
    index: &str,
    manifests: &'d [Descriptor],
) -> Result<&'d Descriptor, OciError> {
    let (os, architecture) = host_platform();
    let matching = manifests.iter().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == os && p.architecture == architecture)
    });
    if let Some(chosen) = matching {
        return Ok(chosen);
    }
    match manifests {
        [only] => Ok(only),
        [] => Err(OciError::NoImage(index.to_owned())),
        several => {
            let available: Vec<String> = several
                .iter()
                .map(|d| match &d.platform {
                    Some(p) => match &p.variant {
                        Some(variant) => format!("{}/{}/{variant}", p.os, p.architecture),
                        None => format!("{}/{}", p.os, p.architecture),
                    },
                    None => format!("{} (no platform)", d.digest),
                })
                .collect();
            Err(OciError::NoMatchingPlatform {
                index: index.to_owned(),
                host: format!("{os}/{architecture}"),
                available: available.join(", "),
            })
        }
    }
}

/// This machine's platform as OCI names it (GOOS/GOARCH).
fn host_platform() -> (&'static str, &'static str) {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "loongarch64" => "loong64",
        "mips64" if cfg!(target_endian = "little") => "mips64le",
        other => other,
    };
    ("linux", architecture)
}

/// Where an OCI layout keeps the blob with `digest`.
fn blob_path(what: &str, digest: &str) -> Result<String, OciError> {
    Ok(format!("blobs/sha256/{}", digest_hex(what, digest)?))
}

/// The hex of a `sha256:HEX` digest.
fn digest_hex(what: &str, digest: &str) -> Result<String, OciError> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if is_sha256_hex(hex) => Ok(hex.to_owned()),
        _ => Err(OciError::UnsupportedDigest {
            what: what.to_owned(),
            digest: digest.to_owned(),
        }),
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The digest a file's archive path names: `blobs/sha256/HEX`, or docker's config `HEX.json`.
fn named_digest(path: &str) -> Option<&str> {
    let hex = path
        .strip_prefix("blobs/sha256/")
        .or_else(|| path.strip_suffix(".json"))?;
    is_sha256_hex(hex).then_some(hex)
}

/// An archive path without `.` and empty components; `None` for absolute paths and `..`, which
/// name nothing the archive can hold.
fn normalize(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    if text.starts_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            part => parts.push(part),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// The archive path a symlink at `link` pointing at `target` names; `None` when it leaves the
/// archive.
fn resolve_symlink(link: &str, target: &[u8]) -> Option<String> {
    let target = std::str::from_utf8(target).ok()?;
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Whether an archive entry may be part of an image's metadata or layers.
fn wanted(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        // skopeo and podman write docker archives with `HEX.tar` layers.
        [name] => name.ends_with(".json") || name.ends_with(".tar"),
        ["blobs", "sha256", hex] => is_sha256_hex(hex),
        [_, "layer.tar"] => true,
        _ => false,
    }
}

/// One file kept from the outer archive.
#[derive(Debug)]
struct StoredFile {
    path: PathBuf,
    sha256: String,
}

/// The outer archive's files that an image may need, stored in the scratch directory.
#[derive(Debug)]
struct StoredArchive {
    /// Archive path → its stored content.
    files: HashMap<String, StoredFile>,
    /// Archive path of a symlink or hard link → the archive path it names (`docker save` links
    /// a layer.tar that an earlier image ID already holds).
    links: HashMap<String, String>,
}

impl StoredArchive {
    fn read(input: impl Read, scratch: &Path) -> Result<Self, ImageError> {
        let mut stored = Self {
            files: HashMap::new(),
            links: HashMap::new(),
        };
        let mut archive = tar::Archive::new(source::decompress(input)?);
        let entries = archive.entries().map_err(ImageError::not_a_tar)?;
        let mut buffer = vec![0; 256 * 1024];
        let mut stored_count = 0usize;
        for entry in entries {
            let mut entry = entry.map_err(ImageError::not_a_tar)?;
            let Some(path) = normalize(&entry.path_bytes()).filter(|p| wanted(p)) else {
                continue;
            };
            let link = entry.link_name_bytes().map(|l| l.into_owned());
            match (entry.header().entry_type(), link) {
                (tar::EntryType::Regular | tar::EntryType::Continuous, _) => {
                    let file = scratch.join(format!("file-{stored_count}"));
                    stored_count += 1;
                    let sha256 = store(&mut entry, &file, &mut buffer)?;
                    stored.links.remove(&path);
                    let replaced = stored.files.insert(path, StoredFile { path: file, sha256 });
                    if let Some(replaced) = replaced {
                        let _ = fs::remove_file(replaced.path);
                    }
                }
                (tar::EntryType::Symlink, Some(target)) => {
                    if let Some(target) = resolve_symlink(&path, &target) {
                        stored.add_link(path, target);
                    }
                }
                (tar::EntryType::Link, Some(target)) => {
                    if let Some(target) = normalize(&target) {
                        stored.add_link(path, target);
                    }
                }
                _ => {}
            }
        }
        Ok(stored)
    }

    fn add_link(&mut self, path: String, target: String) {
        // A hard link names the file as it is now; a later entry replacing the target must not
        // change it, but nothing in an image archive does that.
        if let Some(replaced) = self.files.remove(&path) {
            let _ = fs::remove_file(replaced.path);
        }
        self.links.insert(path, target);
    }

    fn get(&self, path: &str) -> Option<&StoredFile> {
        let mut path = path;
        for _ in 0..=MAX_LINK_HOPS {
            if let Some(file) = self.files.get(path) {
                return Some(file);
            }
            path = self.links.get(path)?;
        }
        None
    }

    fn contains(&self, path: &str) -> bool {
        self.get(path).is_some()
    }

    /// The stored file at `path`, checked against the digest its name says, if any.
    fn verified(&self, what: &str, path: &str) -> Result<&StoredFile, OciError> {
        let file = self.get(path).ok_or_else(|| OciError::Missing {
            what: what.to_owned(),
            path: path.to_owned(),
        })?;
        if let Some(expected) = named_digest(path)
            && file.sha256 != expected
        {
            return Err(OciError::DigestMismatch {
                what: what.to_owned(),
                path: path.to_owned(),
                expected: format!("sha256:{expected}"),
                actual: file.sha256.clone(),
            });
        }
        Ok(file)
    }

    /// A JSON document and its digest (`sha256:HEX`).
    fn read_json<T: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
    ) -> Result<(T, String), ImageError> {
        let file = self.verified(what, path)?;
        let context = || format!("reading {what} '{path}'");
        let size = fs::metadata(&file.path)
            .map_err(ImageError::io(context()))?
            .len();
        if size > MAX_JSON_BYTES {
            return Err(OciError::JsonTooLarge {
                what: what.to_owned(),
                path: path.to_owned(),
                size,
            }
            .into());
        }
        let bytes = fs::read(&file.path).map_err(ImageError::io(context()))?;
        let document = serde_json::from_slice(&bytes).map_err(|source| OciError::BadJson {
            what: what.to_owned(),
            path: path.to_owned(),
            source,
        })?;
        Ok((document, format!("sha256:{}", file.sha256)))
    }
}

/// Copies an archive entry into a new file at `path`; returns its sha256.
fn store(entry: &mut impl Read, path: &Path, buffer: &mut [u8]) -> Result<String, ImageError> {
    let context = || format!("storing the archive's files in {}", path.display());
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(ImageError::io(context()))?;
    let mut hasher = Sha256::new();
    loop {
        let n = match entry.read(buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ImageError::not_a_tar(e)),
        };
        hasher.update(&buffer[..n]);
        file.write_all(&buffer[..n])
            .map_err(ImageError::io(context()))?;
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hashes what is read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// The hex sha256 of everything read.
    fn finish(self) -> String {
        hex(&self.hasher.finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

/// An image manifest (config and layers) or an image index (manifests), told apart by which
/// fields it has: a descriptor's media type is not always there to say.
#[derive(Debug, Deserialize)]
struct ManifestOrIndex {
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// One image in a `docker save` manifest.json.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    layers: Vec<String>,
}

/// The parts of an image config berth uses.
#[derive(Debug, Deserialize)]
struct ImageConfig {
    #[serde(default)]
    config: Option<RunConfig>,
    #[serde(default)]
    rootfs: Option<RootFs>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Option<Vec<String>>,
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::Path;

    use serde_json::{Value, json};
    use tar::{EntryType, Header};
    use tempfile::TempDir;

    use super::super::Compression;
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    /// Appends an entry with exactly these name bytes (the tar crate's setters refuse `..`).
    fn raw(b: &mut tar::Builder<Vec<u8>>, name: &[u8], kind: EntryType, link: &[u8], data: &[u8]) {
        let mut header = Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        header.set_entry_type(kind);
        header.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header.set_size(data.len() as u64);
        header.set_cksum();
        b.append(&header, data).expect("append");
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
        raw(b, name.as_bytes(), EntryType::Regular, b"", data);
    }

    fn dir(b: &mut tar::Builder<Vec<u8>>, name: &str) {
        raw(b, name.as_bytes(), EntryType::Directory, b"", b"");
    }

    fn tar(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        builder.into_inner().expect("finish tar")
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(bytes).expect("gzip");
        gz.finish().expect("gzip")
    }

    fn uncompressed(blob: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        source::decompress(blob)
            .expect("decompress")
            .read_to_end(&mut out)
            .expect("decompress");
        out
    }

    /// An OCI image layout being built: its blobs by archive path.
    #[derive(Default)]
    struct Layout {
        blobs: Vec<(String, Vec<u8>)>,
    }

    impl Layout {
        fn blob(&mut self, bytes: Vec<u8>) -> String {
            let hex = sha(&bytes);
            self.blobs.push((format!("blobs/sha256/{hex}"), bytes));
            format!("sha256:{hex}")
        }

        fn json(&mut self, value: &Value) -> String {
            self.blob(serde_json::to_vec(value).expect("json"))
        }

        /// An image manifest of `config` (its rootfs filled in) and `layers` (plain or gzip
        /// tar blobs); returns its descriptor.
        fn image(&mut self, mut config: Value, layers: &[Vec<u8>]) -> Value {
            let diff_ids: Vec<String> = layers
                .iter()
                .map(|l| format!("sha256:{}", sha(&uncompressed(l))))
                .collect();
            config["rootfs"] = json!({"type": "layers", "diff_ids": diff_ids});
            let layers: Vec<Value> = layers
                .iter()
                .map(|l| {
                    let media_type = match Compression::detect(l) {
                        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
                        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
                        _ => "application/vnd.oci.image.layer.v1.tar",
                    };
                    json!({"mediaType": media_type, "digest": self.blob(l.clone()), "size": l.len()})
                })
                .collect();
            let config = self.json(&config);
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 1},
                "layers": layers,
            });
            let digest = self.json(&manifest);
            json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": 1})
        }

        fn archive(&self, index: &Value) -> Vec<u8> {
            tar(|b| {
                file(b, "./oci-layout", br#"{"imageLayoutVersion": "1.0.0"}"#);
                let index = serde_json::to_vec(index).expect("json");
                file(b, "./index.json", &index);
                dir(b, "./blobs/");
                dir(b, "./blobs/sha256/");
                for (path, bytes) in &self.blobs {
                    file(b, &format!("./{path}"), bytes);
                }
            })
        }
    }

    fn index(manifests: &[Value]) -> Value {
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests})
    }

    struct Imported {
        dir: TempDir,
        root: PathBuf,
        result: Result<OciImage, ImageError>,
        refused: Vec<String>,
    }

    fn import(archive: &[u8]) -> Imported {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let scratch = dir.path().join("scratch");
        fs::create_dir(&root).expect("root");
        fs::create_dir(&scratch).expect("scratch");
        let fd = rustix::fs::open(
            &root,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .expect("open root");
        let mut tree = TreeWriter::new(fd);
        let result = import_archive(archive, &mut tree, &scratch);
        let refused = tree
            .finish()
            .expect("finish")
            .iter()
            .map(ToString::to_string)
            .collect();
        Imported {
            dir,
            root,
            result,
            refused,
        }
    }

    /// Every path below `root`, sorted.
    fn listing(root: &Path) -> Vec<String> {
        fn walk(root: &Path, at: &Path, out: &mut Vec<String>) {
            for entry in fs::read_dir(at).expect("read_dir").flatten() {
                let path = entry.path();
                let relative = path.strip_prefix(root).expect("below root");
                out.push(relative.to_string_lossy().into_owned());
                if entry.file_type().expect("type").is_dir() {
                    walk(root, &path, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(root, root, &mut out);
        out.sort();
        out
    }

    fn run_config() -> Value {
        json!({
            "architecture": host_platform().1,
            "os": "linux",
            "config": {
                "Entrypoint": ["/bin/app"],
                "Cmd": ["--serve", "8080"],
                "Env": ["PATH=/usr/bin:/bin", "MODE=prod"],
                "WorkingDir": "/srv",
                "User": "1000:1000",
                "Labels": {"ignored": "yes"},
            },
        })
    }

    #[test]
    fn oci_layout_applies_whiteouts_and_opaque_directories() {
        let lower = gzip(&tar(|b| {
            dir(b, "./");
            dir(b, "etc/");
            file(b, "etc/keep", b"kept");
            file(b, "etc/gone", b"whited out");
            dir(b, "opt/");
            file(b, "opt/old", b"lower");
            dir(b, "opt/sub/");
            file(b, "opt/sub/old2", b"lower");
            dir(b, "var/cache/a/");
            file(b, "var/cache/a/f", b"lower");
        }));
        let upper = tar(|b| {
            // Before the opaque marker on purpose: an entry of the same layer stays either way.
            file(b, "opt/new", b"upper");
            file(b, "opt/.wh..wh..opq", b"");
            dir(b, "opt/newdir/");
            file(b, "opt/newdir/x", b"upper");
            file(b, "etc/.wh.gone", b"");
            file(b, "var/.wh.cache", b"");
        });
        let upper = zstd::encode_all(&upper[..], 1).expect("zstd");
        let mut layout = Layout::default();
        let image = layout.image(run_config(), &[lower, upper]);
        let imported = import(&layout.archive(&index(std::slice::from_ref(&image))));
        let result = imported.result.expect("import");

        assert_eq!(
            listing(&imported.root),
            [
                "etc",
                "etc/keep",
                "opt",
                "opt/new",
                "opt/newdir",
                "opt/newdir/x",
                "var"
            ]
        );
        assert_eq!(
            fs::read(imported.root.join("etc/keep")).expect("keep"),
            b"kept"
        );
        assert_eq!(
            fs::read(imported.root.join("opt/new")).expect("new"),
            b"upper"
        );
        assert!(imported.refused.is_empty(), "{:?}", imported.refused);
        assert_eq!(result.format, "oci");
        assert_eq!(result.layers, 2);
        assert_eq!(result.manifest_digest, image["digest"]);
        assert_eq!(
            result.config,
            OciConfig {
                entrypoint: vec!["/bin/app".into()],
                cmd: vec!["--serve".into(), "8080".into()],
                env: vec!["PATH=/usr/bin:/bin".into(), "MODE=prod".into()],
                working_dir: "/srv".into(),
                user: "1000:1000".into(),
            }
        );
    }

    /// A legacy `docker save` archive: `ID/layer.tar` layers (the third a symlink to the first,
    /// as docker writes a repeated layer), `HEX.json` config, gzip-compressed as a whole.
    fn docker_archive(tamper_diff_id: bool, entries: usize) -> (Vec<u8>, String, String) {
        let first = tar(|b| {
            file(b, "a", b"one");
            dir(b, "d/");
            file(b, "d/x", b"x");
        });
        let second = tar(|b| {
            file(b, ".wh.a", b"");
            file(b, "d/y", b"y");
        });
        let mut diff_ids = vec![
            format!("sha256:{}", sha(&first)),
            format!("sha256:{}", sha(&second)),
            format!("sha256:{}", sha(&first)),
        ];
        if tamper_diff_id {
            diff_ids[1] = format!("sha256:{}", sha(b"something else"));
        }
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/init"], "Cmd": null, "Env": null},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .expect("json");
        let config_name = format!("{}.json", sha(&config));
        let entry = json!({
            "Config": config_name,
            "RepoTags": ["example:latest"],
            "Layers": ["1111/layer.tar", "2222/layer.tar", "3333/layer.tar"],
        });
        let manifest = serde_json::to_vec(&vec![entry; entries]).expect("json");
        let archive = tar(|b| {
            for id in ["1111", "2222", "3333"] {
                dir(b, &format!("{id}/"));
                file(b, &format!("{id}/VERSION"), b"1.0");
                file(b, &format!("{id}/json"), b"{}");
            }
            file(b, "1111/layer.tar", &first);
            file(b, "2222/layer.tar", &second);
            raw(
                b,
                b"3333/layer.tar",
                EntryType::Symlink,
                b"../1111/layer.tar",
                b"",
            );
            file(b, &config_name, &config);
            file(b, "manifest.json", &manifest);
            file(b, "repositories", br#"{"example":{"latest":"3333"}}"#);
        });
        (
            gzip(&archive),
            format!("sha256:{}", sha(&manifest)),
            format!("sha256:{}", sha(&config)),
        )
    }

    #[test]
    fn docker_save_archive() {
        let (archive, manifest_digest, config_digest) = docker_archive(false, 1);
        let imported = import(&archive);
        let result = imported.result.expect("import");
        assert_eq!(listing(&imported.root), ["a", "d", "d/x", "d/y"]);
        assert_eq!(fs::read(imported.root.join("a")).expect("a"), b"one");
        assert!(imported.refused.is_empty(), "{:?}", imported.refused);
        assert_eq!(
            result,
            OciImage {
                config: OciConfig {
                    entrypoint: vec!["/init".into()],
                    ..OciConfig::default()
                },
                format: "docker",
                manifest_digest,
                config_digest,
                layers: 3,
            }
        );
    }

    #[test]
    fn docker_layer_not_matching_its_diff_id_is_refused() {
        let (archive, _, _) = docker_archive(true, 1);
        let err = import(&archive).result.expect_err("tampered layer");
        let message = err.to_string();
        assert!(
            matches!(err, ImageError::Oci(OciError::DigestMismatch { .. })),
            "{err:?}"
        );
        assert!(
            message.contains("the uncompressed layer 2 '2222/layer.tar'"),
            "{message}"
        );
    }

    #[test]
    fn docker_archive_of_several_images_is_refused() {
        let (archive, _, _) = docker_archive(false, 2);
        let err = import(&archive).result.expect_err("two images");
        assert!(
            err.to_string().contains("lists 2 images; save just one"),
            "{err}"
        );
    }

    #[test]
    fn nested_index_chooses_the_host_platform() {
        let mut layout = Layout::default();
        let platform_image = |layout: &mut Layout, which: &str, os: &str, arch: &str| {
            let layer = gzip(&tar(|b| file(b, "which", which.as_bytes())));
            let mut descriptor = layout.image(run_config(), &[layer]);
            descriptor["platform"] = json!({"os": os, "architecture": arch});
            descriptor
        };
        let (_, host_arch) = host_platform();
        let other = platform_image(&mut layout, "other", "linux", "not-this-arch");
        let host = platform_image(&mut layout, "host", "linux", host_arch);
        let attestation = platform_image(&mut layout, "attestation", "unknown", "unknown");
        let nested = layout.json(&index(&[other.clone(), host.clone(), attestation.clone()]));
        let top = index(&[json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": nested,
            "size": 1,
        })]);
        let imported = import(&layout.archive(&top));
        let result = imported.result.expect("import");
        assert_eq!(
            fs::read(imported.root.join("which")).expect("which"),
            b"host"
        );
        assert_eq!(result.manifest_digest, host["digest"]);

        // Without the host's platform and more than one to choose from.
        let err = import(&layout.archive(&index(&[other, attestation])))
            .result
            .expect_err("no host platform");
        let message = err.to_string();
        assert!(
            message.contains(&format!("platform linux/{host_arch}"))
                && message.contains("linux/not-this-arch, unknown/unknown"),
            "{message}"
        );
    }

    #[test]
    fn tampered_blob_is_refused_before_anything_is_written() {
        let mut layout = Layout::default();
        let layer = tar(|b| file(b, "f", b"original"));
        let image = layout.image(run_config(), &[layer]);
        let index = index(&[image]);
        let layer_path = layout
            .blobs
            .iter()
            .map(|(path, _)| path.clone())
            .next()
            .expect("layer blob");
        for (path, bytes) in &mut layout.blobs {
            if *path == layer_path {
                *bytes = tar(|b| file(b, "f", b"tampered"));
            }
        }
        let imported = import(&layout.archive(&index));
        let message = imported.result.expect_err("tampered").to_string();
        assert!(
            message.contains(&format!("layer 1 '{layer_path}' does not match its digest")),
            "{message}"
        );
        assert!(listing(&imported.root).is_empty());
    }

    #[test]
    fn missing_blobs_and_bad_json_are_named() {
        let mut layout = Layout::default();
        let image = layout.image(run_config(), &[tar(|b| file(b, "f", b"x"))]);
        let index = index(&[image]);
        let layer_path = layout.blobs[0].0.clone();
        layout.blobs.remove(0);
        let message = import(&layout.archive(&index))
            .result
            .expect_err("missing layer")
            .to_string();
        assert_eq!(
            message,
            format!("layer 1 '{layer_path}' is not in the archive; the image is incomplete")
        );

        let archive = tar(|b| file(b, "index.json", b"{\"manifests\": [oops"));
        let message = import(&archive).result.expect_err("bad json").to_string();
        assert!(
            message.starts_with("the image index 'index.json' is not valid JSON"),
            "{message}"
        );
    }

    #[test]
    fn hostile_layers_write_nothing_outside() {
        let scratch_parent = tempfile::tempdir().expect("tempdir");
        let outside = scratch_parent.path().join("outside");
        fs::create_dir(&outside).expect("outside");
        fs::write(outside.join("secret"), b"secret").expect("secret");
        let outside_bytes = outside.to_str().expect("utf8").as_bytes().to_vec();
        let first = tar(|b| {
            file(b, "ok", b"fine");
            raw(b, b"../escape", EntryType::Regular, b"", b"x");
            raw(b, b"a/../../escape2", EntryType::Regular, b"", b"x");
            raw(b, b"link", EntryType::Symlink, &outside_bytes, b"");
            file(b, "link/file", b"through");
            raw(b, b"dev/null", EntryType::Char, b"", b"");
        });
        let second = tar(|b| {
            file(b, "link/.wh.secret", b"");
            file(b, "link/.wh..wh..opq", b"");
            file(b, "../outside/.wh.secret", b"");
            file(b, ".wh...", b"");
            file(b, ".wh.x/inside", b"");
        });
        let mut layout = Layout::default();
        let image = layout.image(run_config(), &[first, second]);
        let imported = import(&layout.archive(&index(&[image])));
        imported.result.expect("import");

        assert_eq!(fs::read(outside.join("secret")).expect("secret"), b"secret");
        assert_eq!(fs::read_dir(&outside).expect("outside").count(), 1);
        assert!(!imported.dir.path().join("escape").exists());
        assert!(!imported.dir.path().join("escape2").exists());
        assert_eq!(listing(&imported.root), ["link", "ok"]);
        assert_eq!(
            imported.refused,
            [
                "../escape: path contains '..'",
                "a/../../escape2: path contains '..'",
                "link/file: path passes through the symlink 'link'",
                "dev/null: device node (machines get a private /dev)",
                "link/.wh.secret: path passes through the symlink 'link'",
                "../outside/.wh.secret: path contains '..'",
                ".wh...: path contains '..'",
                ".wh.x/inside: the '.wh.' prefix is reserved for whiteouts",
            ]
        );
    }

    #[test]
    fn a_plain_tarball_or_garbage_is_not_an_image() {
        let rootfs = tar(|b| {
            dir(b, "etc/");
            file(b, "etc/hostname", b"box\n");
            file(b, "config.json.bak", b"{}");
        });
        let err = import(&rootfs).result.expect_err("plain tarball");
        assert!(
            matches!(err, ImageError::Oci(OciError::NotAnImage)),
            "{err:?}"
        );
        assert!(err.to_string().contains("'berth import-tar'"), "{err}");

        let err = import(&b"not a tar archive at all\n".repeat(40))
            .result
            .expect_err("garbage");
        assert!(matches!(err, ImageError::NotATar(_)), "{err:?}");
    }

    #[test]
    fn whiteout_names() {
        let path = |raw: &str| TreePath::parse(raw.as_bytes()).expect("path");
        assert_eq!(whiteout(b"etc/passwd"), None);
        assert_eq!(whiteout(b"./"), None);
        assert_eq!(
            whiteout(b"./etc/.wh.passwd"),
            Some(Ok(Whiteout::Remove(path("etc/passwd"))))
        );
        assert_eq!(
            whiteout(b"opt/.wh..wh..opq"),
            Some(Ok(Whiteout::Opaque(path("opt"))))
        );
        assert_eq!(
            whiteout(b".wh..wh..opq"),
            Some(Ok(Whiteout::Opaque(TreePath::root())))
        );
        assert_eq!(whiteout(b"a/.wh..."), Some(Err(RefuseReason::DotDot)));
        for nameless in [&b"a/.wh."[..], b"a/.wh.."] {
            assert_eq!(whiteout(nameless), Some(Err(RefuseReason::ReservedName)));
        }
        assert_eq!(
            whiteout(b"/etc/.wh.x"),
            Some(Err(RefuseReason::AbsolutePath))
        );
    }

    #[test]
    fn archive_paths_and_links() {
        assert_eq!(
            normalize(b"./blobs//sha256/ab").as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(normalize(b"../x"), None);
        assert_eq!(normalize(b"/index.json"), None);
        assert_eq!(
            resolve_symlink("3333/layer.tar", b"../1111/layer.tar").as_deref(),
            Some("1111/layer.tar")
        );
        assert_eq!(resolve_symlink("a/layer.tar", b"../../x"), None);
        assert_eq!(resolve_symlink("a/layer.tar", b"/etc/passwd"), None);
        assert!(!wanted("blobs/sha256/abc"));
        assert!(wanted("manifest.json") && wanted("abc/layer.tar"));
        assert!(wanted("0123.tar") && !wanted("abc/json") && !wanted("etc/hostname"));
    }
}
