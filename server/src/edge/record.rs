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
    /// The caller's identity (None on an open server).
    pub identity: Option<String>,
    pub io: Arc<IoStats>,
    pub started: Instant,
    pub span: tracing::Span,
    /// What the request serves, once planned: the dataset ("sql" for Flight SQL) and its alerts.
    target: Mutex<(String, usize)>,
    outcome: Mutex<Option<&'static str>>,
    recent: Recent,
    /// The stream slot, given back when the stream ends.
    _slot: super::slots::Slot,
}

impl RequestRecord {
    /// The record of a request that has its stream slot; built once, before it is planned.
    pub fn new(
        id: String,
        identity: Option<String>,
        io: Arc<IoStats>,
        started: Instant,
        span: tracing::Span,
        recent: Recent,
        slot: super::slots::Slot,
    ) -> Self {
        RequestRecord {
            id,
            identity,
            io,
            started,
            span,
            target: Mutex::new((String::new(), 0)),
            outcome: Mutex::new(None),
            recent,
            _slot: slot,
        }
    }

    /// What the request serves, once planned: recorded in its span, its log line and `stats`.
    pub fn serves(&self, dataset: &str, alerts: usize) {
        self.span.record("dataset", dataset);
        self.span.record("alerts", alerts);
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = (dataset.to_string(), alerts);
    }

    /// A request that failed before its stream started (planning, its deadline): recorded
    /// with the status's code, which is returned. (Before the record was built once per DoGet,
    /// such requests left no record; now they leave one that says how they ended.)
    pub fn failed(&self, status: tonic::Status) -> tonic::Status {
        self.finish(super::code_name(status.code()));
        status
    }

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
        let (dataset, alerts) = self.target.lock().map(|t| t.clone()).unwrap_or_default();
        let entry = json!({"id": self.id, "dataset": dataset, "identity": self.identity, "alerts": alerts,
                           "requests": io.requests, "bytes": io.bytes, "ms": ms, "outcome": outcome});
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() == RECENT_REQUESTS {
                recent.pop_front();
            }
            recent.push_back(entry);
        }
    }
}
