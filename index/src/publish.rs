//! A dataset's index, published to shared storage for followers to serve from.
//!
//! One process builds (`index_role = "build"`); it publishes every generation under the
//! dataset's `index_root`, on any object store. Followers (`index_role = "follow"`) never read
//! the lake to build: they load the newest published generation into their own index directory
//! (which caches its segments) and serve lookups from it exactly as the builder does.
//!
//! ```text
//!  {index_root}/latest.json                          the newest generation's manifest (a copy)
//!  {index_root}/manifests/{lineage}-g{generation}.json   every retained generation's manifest
//!  {index_root}/state/{lineage}/g{generation}.kv         its catalog and objectId names
//!  {index_root}/segments/{lineage}/{segment}             the segments (shared by generations)
//! ```
//!
//! **Order.** A generation is written segments first, then its state, then its manifest, then
//! `latest.json`: a reader that finds a manifest finds everything it names. Object stores
//! replace an object whole (S3's PUT; the local and HDFS stores write a temporary file and
//! rename it), so `latest.json` is never half written.
//!
//! **Lineage.** Each index directory has a random 64-bit id, its lineage. Generation numbers
//! are only ordered within one: a builder that starts over (a new `index_dir`) publishes
//! generation 1 of a new lineage, and followers load whatever `latest.json` names, newer or
//! not. Segment objects are named by lineage, so two lineages never overwrite each other's.
//!
//! **Checks.** The manifest gives every segment's and the state's size and CRC-32 (of the whole
//! object); a follower verifies both after a download, before anything is installed, and then
//! the segment's own trailer and block checksums as usual.
//!
//! **Retention.** A generation is deleted once the one that replaced it has been published for
//! `retain` (a follower still downloading it is not cut off), with the segments no retained
//! generation names; `latest.json`'s generation is never deleted.
//!
//! **Installing** (a follower): the new segments are downloaded under the index directory,
//! then one sled transaction replaces the manifest and the catalog; the dataset's lookups swap
//! to the new generation whole ([`crate::view`]), never a mix of two.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::manifest::{Manifest, SegmentRef};
use crate::{DatasetIndex, IndexError, Result};

/// The version of the published layout (this module's objects).
pub const PUBLISHED_FORMAT: u32 = 1;
const LATEST: &str = "latest.json";
const STATE_MAGIC: &[u8; 8] = b"AFSTATE1";

/// One published segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedSegment {
    /// Its name in the builder's index (unique within the lineage).
    pub name: String,
    pub bytes: u64,
    pub alerts: u64,
    pub level: u8,
    pub first: u64,
    pub end: u64,
    /// CRC-32 of the whole file.
    pub crc32: u32,
}

/// A published object other than a segment: its path under the index root, size and CRC-32.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedObject {
    pub path: String,
    pub bytes: u64,
    pub crc32: u32,
}

/// The manifest of one published generation (`latest.json` is a copy of the newest one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedManifest {
    pub format: u32,
    /// The index's layout version (segments and catalog entries); a follower of another layout
    /// refuses it.
    pub layout: String,
    pub dataset: String,
    /// 16 hex digits.
    pub lineage: String,
    pub generation: u64,
    /// When it was published, milliseconds since the epoch.
    pub published_ms: u64,
    pub next_ordinal: u64,
    pub segments: Vec<PublishedSegment>,
    /// The catalog entries and objectId names.
    pub state: PublishedObject,
}

impl PublishedManifest {
    fn manifest_path(&self) -> String {
        format!("manifests/{}-g{:012}.json", self.lineage, self.generation)
    }

    fn segment_path(&self, s: &PublishedSegment) -> String {
        format!("segments/{}/{}", self.lineage, s.name)
    }

    /// The name a follower gives a published segment in its own index directory.
    fn local_name(&self, s: &PublishedSegment) -> String {
        format!("{}-{}", self.lineage, s.name)
    }

    /// What identifies the generation across processes.
    pub fn id(&self) -> PublishedId {
        PublishedId {
            lineage: self.lineage.clone(),
            generation: self.generation,
        }
    }
}

