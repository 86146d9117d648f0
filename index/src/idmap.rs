//! The id maps of the segment index: alerts by id and by object, over a generation's segments.
//!
//! Every alert row of a dataset has an **ordinal**: each indexed file gets a base ordinal from
//! the manifest's counter, and its rows are base + position (as Delta Lake's row ids are), so
//! no location is stored per alert. Ordinals are never reused: a file indexed again gets new ones.
//! The newest copy of an alert that sits in several files is the one with the highest ordinal
//! (the file indexed last).
//!
//! Each segment holds three tables over the same alerts (see [`crate::segment`] for the format):
//!
//! | table   | row (sorted by all of it)        | answers                                       |
//! |---------|----------------------------------|-----------------------------------------------|
//! | `rows`  | ordinal, id, group, time         | what an ordinal holds                         |
//! | `group` | group, day, ordinal              | an object's alerts by day; its latest         |
//! | `id`    | id, ordinal                      | an alert by candid / diaSourceId              |
//!
//! * id: `candid` (ZTF) or `diaSourceId` (Rubin), its sign bit flipped (unsigned order is
//!   signed order);
//! * group: the objectId's [`ObjectKey`](crate::objkey::ObjectKey) (ZTF) or the `diaObjectId`,
//!   sign bit flipped (Rubin);
//! * time: 0 for an alert without one (null or NaN), else the float's bits mapped so that the
//!   unsigned order is the numeric order (never 0): undated alerts sort first;
//! * day: 0 for an alert without a time, else the whole days of its time (`floor(t)`, sign bit
//!   flipped; never 0). The `group` table needs an order of time, not the time itself (which
//!   `rows` holds): an object's consecutive days differ by a few units where the float bits of
//!   its times differ by ~2^31 a day, so the table is ~3.5 bytes per alert smaller. The latest
//!   alert is found among the entries of the object's last day, by their exact times.
//!
//! Lookups take a `live` test of ordinals: the rows of files the catalog no longer holds (dropped,
//! or changed and indexed again) are masked until a merge leaves them out.

use std::path::{Path, PathBuf};

use crate::segment::{Row, Segment, SegmentWriter};
use crate::sort::ExternalSorter;
use crate::{IndexError, Result};

pub const ROWS: &str = "rows";
pub const GROUP: &str = "group";
pub const ID: &str = "id";

/// Each table: its name, its columns, and the column that holds the ordinal.
const TABLES: [(&str, usize, usize); 3] = [(ROWS, 4, 0), (GROUP, 3, 2), (ID, 2, 1)];

pub fn id_key(id: i64) -> u64 {
    (id as u64) ^ (1 << 63)
}

pub fn id_of(key: u64) -> i64 {
    (key ^ (1 << 63)) as i64
}

pub fn time_key(t: f64) -> u64 {
    if t.is_nan() {
        return 0;
    }
    let bits = t.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits ^ (1 << 63)
    }
}

/// The day key of a time (see the module docs): monotonic in `t`, 0 only for NaN.
pub fn day_key(t: f64) -> u64 {
    if t.is_nan() {
        return 0;
    }
    // `as` saturates (infinities to the ends); i64::MIN would map to 0, undated's key.
    let d = (t.floor() as i64).max(i64::MIN + 1);
    (d as u64) ^ (1 << 63)
}

pub fn time_of(key: u64) -> Option<f64> {
    if key == 0 {
        return None;
    }
    Some(f64::from_bits(if key >> 63 == 1 { key ^ (1 << 63) } else { !key }))
}

/// One alert's ids, as a build reads them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlertIds {
    pub ordinal: u64,
    pub id: i64,
    pub group: u64,
    /// NaN for none.
    pub time: f64,
}

/// One alert found by a lookup.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IdHit {
    pub ordinal: u64,
    pub id: i64,
    pub group: u64,
    pub time: Option<f64>,
}

impl IdHit {
    fn of_row(r: &Row) -> IdHit {
        IdHit {
            ordinal: r[0],
            id: id_of(r[1]),
            group: r[2],
            time: time_of(r[3]),
        }
    }

    fn time_key(&self) -> u64 {
        self.time.map_or(0, time_key)
    }
}

