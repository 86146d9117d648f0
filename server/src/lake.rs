//! The configured datasets: their stores, their catalogs and id indexes, the footer cache,
//! and the state of their index builds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use object_store::ObjectStore;
use tracing::{error, info, warn};

use astroflight_index::header_catalog::HeaderStore;
use astroflight_index::publish::{self, FollowStats, PublishStats, Publisher};
use astroflight_index::{BuildStats, DatasetIndex, Index, IndexBuilder, OpenError, SurveyKind};

use crate::config::{Config, IndexRole, Limits, ReindexAction};
use crate::error::{quoted, Error, Result};
use crate::runtime::cpu::CpuPool;
use crate::runtime::footer::FooterCache;
use crate::storage::{open_dataset, open_index_root, Backend, CountingStore, IoStats, RangeReads};

pub struct Dataset {
    pub name: String,
    /// Position in the configuration (the dataset's part of cache keys).
    pub number: usize,
    pub kind: SurveyKind,
    pub root: String,
    pub store: Arc<dyn ObjectStore>,
    pub range_reads: RangeReads,
    pub backend: Backend,
    /// The id index; its catalog is `index.catalog()`.
    pub index: DatasetIndex,
    /// The class of an alert (a column or a SQL expression), when the dataset has one.
    pub class_sql: Option<String>,
    /// Where its index builds stand (a follower: its loads).
    pub build: BuildState,
    /// Its published index (`index_root`), when it has one.
    pub published: Option<PublishedRoot>,
}

/// A dataset's `index_root`: where its builder publishes and its followers load from.
pub struct PublishedRoot {
    pub url: String,
    pub store: Arc<dyn ObjectStore>,
    /// On a builder.
    pub publisher: Option<Publisher>,
}

/// What one dataset's index work did ([`Lake::reindex`]).
#[derive(Debug, Default)]
pub struct Reindexed {
    /// A build (a builder's; a FITS dataset's header catalog refresh).
    pub build: Option<BuildStats>,
    /// The publication after a build (a builder with an `index_root`), or why it failed: the
    /// index is still served here, and the next build publishes again.
    pub published: Option<std::result::Result<PublishStats, String>>,
    /// What a follower loaded.
    pub loaded: Option<FollowStats>,
}

/// A FITS dataset (`kind = "fits"`): its store and its header catalog.
pub struct FitsDataset {
    pub name: String,
    /// Position in the configuration.
    pub number: usize,
    pub root: String,
    pub store: Arc<dyn ObjectStore>,
    pub range_reads: RangeReads,
    pub backend: Backend,
    /// The header catalog (beside the alert index, in the same database).
    pub catalog: HeaderStore,
    /// Refreshes of the catalog never overlap.
    refresh: tokio::sync::Mutex<()>,
    /// Where its header catalog refreshes stand.
    pub build: BuildState,
}

/// Where the index builds of a dataset (the header catalog refreshes of a FITS dataset) stand.
pub struct BuildState {
    /// True until the first build since the server started has finished (or failed): an id
    /// not found meanwhile may be in a file not indexed yet.
    first_pending: AtomicBool,
    /// Whether the last build failed (its storage could not be listed).
    failed: AtomicBool,
}

impl BuildState {
    fn new(first_pending: bool) -> Self {
        BuildState {
            first_pending: AtomicBool::new(first_pending),
            failed: AtomicBool::new(false),
        }
    }

    pub fn first_build_pending(&self) -> bool {
        self.first_pending.load(Ordering::Acquire)
    }

    /// Serving (the health service's word): the first build since start has ended and the
    /// last one reached the storage.
    pub fn serving(&self) -> bool {
        !self.first_build_pending() && !self.failed.load(Ordering::Acquire)
    }

    /// Record that a build ended; true when it was the first since start.
    fn ended(&self, ok: bool) -> bool {
        self.failed.store(!ok, Ordering::Release);
        self.first_pending.swap(false, Ordering::AcqRel)
    }
}

impl std::fmt::Debug for FitsDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FitsDataset({})", self.name)
    }
}

/// Where a dataset name points.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Alerts(usize),
    Fits(usize),
}

impl std::fmt::Debug for Lake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lake({} datasets)", self.datasets().count())
    }
}