/// A published generation: its lineage and number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedId {
    pub lineage: String,
    pub generation: u64,
}

impl std::fmt::Display for PublishedId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} generation {}", self.lineage, self.generation)
    }
}

fn storage(path: &str, source: object_store::Error) -> IndexError {
    IndexError::Storage {
        path: path.to_string(),
        source,
    }
}

fn store_path(path: &str) -> Result<StorePath> {
    StorePath::parse(path).map_err(|e| IndexError::Corrupt(format!("published path {path:?}: {e}")))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The catalog and names of a generation as one object: `AFSTATE1`, then records `tree:u8
/// key_len:u32 key value_len:u32 value` (tree 0: catalog, 1: names), then the CRC-32 of all
/// that precedes it; little-endian.
fn encode_state(catalog: &[(Vec<u8>, Vec<u8>)], names: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut v = STATE_MAGIC.to_vec();
    for (tree, kvs) in [(0u8, catalog), (1u8, names)] {
        for (k, val) in kvs {
            v.push(tree);
            v.extend_from_slice(&(k.len() as u32).to_le_bytes());
            v.extend_from_slice(k);
            v.extend_from_slice(&(val.len() as u32).to_le_bytes());
            v.extend_from_slice(val);
        }
    }
    let crc = crc32fast::hash(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    v
}

/// Key-value pairs of a sled tree.
pub(crate) type Kvs = Vec<(Vec<u8>, Vec<u8>)>;

fn decode_state(b: &[u8]) -> Result<(Kvs, Kvs)> {
    let bad = |m: &str| IndexError::Corrupt(format!("published index state: {m}"));
    if b.len() < STATE_MAGIC.len() + 4 || &b[..STATE_MAGIC.len()] != STATE_MAGIC {
        return Err(bad("not a state object"));
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(bad("checksum mismatch"));
    }
    let mut at = STATE_MAGIC.len();
    let mut take = |n: usize| -> Result<&[u8]> {
        let s = body.get(at..at + n).ok_or_else(|| bad("truncated"))?;
        at += n;
        Ok(s)
    };
    let (mut catalog, mut names) = (Vec::new(), Vec::new());
    loop {
        let tree = match take(1) {
            Ok(t) => t[0],
            Err(_) => break,
        };
        let klen = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
        let k = take(klen)?.to_vec();
        let vlen = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
        let v = take(vlen)?.to_vec();
        match tree {
            0 => catalog.push((k, v)),
            1 => names.push((k, v)),
            _ => return Err(bad("unknown tree")),
        }
    }
    Ok((catalog, names))
}

/// CRC-32 of a local file, read in 1 MiB pieces.
fn file_crc(path: &std::path::Path) -> Result<u32> {
    let io = |e: std::io::Error| IndexError::Corrupt(format!("cannot read {}: {e}", path.display()));
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            return Ok(h.finalize());
        }
        h.update(&buf[..n]);
    }
}

/// Read the newest published manifest; None when nothing is published yet.
pub async fn latest(store: &dyn ObjectStore) -> Result<Option<PublishedManifest>> {
    let bytes = match store.get(&store_path(LATEST)?).await {
        Ok(r) => r.bytes().await.map_err(|e| storage(LATEST, e))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(storage(LATEST, e)),
    };
    let m: PublishedManifest = serde_json::from_slice(&bytes)
        .map_err(|e| IndexError::Corrupt(format!("the published {LATEST} cannot be read: {e}")))?;
    Ok(Some(m))
}

/// Publishes a building index's generations (one per dataset and index root).
pub struct Publisher {
    store: Arc<dyn ObjectStore>,
    retain: Duration,
    /// CRC-32 of the local segments already computed, by name.
    crcs: std::sync::Mutex<HashMap<String, u32>>,
}

/// What a publication did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishStats {
    /// The generation now published (None: it was published already).
    pub published: Option<PublishedId>,
    pub segments_uploaded: usize,
    pub bytes_uploaded: u64,
    /// Generations deleted after their retention.
    pub generations_deleted: usize,
    pub segments_deleted: usize,
}

