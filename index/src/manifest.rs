//! The list of a dataset's segments, and how a new generation of it is committed.
//!
//! Segment files live in a directory of their own (`{index_dir}/segments/{dataset}/`); the
//! **manifest**, in sled (tree `{dataset}/manifest`), names the ones that make the current
//! generation. Committing a generation is one sled transaction that replaces the manifest (its
//! generation number + 1) and applies the catalog's changes with it, so that the files the
//! catalog holds and the segments that index them always move together:
//!
//! 1. the new segments are written as `{name}.tmp` and synced ([`crate::segment::SegmentWriter`]);
//! 2. [`SegmentDir::commit`] renames them to `{name}`, syncs the directory, then runs the
//!    transaction (which fails if another commit came first) and flushes sled;
//! 3. the segments the new generation no longer names are deleted.
//!
//! A crash before step 2's transaction leaves the old generation (the new files are orphans);
//! after it, the new one (the old files are orphans). [`SegmentDir::remove_unnamed`] (which
//! a build runs first, under the dataset's build lock) deletes orphans: every file or
//! directory (a build's scratch space) of the segment directory the manifest does not name.
//!
//! The manifest is small (a few dozen segments): `version:u8 generation:u64 next_ordinal:u64
//! count:u32` then per segment `name_len:u16 name bytes:u64 alerts:u64 level:u8 first:u64
//! end:u64`, little-endian. `first..end` is the range of ordinals the segment's files were given:
//! a segment that fails its checksums is dropped with the catalog entries of the files in that
//! range, which the next build then reads again.

use std::path::{Path, PathBuf};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::{IndexError, Result};

const MANIFEST_KEY: &[u8] = b"manifest";
/// On a follower: the published generation installed (`{lineage}:{generation}`).
const FOLLOWED_KEY: &[u8] = b"followed";
const MANIFEST_VERSION: u8 = 2;

/// One segment of a generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRef {
    /// File name inside the dataset's segment directory.
    pub name: String,
    pub bytes: u64,
    /// Alerts (rows of its id table) it holds.
    pub alerts: u64,
    /// 0 for a build's segment; merges make higher levels.
    pub level: u8,
    /// The ordinals of the files this segment indexes are in `first..end`, and no other
    /// segment's are.
    pub first: u64,
    pub end: u64,
}

/// The current generation of a dataset's segments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    pub generation: u64,
    /// The first ordinal no file has been given yet (ordinals are never reused).
    pub next_ordinal: u64,
    pub segments: Vec<SegmentRef>,
}

impl Manifest {
    fn encode(&self) -> Vec<u8> {
        let mut v = vec![MANIFEST_VERSION];
        v.extend_from_slice(&self.generation.to_le_bytes());
        v.extend_from_slice(&self.next_ordinal.to_le_bytes());
        v.extend_from_slice(&(self.segments.len() as u32).to_le_bytes());
        for s in &self.segments {
            v.extend_from_slice(&(s.name.len() as u16).to_le_bytes());
            v.extend_from_slice(s.name.as_bytes());
            v.extend_from_slice(&s.bytes.to_le_bytes());
            v.extend_from_slice(&s.alerts.to_le_bytes());
            v.push(s.level);
            v.extend_from_slice(&s.first.to_le_bytes());
            v.extend_from_slice(&s.end.to_le_bytes());
        }
        v
    }