impl Dataset {
    /// A file's path in the dataset (as the catalog and tickets name it) from its path in a
    /// [`crate::storage::MountedStore`] (Flight SQL's session), where every dataset's files sit
    /// under a folder named after it.
    pub fn relative_path(&self, location: &str) -> String {
        location
            .strip_prefix(self.name.as_str())
            .and_then(|p| p.strip_prefix('/'))
            .unwrap_or(location)
            .to_string()
    }
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dataset({})", self.name)
    }
}

pub struct Lake {
    /// Alert datasets, in configuration order.
    datasets: Vec<Arc<Dataset>>,
    /// FITS datasets, in configuration order.
    fits: Vec<Arc<FitsDataset>>,
    by_name: BTreeMap<String, Slot>,
    pub footers: FooterCache,
    /// Everything read from storage since start.
    pub io: Arc<IoStats>,
    /// Where pages of point reads are decompressed and stamps decoded.
    pub cpu: CpuPool,
    /// Where bulk work runs (SQL, alert batch scans, header conditions), at a lower priority.
    pub bulk: CpuPool,
    /// The process's memory budget; each request holds an account of it.
    pub memory: Arc<crate::memory::Budget>,
    /// The memory settings, resolved.
    pub memory_limits: crate::config::MemoryLimits,
    /// The per-request limits, resolved from the configuration once.
    pub limits: Limits,
    /// Publish dataset roots (storage addresses) to clients.
    pub publish_roots: bool,
    pub reindex_action: ReindexAction,
    /// The query engine of alert batch conditions.
    pub engine: crate::expr::Engine,
    /// Target output bytes per endpoint of an alert batch query.
    pub endpoint_bytes: u64,
    /// Locations put in endpoints (empty: none).
    pub advertise: Vec<String>,
    /// Flight SQL settings.
    pub sql: crate::config::SqlConfig,
    /// Whether this process builds the index or follows a published one.
    pub role: IndexRole,
    /// FITS settings (header reads, header table endpoints).
    pub fits_config: crate::config::FitsConfig,
    index: Index,
    /// Becomes true when every dataset's first build since start has ended.
    ready: tokio::sync::watch::Sender<bool>,
    /// Counts finished index builds (of every dataset): the health service re-reads the
    /// datasets' states when it moves.
    builds: tokio::sync::watch::Sender<u64>,
}

/// Open the index directory; one that cannot be opened because its files are broken (a crash,
/// a full disk) is moved aside and a new one is built from the lake.
fn open_index(dir: &Path, cache_bytes: u64) -> Result<Index> {
    match Index::open_with_cache(dir, cache_bytes) {
        Ok(ix) => Ok(ix),
        Err(OpenError::Locked(e)) => Err(Error::Unavailable(format!(
            "cannot open the index in {}: another astroflight process is using it ({e})",
            dir.display()
        ))),
        Err(OpenError::Broken(e)) => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let aside = PathBuf::from(format!("{}.broken-{stamp}", dir.display()));
            error!(dir = %dir.display(), moved_to = %aside.display(), error = %e,
                   "the index cannot be opened; moving it aside and rebuilding it from the lake");
            std::fs::rename(dir, &aside).map_err(|re| {
                Error::Unavailable(format!(
                    "the index in {} is broken ({e}) and cannot be moved aside: {re}",
                    dir.display()
                ))
            })?;
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Unavailable(format!("cannot create index_dir {}: {e}", dir.display())))?;
            Index::open(dir)
                .map_err(|e| Error::Unavailable(format!("cannot open a new index in {}: {e}", dir.display())))
        }
    }
}