impl Publisher {
    pub fn new(store: Arc<dyn ObjectStore>, retain: Duration) -> Self {
        Publisher {
            store,
            retain,
            crcs: Default::default(),
        }
    }

    /// Publish the dataset's current generation unless `latest.json` already names it, then
    /// delete what retention allows. Holds the dataset's build lock, so that no merge deletes a
    /// segment while it is uploaded.
    pub async fn publish(&self, ix: &DatasetIndex) -> Result<PublishStats> {
        let _serialized = ix.build_lock.lock().await;
        let mut stats = PublishStats::default();
        let lineage = ix.lineage();
        let m = ix.segdir.manifest()?;
        let current = latest(self.store.as_ref()).await?;
        if let Some(c) = current.as_ref().filter(|c| c.dataset != ix.name()) {
            return Err(IndexError::Corrupt(format!(
                "this index_root holds the published index of dataset {:?}; each dataset needs its own index_root",
                c.dataset
            )));
        }
        let published_now = current
            .as_ref()
            .is_some_and(|c| c.lineage == lineage && c.generation == m.generation);
        // The newest published generation: the one uploaded now, or the one `latest.json` named.
        let newest = if published_now {
            current
        } else {
            let manifest = self.upload(ix, &lineage, &m, &mut stats).await?;
            info!(dataset = %ix.name(), generation = manifest.generation, lineage = %manifest.lineage,
                  segments = manifest.segments.len(), uploaded = stats.segments_uploaded,
                  bytes = stats.bytes_uploaded, "index generation published");
            stats.published = Some(manifest.id());
            Some(manifest)
        };
        let expired = match &newest {
            Some(n) => self.expire(n, &mut stats).await,
            None => Ok(()),
        };
        if let Err(e) = expired {
            warn!(dataset = %ix.name(), error = %e, "old published index generations could not be deleted; the next publication retries");
        }
        Ok(stats)
    }

    async fn upload(
        &self,
        ix: &DatasetIndex,
        lineage: &str,
        m: &Manifest,
        stats: &mut PublishStats,
    ) -> Result<PublishedManifest> {
        let mut segments = Vec::with_capacity(m.segments.len());
        for s in &m.segments {
            let local = ix.segdir.path(&s.name);
            let cached = self.crcs.lock().ok().and_then(|c| c.get(&s.name).copied());
            let crc = match cached {
                Some(c) => c,
                None => {
                    let l = local.clone();
                    let c = tokio::task::spawn_blocking(move || file_crc(&l))
                        .await
                        .map_err(|e| IndexError::Corrupt(format!("checksum task failed: {e}")))??;
                    if let Ok(mut g) = self.crcs.lock() {
                        g.insert(s.name.clone(), c);
                    }
                    c
                }
            };
            let p = PublishedSegment {
                name: s.name.clone(),
                bytes: s.bytes,
                alerts: s.alerts,
                level: s.level,
                first: s.first,
                end: s.end,
                crc32: crc,
            };
            let path = format!("segments/{lineage}/{}", s.name);
            let there = match self.store.head(&store_path(&path)?).await {
                Ok(meta) => meta.size == s.bytes,
                Err(object_store::Error::NotFound { .. }) => false,
                Err(e) => return Err(storage(&path, e)),
            };
            if !there {
                self.upload_file(&local, &path).await?;
                stats.segments_uploaded += 1;
                stats.bytes_uploaded += s.bytes;
            }
            segments.push(p);
        }
        // Forget the checksums of segments no longer named (merged away).
        if let Ok(mut g) = self.crcs.lock() {
            let named: HashSet<&str> = m.segments.iter().map(|s| s.name.as_str()).collect();
            g.retain(|k, _| named.contains(k.as_str()));
        }
        let (catalog, names) = ix.state_snapshot()?;
        let state = encode_state(&catalog, &names);
        let state_path = format!("state/{lineage}/g{:012}.kv", m.generation);
        let state_obj = PublishedObject {
            path: state_path.clone(),
            bytes: state.len() as u64,
            crc32: crc32fast::hash(&state),
        };
        self.put(&state_path, state).await?;
        let manifest = PublishedManifest {
            format: PUBLISHED_FORMAT,
            layout: crate::layout().to_string(),
            dataset: ix.name().to_string(),
            lineage: lineage.to_string(),
            generation: m.generation,
            published_ms: now_ms(),
            next_ordinal: m.next_ordinal,
            segments,
            state: state_obj,
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| IndexError::Corrupt(e.to_string()))?;
        self.put(&manifest.manifest_path(), json.clone()).await?;
        self.put(LATEST, json).await?;
        Ok(manifest)
    }

