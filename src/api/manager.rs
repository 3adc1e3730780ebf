//! The `org.berth.Berth1.Manager` object.

use std::fs::File;
use std::os::fd::OwnedFd;

use zbus::message::Header;
use zbus::{Connection, interface};

use super::polkit::{Action, authorize};
use super::{BusError, ImageEntry, ImportResult};
use crate::image::{ImageError, Pool};

/// berthd's manager object, served at `/org/berth/Berth1`.
#[derive(Debug, Clone)]
pub struct Manager {
    pool: Pool,
}

impl Manager {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

/// Runs filesystem work off the bus threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, BusError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(BusError::from),
        Err(e) => Err(BusError::Failed(format!("internal error: {e}"))),
    }
}

#[interface(name = "org.berth.Berth1.Manager")]
impl Manager {
    /// Imports a tar archive (plain, gzip, xz or zstd) read from `file` as image `name`.
    /// `origin` is recorded as where it came from (a path, or `-` for stdin). Unsafe entries
    /// (absolute paths, `..`, paths through symlinks, hard links leaving the tree, device
    /// nodes) are not written and are listed in the result. Needs
    /// org.berth.berth1.manage-images.
    #[zbus(out_args("result"))]
    async fn import_tar(
        &self,
        file: zbus::OwnedFd,
        name: String,
        origin: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<ImportResult, BusError> {
        authorize(conn, &header, Action::ManageImages).await?;
        let pool = self.pool.clone();
        let file = File::from(OwnedFd::from(file));
        tracing::info!(%name, %origin, "importing tar");
        let report = blocking(move || pool.import_tar(&name, file, &origin)).await?;
        tracing::info!(name = %report.name, digest = %report.record.digest, refused = report.refused.len(), "imported tar");
        Ok(report.into())
    }

    /// Copies the directory tree open as `directory` into image `name`. Needs
    /// org.berth.berth1.manage-images.
    #[zbus(out_args("result"))]
    async fn import_fs(
        &self,
        directory: zbus::OwnedFd,
        name: String,
        origin: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<ImportResult, BusError> {
        authorize(conn, &header, Action::ManageImages).await?;
        let pool = self.pool.clone();
        let directory = OwnedFd::from(directory);
        tracing::info!(%name, %origin, "importing directory");
        let report = blocking(move || pool.import_fs(&name, directory, &origin)).await?;
        tracing::info!(name = %report.name, refused = report.refused.len(), "imported directory");
        Ok(report.into())
    }

    /// Lists the images in /var/lib/machines. Open to everyone.
    #[zbus(out_args("images"))]
    async fn list_images(&self) -> Result<Vec<ImageEntry>, BusError> {
        let pool = self.pool.clone();
        let images = blocking(move || pool.list()).await?;
        Ok(images.into_iter().map(ImageEntry::from).collect())
    }

    /// Removes image `name`. Needs org.berth.berth1.manage-images.
    async fn remove_image(
        &self,
        name: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), BusError> {
        authorize(conn, &header, Action::ManageImages).await?;
        let pool = self.pool.clone();
        tracing::info!(%name, "removing image");
        blocking(move || pool.remove(&name)).await
    }

    /// berthd's version.
    #[zbus(property)]
    async fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }

    /// The directory images live in.
    #[zbus(property)]
    async fn image_directory(&self) -> String {
        self.pool.image_dir().display().to_string()
    }
}
