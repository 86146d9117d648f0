//! Values loaded from files and loaded again when the files change: TLS certificates, tokens
//! and users. A renewed certificate or a revoked token takes effect without a restart.
//!
//! The files are read every `every` and compared by content (a Kubernetes Secret volume swaps
//! a symlink; an editor may keep the modification time): a change is loaded and swapped in
//! whole, and a change that does not load (a half-written file, a typo) is logged and the
//! previous value kept, so a bad edit never takes the server down.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::error::Result;

pub struct Watched<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    load: Box<dyn Fn() -> Result<T> + Send + Sync>,
    current: RwLock<Arc<T>>,
    seen: RwLock<Vec<u8>>,
}

impl<T: Send + Sync + 'static> Watched<T> {
    /// Load now (an error here is a configuration error: the server does not start).
    pub fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        load: impl Fn() -> Result<T> + Send + Sync + 'static,
    ) -> Result<Arc<Self>> {
        let seen = fingerprint(&paths);
        let value = load()?;
        Ok(Arc::new(Watched {
            what,
            paths,
            load: Box::new(load),
            current: RwLock::new(Arc::new(value)),
            seen: RwLock::new(seen),
        }))
    }

    pub fn get(&self) -> Arc<T> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Check the files once: load and swap in a change. Returns whether a new value is in use.
    pub fn check(&self) -> bool {
        let now = fingerprint(&self.paths);
        if *self.seen.read().unwrap_or_else(|p| p.into_inner()) == now {
            return false;
        }
        *self.seen.write().unwrap_or_else(|p| p.into_inner()) = now;
        match (self.load)() {
            Ok(v) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(v);
                tracing::info!(what = self.what, "reloaded {} after its files changed", self.what);
                true
            }
            Err(e) => {
                tracing::warn!(
                    what = self.what,
                    error = %e,
                    "the files of {} changed but do not load; the previous {} stays in use",
                    self.what,
                    self.what
                );
                false
            }
        }
    }

    /// Check every `every` until the task is aborted (file reads on the blocking pool).
    pub fn spawn_reloader(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let m = me.clone();
                let _ = tokio::task::spawn_blocking(move || m.check()).await;
            }
        })
    }
}

/// SHA-256 of each file's contents (a missing file hashes as empty: its reappearance is a change).
fn fingerprint(paths: &[PathBuf]) -> Vec<u8> {
    let mut out = Vec::with_capacity(paths.len() * 32);
    for p in paths {
        let bytes = std::fs::read(p).unwrap_or_default();
        out.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_loaded_and_a_bad_change_keeps_the_old_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.txt");
        std::fs::write(&path, "1").unwrap();
        let p = path.clone();
        let w = Watched::new("number", vec![path.clone()], move || {
            let t = std::fs::read_to_string(&p).unwrap_or_default();
            t.trim()
                .parse::<u32>()
                .map_err(|e| crate::Error::InvalidArgument(e.to_string()))
        })
        .unwrap();
        assert_eq!(*w.get(), 1);
        assert!(!w.check(), "unchanged files load nothing");
        std::fs::write(&path, "2").unwrap();
        assert!(w.check());
        assert_eq!(*w.get(), 2);
        std::fs::write(&path, "two").unwrap();
        assert!(!w.check());
        assert_eq!(*w.get(), 2, "a change that does not load keeps the previous value");
        std::fs::write(&path, "3").unwrap();
        assert!(w.check());
        assert_eq!(*w.get(), 3);
    }
}