    async fn put(&self, path: &str, bytes: Vec<u8>) -> Result<()> {
        self.store
            .put(&store_path(path)?, PutPayload::from(bytes))
            .await
            .map_err(|e| storage(path, e))?;
        Ok(())
    }

    /// Upload a local file in 8 MiB parts (one PUT when it is smaller).
    async fn upload_file(&self, local: &std::path::Path, path: &str) -> Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let io = |e: std::io::Error| IndexError::Corrupt(format!("cannot read {}: {e}", local.display()));
        let mut f = tokio::fs::File::open(local).await.map_err(io)?;
        let mut w = object_store::buffered::BufWriter::with_capacity(self.store.clone(), store_path(path)?, 8 << 20);
        let mut buf = vec![0u8; 1 << 20];
        let up = |e: std::io::Error| IndexError::Corrupt(format!("cannot upload {path}: {e}"));
        loop {
            let n = f.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            if let Err(e) = w.write_all(&buf[..n]).await {
                let _ = w.abort().await;
                return Err(up(e));
            }
        }
        w.shutdown().await.map_err(up)?;
        Ok(())
    }

    /// Delete the generations replaced more than `retain` ago, and the segments that no
    /// remaining generation names and that were written more than `retain` ago.
    /// `newest` is the generation `latest.json` names (read or written by the caller).
    async fn expire(&self, newest: &PublishedManifest, stats: &mut PublishStats) -> Result<()> {
        let listed: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&store_path("manifests")?))
            .try_collect()
            .await
            .map_err(|e| storage("manifests/", e))?;
        let mut manifests = Vec::new();
        for meta in listed {
            let path = meta.location.to_string();
            let body = match self.store.get(&meta.location).await {
                Ok(r) => r.bytes().await.map_err(|e| storage(&path, e))?,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(storage(&path, e)),
            };
            match serde_json::from_slice::<PublishedManifest>(&body) {
                Ok(m) => manifests.push(m),
                Err(e) => warn!(%path, error = %e, "a published manifest cannot be read; it is left alone"),
            }
        }
        manifests.sort_by_key(|m| (m.published_ms, m.generation));
        let now = now_ms();
        let retain = self.retain.as_millis() as u64;
        let mut kept = Vec::new();
        for (i, m) in manifests.iter().enumerate() {
            let replaced_at = manifests.get(i + 1).map(|n| n.published_ms);
            let expired = m.id() != newest.id() && replaced_at.is_some_and(|t| now.saturating_sub(t) >= retain);
            if !expired {
                kept.push(m);
                continue;
            }
            for path in [m.manifest_path(), m.state.path.clone()] {
                match self.store.delete(&store_path(&path)?).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(storage(&path, e)),
                }
            }
            stats.generations_deleted += 1;
        }
        let mut named: HashSet<String> = newest.segments.iter().map(|s| newest.segment_path(s)).collect();
        for m in &kept {
            named.extend(m.segments.iter().map(|s| m.segment_path(s)));
        }
        let segments: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&store_path("segments")?))
            .try_collect()
            .await
            .map_err(|e| storage("segments/", e))?;
        for meta in segments {
            let path = meta.location.to_string();
            let age = now.saturating_sub(meta.last_modified.timestamp_millis().max(0) as u64);
            if named.contains(&path) || age < retain {
                continue;
            }
            match self.store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => stats.segments_deleted += 1,
                Err(e) => return Err(storage(&path, e)),
            }
        }
        Ok(())
    }
}