    fn decode(b: &[u8]) -> Result<Self> {
        let bad = || IndexError::Corrupt("malformed segment manifest".into());
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8]> {
            let s = b.get(at..at + n).ok_or_else(bad)?;
            at += n;
            Ok(s)
        };
        let version = take(1)?[0];
        if version != MANIFEST_VERSION {
            return Err(IndexError::Corrupt(format!("segment manifest version {version}")));
        }
        let u64_ = |s: &[u8]| u64::from_le_bytes(s.try_into().expect("8 bytes"));
        let generation = u64_(take(8)?);
        let next_ordinal = u64_(take(8)?);
        let count = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
        let mut segments = Vec::new();
        for _ in 0..count {
            let len = u16::from_le_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
            let name = String::from_utf8(take(len)?.to_vec()).map_err(|_| bad())?;
            let bytes = u64_(take(8)?);
            let alerts = u64_(take(8)?);
            let level = take(1)?[0];
            let first = u64_(take(8)?);
            let end = u64_(take(8)?);
            segments.push(SegmentRef {
                name,
                bytes,
                alerts,
                level,
                first,
                end,
            });
        }
        Ok(Manifest {
            generation,
            next_ordinal,
            segments,
        })
    }
}

/// A catalog change committed with a generation: a key of the catalog tree set or removed.
pub type CatalogChange = (Vec<u8>, Option<Vec<u8>>);

/// A dataset's segment directory and its manifest.
#[derive(Clone)]
pub struct SegmentDir {
    dir: PathBuf,
    manifest: sled::Tree,
    catalog: sled::Tree,
    db: sled::Db,
}

impl SegmentDir {
    /// Open (creating) the directory and delete what the manifest does not name: the segments
    /// of a commit that did not happen, or of a generation replaced before a crash.
    pub fn open(dir: &Path, db: &sled::Db, manifest: sled::Tree, catalog: sled::Tree) -> Result<Self> {
        let io = |e: std::io::Error| IndexError::Corrupt(format!("segment directory {}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        Ok(SegmentDir {
            dir: dir.to_path_buf(),
            manifest,
            catalog,
            db: db.clone(),
        })
    }

    /// Delete every file and directory the current generation does not name: what a build or
    /// merge that died left. Only under the dataset's build lock (a build under way owns its
    /// staged segment and scratch directory). Returns how many were removed.
    pub fn remove_unnamed(&self) -> Result<usize> {
        let io = |e: std::io::Error| IndexError::Corrupt(format!("segment directory {}: {e}", self.dir.display()));
        let named: std::collections::HashSet<String> = self.manifest()?.segments.into_iter().map(|r| r.name).collect();
        let mut removed = 0;
        for e in std::fs::read_dir(&self.dir).map_err(io)? {
            let e = e.map_err(io)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if named.contains(&name) {
                continue;
            }
            tracing::info!(path = %e.path().display(), "removing what no generation names (left by an interrupted build or merge)");
            if e.file_type().map_err(io)?.is_dir() {
                std::fs::remove_dir_all(e.path()).map_err(io)?;
            } else {
                std::fs::remove_file(e.path()).map_err(io)?;
            }
            removed += 1;
        }
        Ok(removed)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Where to write a new segment before its commit.
    pub fn staging_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.tmp"))
    }

    /// A name for the `n`-th new segment of the generation after `m`.
    pub fn new_name(m: &Manifest, n: usize) -> String {
        format!("g{:012}-{n:04}.seg", m.generation + 1)
    }

    pub fn manifest(&self) -> Result<Manifest> {
        match self.manifest.get(MANIFEST_KEY)? {
            Some(b) => Manifest::decode(&b),
            None => Ok(Manifest::default()),
        }
    }

