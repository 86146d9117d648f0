//! The index as lookups see it: one generation's segments, and where each live ordinal is.
//!
//! A [`View`] is loaded after every commit (a build, a merge, a repair) and swapped in whole:
//! a lookup takes the current one (an `Arc`) and never sees half a generation. Loading opens
//! the segments (a memory map each; only their trailers and table indexes are read) and reads
//! the catalog, whose entries give each live file's base ordinal and row groups: a few
//! thousand entries for a lake of hundreds of millions of alerts.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::catalog::Catalog;
use crate::idmap::SegmentSet;
use crate::manifest::{Manifest, SegmentDir};
use crate::segment::Segment;
use crate::{IndexError, Location, Result};

/// One live file's ordinals: `base..base + rows`.
struct Span {
    file_id: u64,
    rows: u64,
    /// The position of each row group's first row.
    starts: Vec<u64>,
}

pub(crate) struct View {
    pub manifest: Manifest,
    pub set: SegmentSet,
    /// Live files by base ordinal.
    files: BTreeMap<u64, Span>,
    /// Segments of the generation that could not be opened: (path, why).
    pub broken: Vec<(String, String)>,
}

impl View {
    #[cfg(test)]
    pub fn empty() -> Self {
        View {
            manifest: Manifest::default(),
            set: SegmentSet::default(),
            files: BTreeMap::new(),
            broken: Vec::new(),
        }
    }

    pub fn load(dir: &SegmentDir, catalog: &Catalog) -> Result<Self> {
        let manifest = dir.manifest()?;
        let mut segments = Vec::with_capacity(manifest.segments.len());
        let mut broken = Vec::new();
        for r in &manifest.segments {
            let path = dir.path(&r.name);
            match Segment::open(&path).and_then(|s| SegmentSet::new(vec![s.clone()]).map(|_| s)) {
                Ok(s) => {
                    s.advise_random();
                    segments.push(s)
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "an index segment cannot be opened: it is not served, and the next build rebuilds it from the lake");
                    broken.push((path.display().to_string(), e.to_string()));
                }
            }
        }
        let mut files = BTreeMap::new();
        for f in catalog.files()? {
            if f.rows() == 0 {
                continue; // no ordinal is its (the next file has the same base)
            }
            let mut starts = Vec::with_capacity(f.row_groups.len());
            let mut at = 0;
            for n in &f.row_groups {
                starts.push(at);
                at += n;
            }
            files.insert(
                f.base_ordinal,
                Span {
                    file_id: f.file_id,
                    rows: at,
                    starts,
                },
            );
        }
        Ok(View {
            manifest,
            set: SegmentSet::new(segments)?,
            files,
            broken,
        })
    }

    fn span(&self, ordinal: u64) -> Option<(u64, &Span)> {
        let (base, s) = self.files.range(..=ordinal).next_back()?;
        (ordinal - base < s.rows).then_some((*base, s))
    }

    /// True when the ordinal belongs to a file the catalog holds (not one dropped or changed).
    pub fn live(&self, ordinal: u64) -> bool {
        self.span(ordinal).is_some()
    }

    /// Where a live ordinal's row is.
    pub fn locate(&self, ordinal: u64) -> Result<Location> {
        let (base, s) = self
            .span(ordinal)
            .ok_or_else(|| IndexError::Corrupt(format!("ordinal {ordinal} is in no indexed file")))?;
        let pos = ordinal - base;
        let rg = s.starts.partition_point(|&st| st <= pos) - 1;
        Ok(Location::new(s.file_id, rg as u32, (pos - s.starts[rg]) as u32))
    }

    /// The file id and position of a live ordinal.
    pub fn position(&self, ordinal: u64) -> Option<(u64, u64)> {
        self.span(ordinal).map(|(base, s)| (s.file_id, ordinal - base))
    }

    /// Refuse to answer from a generation with a segment that cannot be read: an answer
    /// without its alerts would be a partial answer presented as whole.
    pub fn check(&self) -> Result<()> {
        match self.broken.first() {
            Some((path, why)) => Err(IndexError::BadSegment {
                path: path.into(),
                message: why.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// The current view of a dataset, shared by every handle of it.
#[derive(Clone)]
pub(crate) struct SharedView(Arc<std::sync::RwLock<Arc<View>>>);

impl SharedView {
    pub fn new(v: View) -> Self {
        SharedView(Arc::new(std::sync::RwLock::new(Arc::new(v))))
    }

    pub fn get(&self) -> Arc<View> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, v: View) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_map_to_files_row_groups_and_rows() {
        let mut files = BTreeMap::new();
        files.insert(
            100,
            Span {
                file_id: 7,
                rows: 30,
                starts: vec![0, 10, 25],
            },
        );
        files.insert(
            200,
            Span {
                file_id: 9,
                rows: 5,
                starts: vec![0],
            },
        );
        let v = View { files, ..View::empty() };
        assert!(!v.live(99));
        assert_eq!(v.locate(100).unwrap(), Location::new(7, 0, 0));
        assert_eq!(v.locate(109).unwrap(), Location::new(7, 0, 9));
        assert_eq!(v.locate(110).unwrap(), Location::new(7, 1, 0));
        assert_eq!(v.locate(129).unwrap(), Location::new(7, 2, 4));
        assert!(!v.live(130) && !v.live(199) && v.locate(150).is_err());
        assert_eq!(v.locate(204).unwrap(), Location::new(9, 0, 4));
        assert!(!v.live(205));
        assert_eq!(v.position(202), Some((9, 2)));
    }
}