/// Writes one segment from alerts given in ordinal order: the `rows` table as they come, the
/// `group` and `id` tables through external sorts bounded by `memory_bytes`.
pub struct SegmentBuilder {
    writer: SegmentWriter,
    scratch: PathBuf,
    group: ExternalSorter,
    id: ExternalSorter,
    last: Option<u64>,
    alerts: u64,
}

impl SegmentBuilder {
    /// `scratch` is a directory the builder owns while it runs (created, then removed).
    pub fn new(path: &Path, scratch: &Path, memory_bytes: usize) -> Result<Self> {
        let io = |e: std::io::Error| IndexError::Corrupt(format!("scratch directory {}: {e}", scratch.display()));
        for sub in [GROUP, ID] {
            std::fs::create_dir_all(scratch.join(sub)).map_err(io)?;
        }
        let mut writer = SegmentWriter::create(path)?;
        writer.table(ROWS, 4)?;
        Ok(SegmentBuilder {
            writer,
            scratch: scratch.to_path_buf(),
            group: ExternalSorter::new(&scratch.join(GROUP), 3, memory_bytes / 2),
            id: ExternalSorter::new(&scratch.join(ID), 2, memory_bytes / 2),
            last: None,
            alerts: 0,
        })
    }

    pub fn push(&mut self, a: AlertIds) -> Result<()> {
        if self.last.is_some_and(|l| l >= a.ordinal) {
            return Err(IndexError::Corrupt(format!("ordinal {} given out of order", a.ordinal)));
        }
        self.last = Some(a.ordinal);
        let (id, t) = (id_key(a.id), time_key(a.time));
        self.writer.push(&[a.ordinal, id, a.group, t])?;
        self.group.push([a.group, day_key(a.time), a.ordinal, 0])?;
        self.id.push([id, a.ordinal, 0, 0])?;
        self.alerts += 1;
        Ok(())
    }

    pub fn alerts(&self) -> u64 {
        self.alerts
    }

    /// Write the sorted tables and the trailer; returns the segment's bytes and alerts.
    pub fn finish(self, meta: &[u8]) -> Result<(u64, u64)> {
        let SegmentBuilder {
            mut writer,
            scratch,
            group,
            id,
            alerts,
            ..
        } = self;
        writer.table_with(GROUP, 3, true)?;
        group.finish(|r| writer.push(&r[..3]))?;
        writer.table(ID, 2)?;
        id.finish(|r| writer.push(&r[..2]))?;
        let bytes = writer.finish(meta)?;
        let _ = std::fs::remove_dir_all(&scratch);
        Ok((bytes, alerts))
    }
}

/// Merge segments into one at `path`, leaving out the rows whose ordinal is not `live`.
pub fn merge(segments: &[Segment], live: &dyn Fn(u64) -> bool, path: &Path, meta: &[u8]) -> Result<(u64, u64)> {
    let mut w = SegmentWriter::create(path)?;
    let mut alerts = 0u64;
    for (name, arity, ordinal_at) in TABLES {
        w.table_with(name, arity, name == GROUP)?;
        let mut iters: Vec<Box<dyn Iterator<Item = Result<Row>> + '_>> = Vec::new();
        for s in segments {
            iters.push(Box::new(table(s, name)?.iter().releasing()));
        }
        crate::sort::merge(iters, &mut |r: &Row| {
            if !live(r[ordinal_at]) {
                return Ok(());
            }
            if name == ROWS {
                alerts += 1;
            }
            w.push(&r[..arity])
        })?;
    }
    let bytes = w.finish(meta)?;
    Ok((bytes, alerts))
}

fn table<'a>(s: &'a Segment, name: &str) -> Result<crate::segment::Table<'a>> {
    s.table(name)
        .ok_or_else(|| IndexError::Corrupt(format!("segment {} has no table {name:?}", s.path().display())))
}

/// The `rows` entries of `ordinals` in segment `s` (sorted here, so that each block is decoded
/// once), into `out`; an ordinal without one is a damaged segment.
fn rows_of(s: &Segment, ordinals: &mut [u64], out: &mut Vec<Row>) -> Result<()> {
    ordinals.sort_unstable();
    table(s, ROWS)?.get_sorted(ordinals, out)?;
    if out.len() != ordinals.len() {
        return Err(IndexError::Corrupt(format!(
            "segment {}: {} of the object's ordinals have no row",
            s.path().display(),
            ordinals.len() - out.len()
        )));
    }
    Ok(())
}

