//! berth's record of an image: where it came from and what it was.

use serde::{Deserialize, Serialize};

/// Stored as `/var/lib/berth/images/NAME.json`; admins may read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `sha256:HEX` of the imported tarball as given, or of nothing for directory imports.
    pub digest: String,
    /// Bytes of file content in the image.
    pub size_bytes: u64,
    /// When the import finished, microseconds since the epoch.
    pub created_usec: u64,
    /// Where it came from: `tar:PATH`, `tar:-` (stdin) or `fs:PATH`.
    pub origin: String,
}
