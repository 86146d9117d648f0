//! Stream slots: how many response streams (DoGet) may be open at once, per caller and in
//! total. A DoGet takes a slot before it plans and holds it until its stream ends or its client
//! goes; when none is free it waits in line for up to `limits.queue_secs`, then gets
//! RESOURCE_EXHAUSTED naming the limit. Callers are identities; anonymous callers of an open
//! server are told apart by their address.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

/// Idle per-caller entries are dropped once the table holds this many.
const PRUNE_AT: usize = 4096;

pub struct Slots {
    total: Arc<Semaphore>,
    max_total: usize,
    max_each: usize,
    queue: Duration,
    each: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Callers waiting in line now.
    waiting: AtomicUsize,
}

/// Counts a caller in line while it waits (also when its wait is cancelled).
struct InLine<'a>(&'a AtomicUsize);

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A held slot (released when dropped).
pub struct Slot {
    _each: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

impl Slots {
    pub fn new(max_total: usize, max_each: usize, queue: Duration) -> Slots {
        Slots {
            total: Arc::new(Semaphore::new(max_total)),
            max_total,
            max_each,
            queue,
            each: Mutex::new(HashMap::new()),
            waiting: AtomicUsize::new(0),
        }
    }

    fn semaphore_of(&self, caller: &str) -> Arc<Semaphore> {
        let mut each = self.each.lock().unwrap_or_else(|p| p.into_inner());
        if each.len() >= PRUNE_AT {
            let max = self.max_each;
            each.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < max);
        }
        each.entry(caller.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.max_each)))
            .clone()
    }

    /// Take a slot for `caller`, waiting in line up to the queue time.
    pub async fn acquire(&self, caller: &str) -> Result<Slot> {
        let until = tokio::time::Instant::now() + self.queue;
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _in_line = InLine(&self.waiting);
        let each = match tokio::time::timeout_at(until, self.semaphore_of(caller).acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => {
                return Err(Error::ResourceExhausted(format!(
                    "{caller} already has {} streams open, the most one caller may (limits.max_streams_per_identity); waited {:.1} s for one to end",
                    self.max_each,
                    self.queue.as_secs_f64()
                )))
            }
        };
        let total = match tokio::time::timeout_at(until, self.total.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => {
                return Err(Error::ResourceExhausted(format!(
                    "the server has {} streams open, its limit (limits.max_streams); waited {:.1} s for one to end: retry later",
                    self.max_total,
                    self.queue.as_secs_f64()
                )))
            }
        };
        Ok(Slot {
            _each: each,
            _total: total,
        })
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.max_total - self.total.available_permits()
    }

    /// DoGets taking a slot now: waiting in line for one, or about to get a free one.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn callers_queue_then_are_refused_and_slots_come_back() {
        let slots = Slots::new(3, 2, Duration::from_millis(50));
        let a1 = slots.acquire("identity \"a\"").await.unwrap();
        let _a2 = slots.acquire("identity \"a\"").await.unwrap();
        let e = slots.acquire("identity \"a\"").await.err().unwrap().to_string();
        assert!(e.contains("max_streams_per_identity"), "{e}");
        let _b1 = slots.acquire("identity \"b\"").await.unwrap();
        assert_eq!(slots.open(), 3);
        let e = slots.acquire("identity \"b\"").await.err().unwrap().to_string();
        assert!(e.contains("limits.max_streams)"), "{e}");
        // A slot freed while a caller waits in line is taken by it. The slot is freed only once
        // the caller is seen in line, so the case cannot pass without the caller waiting.
        let slots = Arc::new(slots);
        let wait = tokio::spawn({
            let s2 = slots.clone();
            async move { s2.acquire("identity \"a\"").await }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while slots.waiting() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "the caller never got in line");
            tokio::task::yield_now().await;
        }
        drop(a1);
        let slot = wait.await.unwrap();
        assert_eq!(slots.waiting(), 0);
        assert!(slot.is_ok());
        assert_eq!(slots.open(), 3);
        drop(slot);
        assert_eq!(slots.open(), 2);
    }
}