    /// Commit the generation after `base`: `add` (written to their staging paths) join, `remove`
    /// leave, `next_ordinal` moves on, and the catalog changes apply, all at once. Fails,
    /// changing nothing, if the manifest is no longer `base` (another commit came first).
    pub fn commit(
        &self,
        base: &Manifest,
        add: Vec<SegmentRef>,
        remove: &[String],
        next_ordinal: u64,
        catalog: Vec<CatalogChange>,
    ) -> Result<Manifest> {
        let io = |e: std::io::Error| IndexError::Corrupt(format!("segment directory {}: {e}", self.dir.display()));
        for s in &add {
            std::fs::rename(self.staging_path(&s.name), self.path(&s.name)).map_err(io)?;
        }
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io)?;
        let mut next = base.clone();
        next.generation += 1;
        next.next_ordinal = next_ordinal.max(base.next_ordinal);
        next.segments.retain(|s| !remove.contains(&s.name));
        next.segments.extend(add.iter().cloned());
        let encoded = next.encode();
        let expected = base.encode();
        let fresh = base == &Manifest::default();
        let outcome = (&self.manifest, &self.catalog).transaction(|(m, c)| {
            let current = m.get(MANIFEST_KEY)?;
            let same = match &current {
                Some(b) => b.as_ref() == expected.as_slice(),
                None => fresh,
            };
            if !same {
                return Err(ConflictableTransactionError::Abort(()));
            }
            m.insert(MANIFEST_KEY, encoded.as_slice())?;
            for (k, v) in &catalog {
                match v {
                    Some(v) => c.insert(k.as_slice(), v.as_slice())?,
                    None => c.remove(k.as_slice())?,
                };
            }
            Ok(())
        });
        match outcome {
            Ok(()) => {}
            Err(TransactionError::Abort(())) => {
                for s in &add {
                    let _ = std::fs::remove_file(self.path(&s.name));
                }
                return Err(IndexError::Corrupt(format!(
                    "the segment manifest moved past generation {} during a commit",
                    base.generation
                )));
            }
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        }
        self.db.flush()?;
        for name in remove {
            let _ = std::fs::remove_file(self.path(name));
        }
        Ok(next)
    }
}