/// The segments of one generation, searched together.
#[derive(Clone, Default)]
pub struct SegmentSet {
    segments: Vec<Segment>,
}

impl SegmentSet {
    /// Every segment must hold the three tables.
    pub fn new(segments: Vec<Segment>) -> Result<Self> {
        for s in &segments {
            for (name, _, _) in TABLES {
                table(s, name)?;
            }
        }
        Ok(SegmentSet { segments })
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// What an ordinal of segment `s` holds.
    fn row(&self, s: &Segment, ordinal: u64) -> Result<IdHit> {
        let mut out = Vec::with_capacity(1);
        table(s, ROWS)?.scan_prefix(&[ordinal], &mut out)?;
        out.first()
            .map(IdHit::of_row)
            .ok_or_else(|| IndexError::Corrupt(format!("segment {}: no row for ordinal {ordinal}", s.path().display())))
    }

    /// Every alert of an object: one per id (its newest copy), oldest first (undated first,
    /// then by id).
    pub fn group_alerts(&self, group: u64, live: &dyn Fn(u64) -> bool) -> Result<Vec<IdHit>> {
        let mut hits: Vec<IdHit> = Vec::new();
        let (mut rows, mut found) = (Vec::new(), Vec::new());
        for s in &self.segments {
            let t = table(s, GROUP)?;
            if !t.may_hold(&[group]) {
                continue;
            }
            t.scan_prefix(&[group], &mut rows)?;
            // The object's live ordinals; `rows_of` decodes each block of `rows` once.
            let mut ordinals: Vec<u64> = rows.iter().map(|r| r[2]).filter(|o| live(*o)).collect();
            rows_of(s, &mut ordinals, &mut found)?;
            hits.extend(found.iter().map(IdHit::of_row));
        }
        // One per id, the newest copy (highest ordinal).
        hits.sort_by_key(|h| (h.id, std::cmp::Reverse(h.ordinal)));
        hits.dedup_by_key(|h| h.id);
        hits.sort_by_key(|h| (h.time_key(), h.id));
        Ok(hits)
    }

    /// The latest alert of an object: the greatest time, then id, then ordinal, of its live
    /// dated alerts; None when it has none. Reads each segment's end of the object's run only,
    /// and only the segments that can hold a later alert: they are visited newest last day
    /// first (the `group` table's largest day), and the search stops at a segment whose days
    /// all come before the best alert's day. Segments whose filter rules the object out are
    /// not read at all.
    pub fn latest(&self, group: u64, live: &dyn Fn(u64) -> bool) -> Result<Option<IdHit>> {
        let mut tables = Vec::with_capacity(self.segments.len());
        for s in &self.segments {
            let t = table(s, GROUP)?;
            if t.may_hold(&[group]) {
                tables.push((s, t));
            }
        }
        // Newest days first; the sort is stable, so equal days keep the generation's order.
        tables.sort_by_key(|(_, t)| std::cmp::Reverse(t.max(1)));
        let mut best: Option<IdHit> = None;
        let (mut candidates, mut found) = (Vec::new(), Vec::new());
        for (s, t) in tables {
            if best.is_some_and(|b| t.max(1) < day_key(b.time.unwrap_or(f64::NAN))) {
                break;
            }
            // The live entries of the object's last day in this segment; their exact times (and
            // ids, for ties) are in `rows`.
            let mut top: Option<u64> = None;
            candidates.clear();
            t.scan_prefix_rev(&[group], |r| {
                if r[1] == 0 || top.is_some_and(|t| r[1] < t) {
                    return false;
                }
                if live(r[2]) {
                    top = Some(r[1]);
                    candidates.push(r[2]);
                }
                true
            })?;
            // Usually one; several in one block are decoded once.
            rows_of(s, &mut candidates, &mut found)?;
            for h in found.iter().map(IdHit::of_row) {
                let key = |h: &IdHit| (h.time_key(), h.id, h.ordinal);
                if best.is_none_or(|b| key(&h) > key(&b)) {
                    best = Some(h);
                }
            }
        }
        Ok(best)
    }

    /// The newest live copy of an alert by id.
    pub fn by_id(&self, id: i64, live: &dyn Fn(u64) -> bool) -> Result<Option<IdHit>> {
        let mut best: Option<(u64, &Segment)> = None;
        let mut rows = Vec::new();
        for s in &self.segments {
            let t = table(s, ID)?;
            if !t.may_hold(&[id_key(id)]) {
                continue;
            }
            t.scan_prefix(&[id_key(id)], &mut rows)?;
            for r in rows.iter().rev() {
                if live(r[1]) {
                    if best.is_none_or(|(o, _)| r[1] > o) {
                        best = Some((r[1], s));
                    }
                    break;
                }
            }
        }
        best.map(|(o, s)| self.row(s, o)).transpose()
    }

    /// Every live ordinal of an object (copies included), in no particular order.
    pub fn group_ordinals(&self, group: u64, live: &dyn Fn(u64) -> bool) -> Result<Vec<u64>> {
        self.live_ordinals(GROUP, 2, group, live)
    }

    /// Every live ordinal of an id (copies included), in no particular order.
    pub fn id_ordinals(&self, id: i64, live: &dyn Fn(u64) -> bool) -> Result<Vec<u64>> {
        self.live_ordinals(ID, 1, id_key(id), live)
    }

    /// The live ordinals (column `ordinal_at`) of the rows of table `name` that start with `key`.
    fn live_ordinals(&self, name: &str, ordinal_at: usize, key: u64, live: &dyn Fn(u64) -> bool) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        let mut rows = Vec::new();
        for s in &self.segments {
            let t = table(s, name)?;
            if !t.may_hold(&[key]) {
                continue;
            }
            t.scan_prefix(&[key], &mut rows)?;
            out.extend(rows.iter().map(|r| r[ordinal_at]).filter(|o| live(*o)));
        }
        Ok(out)
    }