impl Lake {
    /// Open the index and every dataset root of the configuration. Reads nothing from the
    /// lake: index builds are started by [`Lake::reindex`].
    pub fn open(config: &Config) -> Result<Lake> {
        std::fs::create_dir_all(&config.index_dir).map_err(|e| {
            Error::InvalidArgument(format!("cannot create index_dir {}: {e}", config.index_dir.display()))
        })?;
        let index = open_index(&config.index_dir, config.index_cache_bytes)?;
        let mut datasets = Vec::new();
        let mut fits = Vec::new();
        let mut by_name = BTreeMap::new();
        let follow = config.index_role == IndexRole::Follow;
        let retain = std::time::Duration::from_secs_f64(config.index_retain_secs);
        for (number, d) in config.datasets.iter().enumerate() {
            let opened = open_dataset(d)?;
            let Some(survey) = d.kind.survey() else {
                by_name.insert(d.name.clone(), Slot::Fits(fits.len()));
                fits.push(Arc::new(FitsDataset {
                    name: d.name.clone(),
                    number,
                    root: d.root.clone(),
                    store: opened.store,
                    range_reads: opened.range_reads,
                    backend: opened.backend,
                    catalog: index.headers(&d.name)?,
                    refresh: tokio::sync::Mutex::new(()),
                    build: BuildState::new(config.index_on_start),
                }));
                continue;
            };
            let published = match &d.index_root {
                Some(r) => {
                    // A local one is created if missing (on a follower too: its builder may start later).
                    let root = open_index_root(d, r, true)?;
                    Some(PublishedRoot {
                        url: r.clone(),
                        publisher: (!follow).then(|| Publisher::new(root.store.clone(), retain)),
                        store: root.store,
                    })
                }
                None => None,
            };
            by_name.insert(d.name.clone(), Slot::Alerts(datasets.len()));
            datasets.push(Arc::new(Dataset {
                name: d.name.clone(),
                number,
                kind: survey,
                root: d.root.clone(),
                store: opened.store,
                range_reads: opened.range_reads,
                backend: opened.backend,
                index: index.dataset(&d.name)?,
                class_sql: match (&d.class, survey) {
                    (Some(c), _) if c.trim().is_empty() => None,
                    (Some(c), _) => Some(c.trim().to_string()),
                    (None, SurveyKind::Ztf) => Some("cdsxmatch".to_string()),
                    (None, SurveyKind::Lsst) => None,
                },
                // A follower has nothing to serve before its first load.
                build: BuildState::new(config.index_on_start || follow),
                published,
            }));
        }
        let pending = datasets.iter().any(|d| d.build.first_build_pending())
            || fits.iter().any(|d| d.build.first_build_pending());
        let (ready, _) = tokio::sync::watch::channel(!pending);
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let memory = config.memory();
        Ok(Lake {
            datasets,
            fits,
            by_name,
            footers: FooterCache::new(config.footer_cache_files, config.footer_cache_bytes),
            io: Arc::new(IoStats::default()),
            cpu: CpuPool::new(cores)?,
            bulk: CpuPool::bulk(cores)?,
            memory: crate::memory::Budget::new(memory.budget, memory.request, true),
            memory_limits: memory,
            limits: config.resolved_limits(),
            publish_roots: config.publish_roots,
            reindex_action: config.reindex_action,
            engine: crate::expr::Engine::new(crate::expr::guard::ExprLimits {
                max_value_bytes: memory.value,
                max_batch_bytes: memory.batch,
            }),
            endpoint_bytes: config.endpoint_bytes,
            advertise: config.advertise.clone(),
            sql: config.sql.clone(),
            role: config.index_role,
            fits_config: config.fits.clone(),
            index,
            ready,
            builds: tokio::sync::watch::channel(0).0,
        })
    }

    pub fn datasets(&self) -> impl Iterator<Item = &Arc<Dataset>> {
        self.datasets.iter()
    }

    /// The FITS datasets, in configuration order.
    pub fn fits_datasets(&self) -> impl Iterator<Item = &Arc<FitsDataset>> {
        self.fits.iter()
    }

    /// Every dataset's name and build state, alert datasets then FITS datasets.
    pub fn build_states(&self) -> impl Iterator<Item = (&str, &BuildState)> {
        self.datasets
            .iter()
            .map(|d| (d.name.as_str(), &d.build))
            .chain(self.fits.iter().map(|d| (d.name.as_str(), &d.build)))
    }

    fn unknown(&self, name: &str) -> Error {
        let known: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        Error::InvalidArgument(format!(
            "unknown dataset {}; this server has: {}",
            quoted(name),
            known.join(", ")
        ))
    }

    /// An alert dataset by name.
    pub fn dataset(&self, name: &str) -> Result<&Arc<Dataset>> {
        match self.by_name.get(name) {
            Some(Slot::Alerts(i)) => Ok(&self.datasets[*i]),
            Some(Slot::Fits(_)) => Err(Error::InvalidArgument(format!(
                "dataset {} holds FITS files (kind = \"fits\"): it answers header tables ({{\"headers\": ...}}) and image sections, not alert tickets",
                quoted(name)
            ))),
            None => Err(self.unknown(name)),
        }
    }

