//! berth's record of an image: where it came from, what it was, and what it was made from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Stored as `/var/lib/berth/images/NAME.json` (an unversioned image) or
/// `/var/lib/berth/images/NAME.v/NAME_VERSION.json`; admins may read it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `sha256:HEX` of the imported tarball as given, or empty for directory imports and builds.
    pub digest: String,
    /// Bytes of file content in the image.
    pub size_bytes: u64,
    /// When the import finished, microseconds since the epoch.
    pub created_usec: u64,
    /// Where it came from: `tar:PATH`, `tar:-` (stdin), `fs:PATH`, `oci:PATH`, `docker:PATH`,
    /// `pull:URL` or `build:SOURCE`.
    pub origin: String,
    /// The version, empty for an unversioned image.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// The image a build started from, or the image of the machine it was committed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseImage>,
    /// How a build made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildSource>,
    /// Defaults for app machines made from it (an OCI image's config, a build's ENTRYPOINT…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<AppDefaults>,
}

/// An image another was built from, exactly: name, version and digest at build time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseImage {
    pub name: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub digest: String,
}

impl BaseImage {
    /// `name@version@digest`, as `berth images` shows it.
    pub fn display(&self) -> String {
        let mut text = self.name.clone();
        if !self.version.is_empty() {
            text.push('@');
            text.push_str(&self.version);
        }
        if !self.digest.is_empty() {
            text.push('@');
            text.push_str(&self.digest);
        }
        text
    }
}

/// What `berth build` built from: enough to build it again and to tell whether that is due.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildSource {
    /// A git URL or local path, as given to `berth build`.
    pub source: String,
    /// The ref asked for (`#REF`), empty for the default branch.
    #[serde(default)]
    pub reference: String,
    /// The git commit built (empty for a directory that is no git checkout).
    #[serde(default)]
    pub commit: String,
    /// The Containerfile's path in the source.
    pub containerfile: String,
    /// `sha256:HEX` of the Containerfile's text.
    pub recipe_digest: String,
    /// The base as the Containerfile named it (`FROM NAME[@VERSION]`).
    pub from: String,
}

/// How an app machine made from the image runs by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppDefaults {
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `KEY=VALUE` strings.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: String,
    #[serde(default)]
    pub user: String,
    /// A build's LABELs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl AppDefaults {
    /// The command an app machine runs when none is given: ENTRYPOINT then CMD.
    pub fn command(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }
}