    /// Alerts (rows) in all segments, masked or not.
    pub fn alerts(&self) -> u64 {
        self.segments
            .iter()
            .filter_map(|s| s.table(ROWS))
            .map(|t| t.rows())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashMap};

    use crate::TestRng as Rng;

    /// A random lake: files of alerts with few groups and ids (so copies and ties happen),
    /// some times missing or equal, some files dropped. Each file is mostly one night, the
    /// nights in no particular order, so that segments cover different days (and a latest
    /// lookup stops early, or must not) and some share their last day.
    fn lake(rng: &mut Rng) -> (Vec<Vec<AlertIds>>, BTreeSet<usize>) {
        let mut files = Vec::new();
        let mut ordinal = rng.below(1000);
        for _ in 0..1 + rng.below(12) {
            let n = rng.below(400);
            let night = 2_458_849.5 + rng.below(6) as f64;
            let rows: Vec<AlertIds> = (0..n)
                .map(|i| AlertIds {
                    ordinal: ordinal + i,
                    id: rng.below(300) as i64 - 150,
                    group: rng.below(40) * 0x1_0000_0001,
                    time: match rng.below(6) {
                        0 => f64::NAN,
                        1 => -(rng.below(5) as f64),
                        2 => 2_458_849.5 + rng.below(20) as f64 * 0.25,
                        _ => night + rng.below(8) as f64 * 0.125,
                    },
                })
                .collect();
            ordinal += n + rng.below(3);
            files.push(rows);
        }
        let dropped = (0..files.len()).filter(|_| rng.below(4) == 0).collect();
        (files, dropped)
    }

