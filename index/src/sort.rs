//! Sorting more rows than memory holds: sorted runs spilled as segment files, then merged.
//!
//! Rows are gathered in a buffer of at most `memory_bytes`; a full buffer is sorted and written
//! as a run (a one-table [segment](crate::segment), so runs are compressed and checksummed like
//! the index itself). [`ExternalSorter::finish`] merges the runs (and what is left in the
//! buffer) with a heap, reading each run block by block and dropping the pages it has passed,
//! so that memory stays at the buffer plus one block per run whatever the number of rows.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::{Path, PathBuf};

use crate::segment::{Row, Segment, SegmentWriter, MAX_ARITY};
use crate::Result;

/// What one buffered row costs.
const ROW_BYTES: usize = std::mem::size_of::<Row>();

pub struct ExternalSorter {
    dir: PathBuf,
    arity: usize,
    capacity: usize,
    buf: Vec<Row>,
    runs: Vec<PathBuf>,
    rows: u64,
}

impl ExternalSorter {
    /// A sorter of rows of `arity` columns, spilling into `dir` (which it does not create or
    /// remove; its runs are removed as they are merged) when `memory_bytes` of rows are held.
    pub fn new(dir: &Path, arity: usize, memory_bytes: usize) -> Self {
        assert!((1..=MAX_ARITY).contains(&arity));
        let capacity = (memory_bytes / ROW_BYTES).max(1024);
        ExternalSorter {
            dir: dir.to_path_buf(),
            arity,
            capacity,
            buf: Vec::new(),
            runs: Vec::new(),
            rows: 0,
        }
    }

    pub fn push(&mut self, row: Row) -> Result<()> {
        if self.buf.len() == self.capacity {
            self.spill()?;
        }
        if self.buf.capacity() == 0 {
            // Grown in steps, not reserved whole: a small build never holds the full buffer.
            self.buf.reserve(self.capacity.min(1 << 16));
        }
        self.buf.push(row);
        self.rows += 1;
        Ok(())
    }

    /// Rows pushed so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Runs spilled so far.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    fn spill(&mut self) -> Result<()> {
        self.buf.sort_unstable();
        let path = self.dir.join(format!("run-{:06}.seg", self.runs.len()));
        let mut w = SegmentWriter::create_scratch(&path)?;
        w.table("run", self.arity)?;
        for r in &self.buf {
            w.push(&r[..self.arity])?;
        }
        w.finish(&[])?;
        self.runs.push(path);
        self.buf.clear();
        Ok(())
    }

    /// Every row pushed, in order, to `sink`.
    pub fn finish(mut self, mut sink: impl FnMut(&Row) -> Result<()>) -> Result<u64> {
        self.buf.sort_unstable();
        if self.runs.is_empty() {
            for r in &self.buf {
                sink(r)?;
            }
            return Ok(self.rows);
        }
        let segments: Vec<Segment> = self.runs.iter().map(|p| Segment::open(p)).collect::<Result<_>>()?;
        let mut iters: Vec<Box<dyn Iterator<Item = Result<Row>> + '_>> = Vec::new();
        for s in &segments {
            let t = s
                .table("run")
                .ok_or_else(|| crate::IndexError::Corrupt("a sort run without its table".into()))?;
            iters.push(Box::new(t.iter().releasing()));
        }
        iters.push(Box::new(std::mem::take(&mut self.buf).into_iter().map(Ok)));
        merge(iters, &mut sink)?;
        drop(segments);
        for p in &self.runs {
            let _ = std::fs::remove_file(p);
        }
        self.runs.clear();
        Ok(self.rows)
    }
}

/// Merge sorted streams of rows into one, in order (equal rows in the order of the streams).
pub fn merge<'a>(
    mut iters: Vec<Box<dyn Iterator<Item = Result<Row>> + 'a>>,
    sink: &mut dyn FnMut(&Row) -> Result<()>,
) -> Result<()> {
    // The heap holds the next row of each stream.
    let mut heap: BinaryHeap<Reverse<(Row, usize)>> = BinaryHeap::with_capacity(iters.len());
    for (i, it) in iters.iter_mut().enumerate() {
        if let Some(r) = it.next() {
            heap.push(Reverse((r?, i)));
        }
    }
    while let Some(Reverse((r, i))) = heap.pop() {
        sink(&r)?;
        if let Some(next) = iters[i].next() {
            heap.push(Reverse((next?, i)));
        }
    }
    Ok(())
}

impl Drop for ExternalSorter {
    fn drop(&mut self) {
        // A sorter dropped before it finished (an error, a cancelled build) leaves no runs.
        for p in &self.runs {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_across_runs_as_a_plain_sort_does() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = crate::TestRng(0x2545_f491_4f6c_dd1d);
        for (n, memory) in [
            (0usize, 1 << 20),
            (10, 1 << 20),
            (100_000, 32 * 1024 * 8),
            (50_000, 1 << 30),
        ] {
            let mut s = ExternalSorter::new(dir.path(), 3, memory);
            let mut want = Vec::new();
            for _ in 0..n {
                // Few distinct groups: many equal leading columns, duplicates too.
                let r = [rng.below(100), rng.below(7), rng.below(1000), 0];
                s.push(r).unwrap();
                want.push(r);
            }
            let spilled = s.runs() > 0;
            let mut got = Vec::new();
            assert_eq!(
                s.finish(|r| {
                    got.push(*r);
                    Ok(())
                })
                .unwrap(),
                n as u64
            );
            want.sort_unstable();
            assert_eq!(got, want, "{n} rows, {memory} bytes");
            assert_eq!(
                spilled,
                n * ROW_BYTES > memory.max(1024 * ROW_BYTES),
                "{n} rows, {memory} bytes"
            );
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "runs removed");
        }
    }

    #[test]
    fn a_sorter_dropped_early_leaves_no_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ExternalSorter::new(dir.path(), 1, 0);
        for i in (0..5000u64).rev() {
            s.push([i, 0, 0, 0]).unwrap();
        }
        assert!(s.runs() > 1);
        drop(s);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