impl SegmentDir {
    /// The published generation installed here (`{lineage}:{generation}`), on a follower.
    pub fn followed(&self) -> Result<Option<String>> {
        Ok(self
            .manifest
            .get(FOLLOWED_KEY)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Install a generation published elsewhere (a follower): the `staged` segments (written to
    /// their staging paths, checked) join under their names, and one transaction replaces the
    /// manifest with `next` and the catalog with `catalog`, and records `followed`. Then the
    /// segments `next` does not name are deleted. Only under the dataset's build lock.
    pub fn install(
        &self,
        next: &Manifest,
        staged: &[String],
        catalog: &[(Vec<u8>, Vec<u8>)],
        followed: &str,
    ) -> Result<()> {
        let io = |e: std::io::Error| IndexError::Corrupt(format!("segment directory {}: {e}", self.dir.display()));
        for name in staged {
            std::fs::rename(self.staging_path(name), self.path(name)).map_err(io)?;
        }
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io)?;
        let keep: std::collections::HashSet<&[u8]> = catalog.iter().map(|(k, _)| k.as_slice()).collect();
        let mut stale = Vec::new();
        for k in self.catalog.iter().keys() {
            let k = k?;
            if !keep.contains(k.as_ref()) {
                stale.push(k);
            }
        }
        let encoded = next.encode();
        let outcome = (&self.manifest, &self.catalog).transaction(|(m, c)| {
            m.insert(MANIFEST_KEY, encoded.as_slice())?;
            m.insert(FOLLOWED_KEY, followed.as_bytes())?;
            for k in &stale {
                c.remove(k.as_ref())?;
            }
            for (k, v) in catalog {
                c.insert(k.as_slice(), v.as_slice())?;
            }
            Ok::<(), ConflictableTransactionError<()>>(())
        });
        match outcome {
            Ok(()) => {}
            Err(TransactionError::Abort(())) => return Err(IndexError::Corrupt("an install was aborted".into())),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        }
        self.db.flush()?;
        self.remove_unnamed()?;
        Ok(())
    }

    /// Forget everything: the manifest, the catalog, the followed marker and every segment
    /// file (a builder taking over an index directory a follower filled).
    pub fn clear(&self) -> Result<()> {
        self.manifest.clear()?;
        self.catalog.clear()?;
        self.db.flush()?;
        self.remove_unnamed()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::SegmentWriter;

    fn write(dir: &SegmentDir, name: &str, rows: u64) -> SegmentRef {
        let mut w = SegmentWriter::create(&dir.staging_path(name)).unwrap();
        w.table("t", 1).unwrap();
        for i in 0..rows {
            w.push(&[i]).unwrap();
        }
        let bytes = w.finish(b"").unwrap();
        SegmentRef {
            name: name.to_string(),
            bytes,
            alerts: rows,
            level: 0,
            first: 0,
            end: rows,
        }
    }

    fn open(path: &Path, db: &sled::Db) -> SegmentDir {
        SegmentDir::open(
            path,
            db,
            db.open_tree("d/manifest").unwrap(),
            db.open_tree("d/files").unwrap(),
        )
        .unwrap()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn generations_commit_with_the_catalog_and_orphans_go() {
        let tmp = tempfile::tempdir().unwrap();
        let (db_path, seg) = (tmp.path().join("db"), tmp.path().join("segments"));
        let db = sled::open(&db_path).unwrap();
        let d = open(&seg, &db);
        let m0 = d.manifest().unwrap();
        assert_eq!(m0, Manifest::default());
        let a = write(&d, &SegmentDir::new_name(&m0, 0), 10);
        let m1 = d
            .commit(
                &m0,
                vec![a.clone()],
                &[],
                10,
                vec![(b"f1".to_vec(), Some(b"one".to_vec()))],
            )
            .unwrap();
        assert_eq!(
            (m1.generation, m1.next_ordinal, m1.segments.clone()),
            (1, 10, vec![a.clone()])
        );
        assert_eq!(
            db.open_tree("d/files").unwrap().get(b"f1").unwrap().unwrap().as_ref(),
            b"one"
        );
        // A merge replaces `a` by `b`; a stale base is refused and changes nothing.
        let b = write(&d, &SegmentDir::new_name(&m1, 0), 20);
        assert!(d.commit(&m0, vec![b.clone()], &[], 20, vec![]).is_err());
        assert_eq!(d.manifest().unwrap(), m1);
        let b = write(&d, &SegmentDir::new_name(&m1, 1), 20);
        let m2 = d
            .commit(
                &m1,
                vec![b.clone()],
                std::slice::from_ref(&a.name),
                20,
                vec![(b"f1".to_vec(), None)],
            )
            .unwrap();
        assert_eq!(m2.segments, vec![b.clone()]);
        assert_eq!(files(&seg), vec![b.name.clone()]);
        assert!(db.open_tree("d/files").unwrap().get(b"f1").unwrap().is_none());
        // A crash after writing (staged, or renamed but not committed): the next open removes
        // what no generation names, and the manifest is as committed.
        write(&d, "g000000000003-0000.seg", 5);
        std::fs::write(seg.join("g000000000003-0001.seg"), b"renamed, never committed").unwrap();
        drop(d);
        drop(db);
        let db = sled::open(&db_path).unwrap();
        let d = open(&seg, &db);
        std::fs::create_dir(seg.join("scratch-g000000000003")).unwrap();
        assert_eq!(d.remove_unnamed().unwrap(), 3);
        assert_eq!(d.manifest().unwrap(), m2);
        assert_eq!(files(&seg), vec![b.name]);
    }

    #[test]
    fn the_manifest_round_trips_and_refuses_garbage() {
        let m = Manifest {
            generation: 7,
            next_ordinal: 1 << 40,
            segments: vec![SegmentRef {
                name: "g000000000007-0000.seg".into(),
                bytes: 123,
                alerts: 45,
                level: 2,
                first: 1 << 39,
                end: (1 << 39) + 45,
            }],
        };
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        let e = m.encode();
        assert!(Manifest::decode(&e[..e.len() - 1]).is_err());
        let mut other = e.clone();
        other[0] = 9;
        assert!(Manifest::decode(&other).is_err());
    }
}