/// What loading the newest published generation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FollowStats {
    /// The generation now installed, when it changed.
    pub installed: Option<PublishedId>,
    pub segments_downloaded: usize,
    pub bytes_downloaded: u64,
}

/// Load the newest generation published in `store` into the dataset's index, unless it is
/// installed already (and `repair` is false: then the local segments are checked again and
/// the missing or broken ones fetched). Fails, installing nothing, when a download fails its
/// checks or the storage fails; the generation in use stays.
pub async fn follow(ix: &DatasetIndex, store: &dyn ObjectStore, repair: bool) -> Result<FollowStats> {
    let _serialized = ix.build_lock.lock().await;
    let mut stats = FollowStats::default();
    let Some(m) = latest(store).await? else {
        return Err(IndexError::NotPublished(ix.name().to_string()));
    };
    if m.format != PUBLISHED_FORMAT || m.layout != crate::layout() {
        return Err(IndexError::Corrupt(format!(
            "the published index of {} has format {} layout {:?}; this astroflight reads format {PUBLISHED_FORMAT} layout {:?} (publish it again with this version)",
            ix.name(),
            m.format,
            m.layout,
            crate::layout()
        )));
    }
    if m.dataset != ix.name() {
        return Err(IndexError::Corrupt(format!(
            "the index at this index_root was published for dataset {:?}, not {:?}",
            m.dataset,
            ix.name()
        )));
    }
    check_manifest(&m)?;
    let installed = ix.followed()?;
    let broken = ix.needs_repair();
    if !repair && !broken && installed.as_ref() == Some(&m.id()) {
        return Ok(stats);
    }
    let current: HashMap<String, u64> = ix
        .segdir
        .manifest()?
        .segments
        .into_iter()
        .map(|s| (s.name, s.bytes))
        .collect();
    let mut refs = Vec::with_capacity(m.segments.len());
    let mut staged = Vec::new();
    for s in &m.segments {
        let local = m.local_name(s);
        let path = ix.segdir.path(&local);
        // A segment of the installed generation was verified when it was installed; one a
        // lookup found corrupt (or `repair`) is checked again.
        let trusted = current.get(&local) == Some(&s.bytes) && path.exists() && !repair && !broken;
        let ok = trusted || {
            let p = path.clone();
            let (bytes, crc) = (s.bytes, s.crc32);
            tokio::task::spawn_blocking(move || {
                std::fs::metadata(&p).map(|md| md.len()).ok() == Some(bytes) && file_crc(&p).ok() == Some(crc)
            })
            .await
            .unwrap_or(false)
        };
        if !ok {
            let to = ix.segdir.staging_path(&local);
            download(store, &m.segment_path(s), &to, s.bytes, s.crc32).await?;
            stats.segments_downloaded += 1;
            stats.bytes_downloaded += s.bytes;
            staged.push(local.clone());
        }
        refs.push(SegmentRef {
            name: local,
            bytes: s.bytes,
            alerts: s.alerts,
            level: s.level,
            first: s.first,
            end: s.end,
        });
    }
    let state_bytes = store
        .get(&store_path(&m.state.path)?)
        .await
        .map_err(|e| storage(&m.state.path, e))?
        .bytes()
        .await
        .map_err(|e| storage(&m.state.path, e))?;
    if state_bytes.len() as u64 != m.state.bytes || crc32fast::hash(&state_bytes) != m.state.crc32 {
        return Err(IndexError::Corrupt(format!(
            "the published {} does not match its manifest (size or checksum)",
            m.state.path
        )));
    }
    let (catalog, names) = decode_state(&state_bytes)?;
    let next = Manifest {
        generation: m.generation,
        next_ordinal: m.next_ordinal,
        segments: refs,
    };
    let lineage_changed = installed.as_ref().is_some_and(|i| i.lineage != m.lineage);
    let ix2 = ix.clone();
    let id = m.id();
    tokio::task::spawn_blocking(move || ix2.install(next, &staged, catalog, names, &id))
        .await
        .map_err(|e| IndexError::Corrupt(format!("install task failed: {e}")))??;
    if lineage_changed {
        info!(dataset = %ix.name(), lineage = %m.lineage, "the published index has a new lineage (its builder started over); installed it whole");
    }
    stats.installed = Some(m.id());
    Ok(stats)
}