    #[test]
    fn lookups_equal_a_brute_force_map_on_random_lakes_built_and_merged_in_any_order() {
        let mut rng = Rng(0xdead_beef_1234_5678);
        for case in 0..60 {
            let dir = tempfile::tempdir().unwrap();
            let (files, dropped) = lake(&mut rng);
            let live_set: BTreeSet<u64> = files
                .iter()
                .enumerate()
                .filter(|(i, _)| !dropped.contains(i))
                .flat_map(|(_, f)| f.iter().map(|a| a.ordinal))
                .collect();
            let live = |o: u64| live_set.contains(&o);
            // Builds of runs of files (incremental builds), then merges of random neighbours.
            let mut segments = Vec::new();
            let mut i = 0;
            while i < files.len() {
                let k = 1 + rng.below(3) as usize;
                let path = dir.path().join(format!("s{}.seg", segments.len()));
                // A small memory bound so that the sorts spill.
                let mut b = SegmentBuilder::new(&path, &dir.path().join("scratch"), 64 << 10).unwrap();
                for f in &files[i..(i + k).min(files.len())] {
                    for a in f {
                        b.push(*a).unwrap();
                    }
                }
                b.finish(b"").unwrap();
                segments.push(Segment::open(&path).unwrap());
                i += k;
            }
            while segments.len() > 1 && rng.below(2) == 0 {
                let at = rng.below(segments.len() as u64 - 1) as usize;
                let path = dir.path().join(format!("m{case}-{}.seg", rng.next()));
                merge(&segments[at..at + 2], &live, &path, b"").unwrap();
                let m = Segment::open(&path).unwrap();
                m.verify().unwrap();
                segments.splice(at..at + 2, [m]);
            }
            let set = SegmentSet::new(segments).unwrap();

            // The brute-force map.
            let all: Vec<&AlertIds> = files.iter().flatten().filter(|a| live(a.ordinal)).collect();
            let hit = |a: &AlertIds| IdHit {
                ordinal: a.ordinal,
                id: a.id,
                group: a.group,
                time: (!a.time.is_nan()).then_some(a.time),
            };
            let groups: BTreeSet<u64> = files.iter().flatten().map(|a| a.group).chain([7]).collect();
            for g in groups {
                let mut newest: HashMap<i64, &AlertIds> = HashMap::new();
                for a in all.iter().filter(|a| a.group == g) {
                    let e = newest.entry(a.id).or_insert(a);
                    if a.ordinal > e.ordinal {
                        *e = a;
                    }
                }
                let mut want: Vec<IdHit> = newest.values().map(|a| hit(a)).collect();
                want.sort_by_key(|h| (h.time_key(), h.id));
                assert_eq!(set.group_alerts(g, &live).unwrap(), want, "case {case} group {g}");
                let latest = all
                    .iter()
                    .filter(|a| a.group == g && !a.time.is_nan())
                    .max_by_key(|a| (time_key(a.time), a.id, a.ordinal))
                    .map(|a| hit(a));
                assert_eq!(set.latest(g, &live).unwrap(), latest, "case {case} group {g}");
                let mut ords = set.group_ordinals(g, &live).unwrap();
                ords.sort();
                let want: Vec<u64> = all.iter().filter(|a| a.group == g).map(|a| a.ordinal).collect();
                assert_eq!(ords, want);
            }
            for id in -151..151 {
                let want = all
                    .iter()
                    .filter(|a| a.id == id)
                    .max_by_key(|a| a.ordinal)
                    .map(|a| hit(a));
                assert_eq!(set.by_id(id, &live).unwrap(), want, "case {case} id {id}");
                let mut ords = set.id_ordinals(id, &live).unwrap();
                ords.sort();
                let want: Vec<u64> = all.iter().filter(|a| a.id == id).map(|a| a.ordinal).collect();
                assert_eq!(ords, want);
            }
        }
    }

    #[test]
    fn time_keys_order_as_numbers_with_none_first() {
        let times = [
            f64::NEG_INFINITY,
            -1e300,
            -2.5,
            -0.0,
            0.0,
            1e-300,
            2_458_849.5,
            f64::INFINITY,
        ];
        let keys: Vec<u64> = times.iter().map(|&t| time_key(t)).collect();
        assert!(keys.windows(2).all(|w| w[0] <= w[1]), "{keys:?}");
        assert!(keys.iter().all(|&k| k > 0));
        assert_eq!(time_key(f64::NAN), 0);
        for t in times {
            assert_eq!(time_of(time_key(t)).map(f64::to_bits), Some(t.to_bits()));
        }
        let days: Vec<u64> = times.iter().map(|&t| day_key(t)).collect();
        assert!(days.windows(2).all(|w| w[0] <= w[1]), "{days:?}");
        assert!(days.iter().all(|&k| k > 0));
        assert_eq!(day_key(f64::NAN), 0);
        assert_eq!(day_key(2_458_849.5), day_key(2_458_849.99));
        assert_eq!(day_key(2_458_850.0) - day_key(2_458_849.5), 1);
        assert_eq!(id_of(id_key(i64::MIN)), i64::MIN);
        assert!(id_key(-1) < id_key(0) && id_key(i64::MIN) == 0);
    }
}
