//! The record of one DoGet: what it read from storage and how it ended, logged and kept for the
//! `stats` action.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::json;
use tracing::info;

use crate::storage::IoStats;

/// DoGet requests remembered for the `stats` action.
pub const RECENT_REQUESTS: usize = 256;

pub type Recent = Arc<Mutex<VecDeque<serde_json::Value>>>;

/// One DoGet: what it read from storage and how it ended. Logged, and remembered for `stats`,
/// when the stream is dropped: finished, failed, or abandoned by the client ("cancelled").
pub struct RequestRecord {
    pub id: String,
    pub dataset: String,
    /// The caller's identity (None on an open server).
    pub identity: Option<String>,
    pub alerts: usize,
    pub io: Arc<IoStats>,
    pub started: Instant,
    pub span: tracing::Span,
    pub outcome: Mutex<Option<&'static str>>,
    pub recent: Recent,
    /// The stream slot, given back when the stream ends.
    pub _slot: super::slots::Slot,
}

impl RequestRecord {
    pub fn finish(&self, outcome: &'static str) {
        self.outcome.lock().expect("outcome lock").get_or_insert(outcome);
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let io = self.io.snapshot();
        let ms = self.started.elapsed().as_secs_f64() * 1e3;
        let outcome = self
            .outcome
            .lock()
            .map(|o| o.unwrap_or("cancelled"))
            .unwrap_or("cancelled");
        {
            let _g = self.span.enter();
            info!(requests = io.requests, bytes = io.bytes, ms, outcome, "do_get done");
        }
        let entry = json!({"id": self.id, "dataset": self.dataset, "identity": self.identity, "alerts": self.alerts,
                           "requests": io.requests, "bytes": io.bytes, "ms": ms, "outcome": outcome});
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() == RECENT_REQUESTS {
                recent.pop_front();
            }
            recent.push_back(entry);
        }
    }
}
