//! Local directory roots (`file://` or a plain path): object_store's local store under
//! [`ConfinedLocal`], which keeps every read inside the root (symlinks out of it are neither
//! listed nor read).

use super::*;

pub(super) fn local_root(root: &str) -> Result<Arc<dyn ObjectStore>> {
    let path: PathBuf = match root.split_once("://") {
        None => PathBuf::from(root),
        Some((_, rest)) => {
            let url = url::Url::parse(root)
                .map_err(|e| Error::InvalidArgument(format!("root {root:?} is not a URL: {e}")))?;
            if !rest.starts_with('/') {
                return Err(Error::InvalidArgument(format!(
                    "root {root:?}: a file URL needs an absolute path (file:///...)"
                )));
            }
            url.to_file_path()
                .map_err(|_| Error::InvalidArgument(format!("root {root:?} is not a local path")))?
        }
    };
    local_store(&path)
}

fn local_store(path: &FsPath) -> Result<Arc<dyn ObjectStore>> {
    let canonical = std::fs::canonicalize(path)
        .map_err(|e| Error::InvalidArgument(format!("dataset root {} cannot be opened: {e}", path.display())))?;
    if !canonical.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "dataset root {} is not a directory",
            path.display()
        )));
    }
    let store = LocalFileSystem::new_with_prefix(&canonical)
        .map_err(|e| Error::InvalidArgument(format!("dataset root {}: {e}", path.display())))?;
    Ok(Arc::new(ConfinedLocal {
        inner: Arc::new(store),
        root: canonical,
    }))
}

/// A local root that never leaves its directory: object_store's local store follows symlinks
/// (into other directories, or to files elsewhere), so a symlink inside the lake that resolves
/// outside the root is left out of listings and refused on reads, as if it were not there.
/// (Reads of indexed files also carry the file's version, whose local ETag is its inode, so a
/// file swapped for a symlink after indexing fails as changed.)
#[derive(Debug)]
pub struct ConfinedLocal {
    inner: Arc<dyn ObjectStore>,
    root: PathBuf,
}

impl fmt::Display for ConfinedLocal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Confined({})", self.inner)
    }
}

impl ConfinedLocal {
    /// True when the path resolves (symlinks followed) inside the root.
    fn inside(root: &FsPath, location: &Path) -> bool {
        let mut p = root.to_path_buf();
        p.extend(location.parts().map(|part| part.as_ref().to_string()));
        std::fs::canonicalize(&p).is_ok_and(|c| c.starts_with(root))
    }

    fn check(&self, location: &Path) -> object_store::Result<()> {
        if Self::inside(&self.root, location) {
            Ok(())
        } else {
            Err(object_store::Error::NotFound {
                path: location.to_string(),
                source: "not a file inside the dataset root (a symlink out of the root is not followed)".into(),
            })
        }
    }
}

wrapper_store!(ConfinedLocal {
    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.check(location)?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.check(location)?;
        self.inner.get_ranges(location, ranges).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let root = self.root.clone();
        self.inner
            .list(prefix)
            .try_filter(move |m| {
                let inside = Self::inside(&root, &m.location);
                if !inside {
                    tracing::warn!(path = %m.location, "skipping a symlink that leads out of the dataset root");
                }
                futures::future::ready(inside)
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let mut r = self.inner.list_with_delimiter(prefix).await?;
        r.objects.retain(|m| Self::inside(&self.root, &m.location));
        Ok(r)
    }

});
