//! [`MountedStore`]: a store seen under a folder (Flight SQL mounts each dataset under its name).

use super::*;

/// A store seen under a folder: the path `mount/x` is the inner store's `x`, and what the inner
/// store lists comes back under `mount/` (the opposite of object_store's `PrefixStore`). Flight
/// SQL mounts each dataset under its name, so that paths, and the caches DataFusion keys by
/// path, never mix two datasets' files.
#[derive(Debug)]
pub struct MountedStore {
    inner: Arc<dyn ObjectStore>,
    mount: Path,
}

impl MountedStore {
    pub fn new(inner: Arc<dyn ObjectStore>, mount: &str) -> Self {
        MountedStore {
            inner,
            mount: Path::from(mount),
        }
    }

    /// The inner path of an outer one; a path outside the mount does not exist here.
    fn inner_path(&self, location: &Path) -> object_store::Result<Path> {
        match location.prefix_match(&self.mount) {
            Some(parts) => Ok(Path::from_iter(parts)),
            None => Err(object_store::Error::NotFound {
                path: location.to_string(),
                source: format!("not under the mount {}", self.mount).into(),
            }),
        }
    }

    fn inner_prefix(&self, prefix: Option<&Path>) -> Option<Option<Path>> {
        match prefix {
            None => Some(None),
            Some(p) if p.as_ref().is_empty() => Some(None),
            Some(p) => match p.prefix_match(&self.mount) {
                Some(parts) => Some(Some(Path::from_iter(parts))),
                // A prefix above the mount (`ztf` of `ztf/...`) lists it whole.
                None if self.mount.prefix_match(p).is_some() => Some(None),
                None => None,
            },
        }
    }

    fn outer(mount: &Path, p: &Path) -> Path {
        mount.parts().chain(p.parts()).collect()
    }

    fn outer_meta(mount: &Path, mut m: ObjectMeta) -> ObjectMeta {
        m.location = Self::outer(mount, &m.location);
        m
    }
}

impl fmt::Display for MountedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mounted({} at {})", self.inner, self.mount)
    }
}

#[async_trait]
impl ObjectStore for MountedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(&self.inner_path(location)?, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(&self.inner_path(location)?, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        let mut r = self.inner.get_opts(&self.inner_path(location)?, options).await?;
        r.meta = Self::outer_meta(&self.mount, r.meta);
        Ok(r)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(&self.inner_path(location)?, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let mount = self.mount.clone();
        let inner_locations = locations
            .map(move |p| {
                let p = p?;
                let inner: Option<Path> = p.prefix_match(&mount).map(Path::from_iter);
                inner.ok_or_else(|| object_store::Error::NotFound {
                    path: p.to_string(),
                    source: "not under the mount".into(),
                })
            })
            .boxed();
        let mount = self.mount.clone();
        self.inner
            .delete_stream(inner_locations)
            .map_ok(move |p| Self::outer(&mount, &p))
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let Some(inner) = self.inner_prefix(prefix) else {
            return stream::empty().boxed();
        };
        let mount = self.mount.clone();
        self.inner
            .list(inner.as_ref())
            .map_ok(move |m| Self::outer_meta(&mount, m))
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let inner = match (prefix, self.inner_prefix(prefix)) {
            (_, None) => {
                return Ok(ListResult {
                    common_prefixes: Vec::new(),
                    objects: Vec::new(),
                })
            }
            // Above the mount: its first folder is the one entry.
            (Some(p), Some(None)) if p.as_ref() != self.mount.as_ref() && !p.as_ref().is_empty() => {
                let next: Path = self.mount.parts().take(p.parts().count() + 1).collect();
                return Ok(ListResult {
                    common_prefixes: vec![next],
                    objects: Vec::new(),
                });
            }
            (None, _) => {
                let first: Path = self.mount.parts().take(1).collect();
                return Ok(ListResult {
                    common_prefixes: vec![first],
                    objects: Vec::new(),
                });
            }
            (_, Some(inner)) => inner,
        };
        let r = self.inner.list_with_delimiter(inner.as_ref()).await?;
        Ok(ListResult {
            common_prefixes: r.common_prefixes.iter().map(|p| Self::outer(&self.mount, p)).collect(),
            objects: r
                .objects
                .into_iter()
                .map(|m| Self::outer_meta(&self.mount, m))
                .collect(),
        })
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner
            .copy_opts(&self.inner_path(from)?, &self.inner_path(to)?, options)
            .await
    }
}