    /// A FITS dataset by name.
    pub fn fits_dataset(&self, name: &str) -> Result<&Arc<FitsDataset>> {
        match self.by_name.get(name) {
            Some(Slot::Fits(i)) => Ok(&self.fits[*i]),
            Some(Slot::Alerts(_)) => Err(Error::InvalidArgument(format!(
                "dataset {} is an alert dataset, not FITS files: name alerts by id (objectId, candid, diaSourceId) for the headers of their stamps",
                quoted(name)
            ))),
            None => Err(self.unknown(name)),
        }
    }

    /// True when the name is a FITS dataset.
    pub fn is_fits(&self, name: &str) -> bool {
        matches!(self.by_name.get(name), Some(Slot::Fits(_)))
    }

    /// A store for one request: counts into the totals and into `request`.
    pub fn store_for(&self, ds: &Dataset, request: &Arc<IoStats>) -> Arc<dyn ObjectStore> {
        Arc::new(CountingStore::new(
            ds.store.clone(),
            ds.range_reads,
            vec![self.io.clone(), request.clone()],
        ))
    }

    /// True once the first index build of every dataset since start has ended.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Wait until [`Lake::is_ready`].
    pub async fn ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Bring every dataset's index up to date (at start, on the `reindex` action and on the
    /// schedule; `astroflight index` runs it without a server). A builder incrementally
    /// indexes each dataset, then publishes it to its `index_root`; a follower loads the newest
    /// generation published there. Builds (loads) of one dataset never overlap (the index
    /// serializes them). Each dataset succeeds or fails alone: a dataset whose storage is down
    /// keeps its previous index, untouched, and the others are still brought up to date.
    pub async fn reindex(&self) -> Vec<(String, Result<Reindexed>)> {
        let mut out = Vec::new();
        for ds in &self.datasets {
            let result = match self.role {
                IndexRole::Build => self.build(ds).await,
                IndexRole::Follow => self.load(ds).await,
            };
            out.push((ds.name.clone(), result));
        }
        for ds in &self.fits {
            let r = self.refresh_headers(ds).await.map(|b| Reindexed {
                build: Some(b),
                ..Default::default()
            });
            out.push((ds.name.clone(), r));
        }
        if !self.build_states().any(|(_, b)| b.first_build_pending()) {
            self.ready.send_replace(true);
        }
        self.builds.send_modify(|n| *n += 1);
        out
    }

    /// A builder's incremental build of one dataset, then its publication.
    async fn build(&self, ds: &Dataset) -> Result<Reindexed> {
        if ds.index.is_followed()? {
            warn!(dataset = %ds.name, "this index directory holds an index a follower loaded; a builder starts it over from the lake");
            ds.index.reset().await?;
        }
        let store: Arc<dyn ObjectStore> = Arc::new(CountingStore::new(
            ds.store.clone(),
            ds.range_reads,
            vec![self.io.clone()],
        ));
        // Remote stores gain from more files in flight (each read is a network round trip).
        let concurrency = if ds.backend == Backend::File { 4 } else { 8 };
        let result = IndexBuilder::new(store, None, ds.kind, ds.index.clone())
            .with_concurrency(concurrency)
            .with_classes(
                ds.class_sql
                    .as_deref()
                    .map(|c| crate::expr::class_spec(self.engine.clone(), c)),
            )
            .run()
            .await
            .map_err(Error::from);
        match &result {
            Ok(stats) => {
                info!(dataset = %ds.name, indexed = stats.indexed, unchanged = stats.unchanged,
                      removed = stats.removed, failed = stats.failed.len(), rows = stats.rows,
                      "index up to date");
                for (path, err) in &stats.failed {
                    warn!(dataset = %ds.name, %path, %err, "file not indexed");
                }
            }
            Err(e) => warn!(dataset = %ds.name, error = %e, "index build failed; the previous index stays in use"),
        }
        // The generation is published before the build counts as ended, so that a follower
        // started after a builder's readiness finds it.
        let published = match (&result, ds.published.as_ref().and_then(|p| p.publisher.as_ref().map(|x| (p, x)))) {
            (Ok(_), Some((root, publisher))) => Some(publisher.publish(&ds.index).await.map_err(|e| {
                warn!(dataset = %ds.name, index_root = %root.url, error = %e, "the index could not be published; it is served here, and the next build publishes again");
                e.to_string()
            })),
            _ => None,
        };
        if ds.build.ended(result.is_ok()) {
            info!(dataset = %ds.name, "first index build since start ended; lookups are authoritative");
        }
        result.map(|b| Reindexed {
            build: Some(b),
            published,
            loaded: None,
        })
    }

