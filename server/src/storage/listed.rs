//! [`ListedStore`]: a store that cannot list (HTTP) made listable from a file list (a
//! manifest in the root, or the configuration's list).

use super::*;

/// Relative file paths (config list or manifest lines): `#` comments and blank lines are
/// skipped; absolute URLs and `..` are refused.
pub(super) fn parse_file_list<'a>(lines: impl Iterator<Item = &'a str>) -> std::result::Result<Vec<Path>, String> {
    let mut out = Vec::new();
    for line in lines {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.contains("://") {
            return Err(format!("file {line:?}: list paths relative to the root, not URLs"));
        }
        let p =
            Path::parse(line.trim_start_matches('/')).map_err(|e| format!("file {line:?} is not a valid path: {e}"))?;
        if p.parts().any(|part| part.as_ref() == ".." || part.as_ref() == ".") {
            return Err(format!("file {line:?}: `.` and `..` are not allowed"));
        }
        out.push(p);
    }
    Ok(out)
}

/// Where an HTTP dataset's file list comes from.
#[derive(Debug, Clone)]
pub(super) enum FileList {
    Listed(Vec<Path>),
    Manifest(Path),
}

/// A store that cannot list (HTTP) made listable from an explicit file list: `list` returns
/// the listed files, with their size and version from a HEAD request each.
#[derive(Debug)]
pub struct ListedStore {
    pub(super) inner: Arc<dyn ObjectStore>,
    pub(super) files: FileList,
    pub(super) base: String,
}

impl fmt::Display for ListedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Listed({})", self.base)
    }
}

impl ListedStore {
    async fn file_list(&self) -> object_store::Result<Vec<Path>> {
        match &self.files {
            FileList::Listed(l) => Ok(l.clone()),
            FileList::Manifest(m) => {
                let body = self.inner.get(m).await.map_err(|e| match e {
                    object_store::Error::NotFound { path, source } => object_store::Error::NotFound {
                        path: path.clone(),
                        source: format!(
                            "no manifest {m} at {}: publish one (one data file per line) or list the files in \
                             the dataset's `files` option ({source})",
                            self.base
                        )
                        .into(),
                    },
                    other => other,
                })?;
                let bytes = body.bytes().await?;
                let text = std::str::from_utf8(&bytes).map_err(|e| object_store::Error::Generic {
                    store: "manifest",
                    source: format!("manifest {m} is not UTF-8: {e}").into(),
                })?;
                parse_file_list(text.lines()).map_err(|e| object_store::Error::Generic {
                    store: "manifest",
                    source: format!("manifest {m}: {e}").into(),
                })
            }
        }
    }
}

wrapper_store!(ListedStore {
    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let this = ListedStore {
            inner: self.inner.clone(),
            files: self.files.clone(),
            base: self.base.clone(),
        };
        let prefix = prefix.cloned();
        stream::once(async move {
            let files = this.file_list().await?;
            let inner = this.inner.clone();
            let wanted = files
                .into_iter()
                .filter(move |p| prefix.as_ref().is_none_or(|pre| p.prefix_matches(pre)));
            Ok::<_, object_store::Error>(
                stream::iter(wanted)
                    .map(move |p| {
                        let inner = inner.clone();
                        async move { inner.head(&p).await }
                    })
                    .buffered(16),
            )
        })
        .try_flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let objects: Vec<ObjectMeta> = self.list(prefix).try_collect().await?;
        Ok(ListResult {
            common_prefixes: Vec::new(),
            objects,
        })
    }

});
