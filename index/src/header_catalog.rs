//! The header catalog's storage: one sled tree per FITS dataset, beside the alert index, mapping
//! a file's path to an opaque record (the server encodes the file's version and HDUs in it).
//! Keys are the paths' bytes, so a path prefix is a key prefix and a range of paths is a key
//! range: endpoints of a header query are ranges of this tree.

use std::ops::Bound;

use crate::Result;

/// The header catalog tree of one FITS dataset.
#[derive(Clone)]
pub struct HeaderStore {
    pub(crate) tree: sled::Tree,
    pub(crate) db: sled::Db,
}

impl HeaderStore {
    pub fn get(&self, path: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.tree.get(path.as_bytes())?.map(|v| v.to_vec()))
    }

    pub fn put(&self, path: &str, record: &[u8]) -> Result<()> {
        self.tree.insert(path.as_bytes(), record)?;
        Ok(())
    }

    pub fn remove(&self, path: &str) -> Result<()> {
        self.tree.remove(path.as_bytes())?;
        Ok(())
    }

    /// Every (path, record) with a path starting with `prefix`, in path order, from `start`
    /// (inclusive) to `end` (exclusive; None: to the last). Errors are per entry.
    pub fn range(
        &self,
        prefix: &str,
        start: &str,
        end: Option<&str>,
    ) -> impl Iterator<Item = Result<(String, Vec<u8>)>> + Send + 'static {
        let low = if start.as_bytes() > prefix.as_bytes() {
            start.as_bytes().to_vec()
        } else {
            prefix.as_bytes().to_vec()
        };
        let high = match end {
            Some(e) => Bound::Excluded(e.as_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        let prefix = prefix.as_bytes().to_vec();
        self.tree
            .range((Bound::Included(low), high))
            .take_while(move |kv| kv.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)))
            .map(|kv| {
                let (k, v) = kv?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            })
    }

    /// Every path in the catalog.
    pub fn paths(&self) -> Result<Vec<String>> {
        self.tree
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// Make every write so far durable.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}