    /// A follower's load of the newest published generation of one dataset. The dataset is
    /// served once it has a generation (loaded now, or kept in `index_dir` from before).
    async fn load(&self, ds: &Dataset) -> Result<Reindexed> {
        let Some(root) = &ds.published else {
            return Err(Error::InvalidArgument(format!(
                "dataset {} has no index_root to follow",
                quoted(&ds.name)
            )));
        };
        let before = ds.index.followed().ok().flatten();
        let repair = ds.index.needs_repair();
        let result = publish::follow(&ds.index, root.store.as_ref(), repair).await;
        match &result {
            Ok(s) => {
                if let Some(id) = &s.installed {
                    info!(dataset = %ds.name, lineage = %id.lineage, generation = id.generation,
                          downloaded = s.segments_downloaded, bytes = s.bytes_downloaded, "published index generation loaded");
                    if before.as_ref().is_some_and(|b| b.lineage != id.lineage) {
                        // File ids belong to a lineage: footers cached under the old ones go.
                        self.footers.forget_dataset(ds.number);
                    }
                }
            }
            Err(e) => warn!(dataset = %ds.name, index_root = %root.url, error = %e,
                            "the published index could not be loaded; the generation in use (if any) stays"),
        }
        let has_generation = ds.index.followed().ok().flatten().is_some();
        if (result.is_ok() || has_generation) && ds.build.ended(result.is_ok()) {
            info!(dataset = %ds.name, "first published generation loaded; lookups are authoritative");
        }
        result.map_err(Error::from).map(|l| Reindexed {
            loaded: Some(l),
            ..Default::default()
        })
    }

    /// True when a dataset's index has a segment found corrupt, which its next build rebuilds.
    pub fn needs_repair(&self) -> bool {
        self.datasets.iter().any(|d| d.index.needs_repair())
    }

    /// A receiver that changes whenever an index build of every dataset has ended.
    pub fn watch_builds(&self) -> tokio::sync::watch::Receiver<u64> {
        self.builds.subscribe()
    }

    /// Bring a FITS dataset's header catalog up to date (refreshes never overlap).
    pub async fn refresh_headers(&self, ds: &FitsDataset) -> Result<BuildStats> {
        let _running = ds.refresh.lock().await;
        let store = self.fits_store(ds, &Arc::new(IoStats::default()));
        let opts = self.scan_options();
        let concurrency = match ds.backend {
            Backend::File => self.fits_config.concurrency.min(4),
            _ => self.fits_config.concurrency,
        };
        let result = crate::fits_lake::catalog::refresh(store, &ds.catalog, opts, concurrency).await;
        let result = match result {
            Ok((stats, cost)) => {
                info!(dataset = %ds.name, read = stats.indexed, unchanged = stats.unchanged, removed = stats.removed,
                      failed = stats.failed.len(), hdus = stats.rows, requests = cost.requests, bytes = cost.bytes,
                      "header catalog up to date");
                for (path, err) in &stats.failed {
                    warn!(dataset = %ds.name, %path, %err, "file not read; it is read again by the next refresh");
                }
                Ok(stats)
            }
            Err(e) => {
                warn!(dataset = %ds.name, error = %e, "header catalog refresh failed; the previous catalog stays in use");
                Err(e)
            }
        };
        if ds.build.ended(result.is_ok()) {
            info!(dataset = %ds.name, "first header catalog refresh since start ended");
        }
        result
    }

    /// How headers are read.
    pub fn scan_options(&self) -> crate::fits_lake::file_headers::ScanOptions {
        crate::fits_lake::file_headers::ScanOptions {
            header_read_bytes: self.fits_config.header_read_bytes,
            max_gzip_bytes: self.fits_config.max_gzip_bytes,
        }
    }

    /// A store of a FITS dataset for one request: counts into the totals and into `request`.
    pub fn fits_store(&self, ds: &FitsDataset, request: &Arc<IoStats>) -> Arc<dyn ObjectStore> {
        Arc::new(CountingStore::new(
            ds.store.clone(),
            ds.range_reads,
            vec![self.io.clone(), request.clone()],
        ))
    }

    pub fn flush(&self) -> Result<()> {
        self.index.flush().map_err(Error::from)
    }
}