/// The names a manifest gives become local file names and store paths: they must be plain
/// names (a manifest naming `../x` is refused, whoever wrote it).
fn check_manifest(m: &PublishedManifest) -> Result<()> {
    let plain = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let bad = |what: String| IndexError::Corrupt(format!("the published manifest names {what}: refused"));
    if m.lineage.len() != 16 || !m.lineage.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad(format!("lineage {:?}", m.lineage)));
    }
    if let Some(s) = m.segments.iter().find(|s| !plain(&s.name)) {
        return Err(bad(format!("segment {:?}", s.name)));
    }
    let state_ok = m
        .state
        .path
        .strip_prefix(&format!("state/{}/", m.lineage))
        .is_some_and(plain);
    if !state_ok {
        return Err(bad(format!("state object {:?}", m.state.path)));
    }
    Ok(())
}

/// Download one published object to `to`, checking its size and CRC-32; a file that fails is
/// removed.
async fn download(store: &dyn ObjectStore, path: &str, to: &std::path::Path, bytes: u64, crc: u32) -> Result<()> {
    let io = |e: std::io::Error| IndexError::Corrupt(format!("cannot write {}: {e}", to.display()));
    let mut stream = store
        .get(&store_path(path)?)
        .await
        .map_err(|e| storage(path, e))?
        .into_stream();
    let mut f = std::fs::File::create(to).map_err(io)?;
    let mut h = crc32fast::Hasher::new();
    let mut n = 0u64;
    let result: Result<()> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| storage(path, e))?;
            h.update(&chunk);
            n += chunk.len() as u64;
            f.write_all(&chunk).map_err(io)?;
        }
        if n != bytes || h.clone().finalize() != crc {
            return Err(IndexError::Corrupt(format!(
                "the published segment {path} does not match its manifest ({n} bytes, expected {bytes}; or its checksum)"
            )));
        }
        f.sync_all().map_err(io)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(to);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_naming_paths_outside_its_folders_is_refused() {
        let m = |name: &str, state: &str| PublishedManifest {
            format: PUBLISHED_FORMAT,
            layout: crate::layout().into(),
            dataset: "ztf".into(),
            lineage: "0123456789abcdef".into(),
            generation: 1,
            published_ms: 0,
            next_ordinal: 0,
            segments: vec![PublishedSegment {
                name: name.into(),
                bytes: 1,
                alerts: 1,
                level: 0,
                first: 0,
                end: 1,
                crc32: 0,
            }],
            state: PublishedObject {
                path: state.into(),
                bytes: 1,
                crc32: 0,
            },
        };
        let ok = "state/0123456789abcdef/g000000000001.kv";
        assert!(check_manifest(&m("g000000000001-0000.seg", ok)).is_ok());
        for (name, state) in [
            ("../../etc/x", ok),
            ("a/b.seg", ok),
            (".hidden", ok),
            ("g1.seg", "../state/x.kv"),
        ] {
            assert!(check_manifest(&m(name, state)).is_err(), "{name} {state}");
        }
        let mut bad = m("g1.seg", ok);
        bad.lineage = "../x".into();
        assert!(check_manifest(&bad).is_err());
    }

    #[test]
    fn state_round_trips_and_refuses_damage() {
        let cat = vec![(vec![0, 0, 0, 1], b"entry".to_vec()), (vec![0, 0, 0, 2], Vec::new())];
        let names = vec![(vec![9; 8], b"objectName".to_vec())];
        let b = encode_state(&cat, &names);
        assert_eq!(decode_state(&b).unwrap(), (cat, names));
        for i in [0, 9, b.len() / 2, b.len() - 1] {
            let mut bad = b.clone();
            bad[i] ^= 1;
            assert!(decode_state(&bad).is_err(), "flipped byte {i}");
        }
        assert!(decode_state(&b[..b.len() - 3]).is_err());
    }
}
