//! One memory budget for the process, and each request's share of it.
//!
//! ```text
//!  max_memory_bytes (default: 70% of the machine's memory, or of the cgroup's limit if lower)
//!   ├─ held outside requests: the binary, caches, sled, allocator slack
//!   │    (measured: the process's RSS minus what requests hold, sampled every 10 ms)
//!   └─ requests: an Account each, of at most limits.max_request_memory_bytes
//!        ├─ reads: bytes fetched from storage, held until the last reader drops them
//!        ├─ arrays that expressions produce: claimed through arrow's memory pool, held for
//!        │    the arrays' lifetime (see expr::guard)
//!        ├─ DataFusion's operators (sorts, aggregates, joins): its MemoryPool, itself within
//!        │    sql.memory_bytes
//!        └─ batches being encoded for the response, parameters being decoded
//! ```
//!
//! A reservation that would take a request past its share, or the process past its budget, is
//! refused with RESOURCE_EXHAUSTED naming the limit and what asked for the memory; the request
//! fails, and everything it held goes back when its buffers are dropped. Memory that can only
//! be counted after it exists (an array claimed once built, a DataFusion `grow`) is checked
//! right after with [`Account::check`]: the request then fails before it can build more.
//!
//! Refusing is cheaper than recovering: the function guards (expr::guard) refuse a value
//! larger than `limits.max_value_bytes` before it is allocated, so the allocator never holds
//! the memory in the first place. After a request that held much, the allocator is told to
//! give freed memory back ([`Account`]'s drop).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::error::Error;

/// Share of the machine's (or the cgroup's) memory that `max_memory_bytes` defaults to.
pub const DEFAULT_BUDGET_SHARE: f64 = 0.70;
/// The budget when the machine's memory cannot be read (not Linux).
const FALLBACK_BUDGET: u64 = 4 << 30;
/// A request that held more than this gives the allocator's free memory back when it ends.
const COLLECT_AFTER_BYTES: u64 = 64 << 20;
/// How often the process's RSS is sampled.
const RSS_EVERY: Duration = Duration::from_millis(10);
/// At most how often the allocator is told to give back the memory it holds free.
const COLLECT_EVERY: Duration = Duration::from_secs(1);

/// Bytes in a readable form for messages: `2.0 GiB (2147483648 bytes)`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{v:.1} {} ({bytes} bytes)", UNITS[u])
    }
}

/// The memory of this machine, or of the cgroup the process runs in when that is lower
/// (a container's limit): `min(MemTotal, cgroup v2 memory.max, cgroup v1 memory.limit_in_bytes)`.
pub fn machine_memory() -> Option<u64> {
    let mut best: Option<u64> = None;
    let mut take = |v: Option<u64>| {
        if let Some(v) = v.filter(|v| *v > 0) {
            best = Some(best.map_or(v, |b| b.min(v)));
        }
    };
    take(
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| parse_meminfo_total(&s)),
    );
    for path in cgroup_limit_files() {
        take(std::fs::read_to_string(&path).ok().and_then(|s| parse_cgroup_limit(&s)));
    }
    best
}

/// The default budget: [`DEFAULT_BUDGET_SHARE`] of [`machine_memory`].
pub fn default_budget() -> u64 {
    machine_memory().map_or(FALLBACK_BUDGET, |m| (m as f64 * DEFAULT_BUDGET_SHARE) as u64)
}

fn parse_meminfo_total(s: &str) -> Option<u64> {
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A cgroup memory limit file's value: a number of bytes, or none for `max` (v2) and the
/// page-rounded "unlimited" of v1 (anything from 2^60 up).
fn parse_cgroup_limit(s: &str) -> Option<u64> {
    let v: u64 = s.trim().parse().ok()?;
    (v < 1 << 60).then_some(v)
}

/// The memory limit files of the cgroups this process is in (v2 unified and v1 memory
/// controller), at the mount's root (inside a container, its own cgroup) and at the process's
/// path.
fn cgroup_limit_files() -> Vec<String> {
    let mut out = vec![
        "/sys/fs/cgroup/memory.max".to_string(),
        "/sys/fs/cgroup/memory/memory.limit_in_bytes".to_string(),
    ];
    if let Ok(s) = std::fs::read_to_string("/proc/self/cgroup") {
        for line in s.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), Some(c)) => (a, b, c),
                _ => continue,
            };
            if path == "/" || path.is_empty() {
                continue;
            }
            if controllers.is_empty() {
                out.push(format!("/sys/fs/cgroup{path}/memory.max"));
            } else if controllers.split(',').any(|c| c == "memory") {
                out.push(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"));
            }
        }
    }
    out
}

/// The process's resident memory, sampled in the background (Linux; 0 elsewhere).
struct Rss {
    now: AtomicU64,
    peak: AtomicU64,
}

fn rss() -> &'static Rss {
    static RSS: OnceLock<&'static Rss> = OnceLock::new();
    RSS.get_or_init(|| {
        let rss: &'static Rss = Box::leak(Box::new(Rss {
            now: AtomicU64::new(read_rss().unwrap_or(0)),
            peak: AtomicU64::new(0),
        }));
        if read_rss().is_some() {
            let spawned = std::thread::Builder::new()
                .name("astroflight-rss".into())
                .spawn(move || {
                    let mut last_collect = std::time::Instant::now();
                    let mut at_collect = 0u64;
                    loop {
                        if let Some(v) = read_rss() {
                            rss.now.store(v, Ordering::Relaxed);
                            rss.peak.fetch_max(v, Ordering::Relaxed);
                            // The allocator keeps freed memory for reuse and returns it lazily,
                            // on its own threads' next allocations: once a second, when the
                            // process has grown since the last time, it is told to now.
                            if last_collect.elapsed() >= COLLECT_EVERY && v > at_collect + (16 << 20) {
                                give_back();
                                GROWTH.fetch_add(1, Ordering::Relaxed);
                                last_collect = std::time::Instant::now();
                                at_collect = read_rss().unwrap_or(v);
                            } else if v < at_collect {
                                at_collect = v;
                            }
                        }
                        std::thread::sleep(RSS_EVERY);
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!("cannot sample the process's memory: {e}");
            }
        }
        rss
    })
}

fn read_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Tell the allocator to give the memory it holds free back to the system now (mimalloc, the
/// binary's allocator: `mi_collect`; where the process allocates elsewhere, as the unit tests
/// do, mimalloc's heaps are empty and this does nothing).
pub fn give_back() {
    // SAFETY: mi_collect takes no pointers and may be called from any thread at any time.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}

/// Called when a runtime's worker thread goes idle (tokio's `on_thread_park`). The allocator
/// keeps a thread's freed memory in that thread's heap, which only that thread can give back:
/// after the process grew (the RSS sampler bumps [`GROWTH`]), each worker gives its free memory
/// back once, the next time it is idle.
pub fn on_park() {
    thread_local! {
        static SEEN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    let now = GROWTH.load(Ordering::Relaxed);
    if SEEN.with(|s| s.replace(now)) != now {
        give_back();
    }
}

/// Bumped (at most once per [`COLLECT_EVERY`]) when the process grew past what it last gave
/// back.
static GROWTH: AtomicU64 = AtomicU64::new(0);

/// The process's memory budget (`max_memory_bytes`) and what requests hold of it.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    /// Each request's share (`limits.max_request_memory_bytes`).
    request_limit: u64,
    reserved: AtomicU64,
    peak_reserved: AtomicU64,
    refusals: AtomicU64,
    /// Measure the process's RSS (servers); off, the budget counts reservations only (unit
    /// tests, which share one process).
    measure_rss: bool,
}

/// What the `stats` action and the metrics show of the budget.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BudgetSnapshot {
    pub max_memory_bytes: u64,
    pub max_request_memory_bytes: u64,
    /// Held by requests now.
    pub reserved_bytes: u64,
    pub peak_reserved_bytes: u64,
    /// The process's resident memory (RSS), and its peak, as last sampled.
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
    /// Reservations refused since start.
    pub refusals: u64,
}

impl Budget {
    pub fn new(limit: u64, request_limit: u64, measure_rss: bool) -> Arc<Budget> {
        if measure_rss {
            rss();
        }
        Arc::new(Budget {
            limit,
            request_limit: request_limit.min(limit),
            reserved: AtomicU64::new(0),
            peak_reserved: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            measure_rss,
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn request_limit(&self) -> u64 {
        self.request_limit
    }

    /// A new account: a request's (`label` names it in messages, e.g. `request req-7`) with
    /// the request share.
    pub fn account(self: &Arc<Self>, label: impl Into<String>) -> Arc<Account> {
        Arc::new(Account {
            budget: self.clone(),
            label: label.into(),
            limit: self.request_limit,
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        })
    }

    /// Memory the process holds outside the requests' reservations (RSS beyond what they
    /// hold; 0 when RSS is not measured).
    fn outside(&self) -> u64 {
        if !self.measure_rss {
            return 0;
        }
        rss()
            .now
            .load(Ordering::Relaxed)
            .saturating_sub(self.reserved.load(Ordering::Relaxed))
    }

    pub fn snapshot(&self) -> BudgetSnapshot {
        let (now, peak) = if self.measure_rss {
            (rss().now.load(Ordering::Relaxed), rss().peak.load(Ordering::Relaxed))
        } else {
            (0, 0)
        };
        BudgetSnapshot {
            max_memory_bytes: self.limit,
            max_request_memory_bytes: self.request_limit,
            reserved_bytes: self.reserved.load(Ordering::Relaxed),
            peak_reserved_bytes: self.peak_reserved.load(Ordering::Relaxed),
            rss_bytes: now,
            peak_rss_bytes: peak,
            refusals: self.refusals.load(Ordering::Relaxed),
        }
    }

    fn add(&self, n: u64) -> u64 {
        let total = self.reserved.fetch_add(n, Ordering::Relaxed) + n;
        self.peak_reserved.fetch_max(total, Ordering::Relaxed);
        total
    }

    fn sub(&self, n: u64) {
        let _ = self
            .reserved
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(n)));
    }

    fn refused(&self) {
        self.refusals.fetch_add(1, Ordering::Relaxed);
    }

    /// The error when the process is past its budget with `total` reserved, or None.
    fn over(&self, total: u64, asked: u64, what: &dyn fmt::Display) -> Option<Error> {
        let outside = self.outside();
        if total.saturating_add(outside) <= self.limit {
            return None;
        }
        Some(Error::ResourceExhausted(format!(
            "{what} asked for {}, but this server's memory budget (max_memory_bytes = {}) is in use: {} held by \
             requests, {} by the rest of the process; retry later",
            human(asked),
            human(self.limit),
            human(total.saturating_sub(asked)),
            human(outside),
        )))
    }
}

/// The memory one request (or one background job) holds: every reservation is counted here
/// and in the budget.
pub struct Account {
    budget: Arc<Budget>,
    label: String,
    limit: u64,
    used: AtomicU64,
    peak: AtomicU64,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Account({}: {} of {})",
            self.label,
            self.used.load(Ordering::Relaxed),
            self.limit
        )
    }
}

impl Account {
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// Count `n` bytes that exist already (or must: DataFusion's infallible `grow`, an array
    /// claimed once built). [`Account::check`] tells whether they took it past a limit.
    pub fn grow(&self, n: u64) {
        let used = self.used.fetch_add(n, Ordering::Relaxed) + n;
        self.peak.fetch_max(used, Ordering::Relaxed);
        self.budget.add(n);
    }

    pub fn shrink(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(n)));
        self.budget.sub(n);
    }

    /// Count `n` more bytes if the request's share and the process's budget have room for
    /// them; otherwise RESOURCE_EXHAUSTED naming the limit and `what` asked.
    pub fn try_grow(&self, n: u64, what: &dyn fmt::Display) -> Result<(), Error> {
        let used = self.used.fetch_add(n, Ordering::Relaxed) + n;
        if used > self.limit {
            self.used.fetch_sub(n, Ordering::Relaxed);
            self.budget.refused();
            return Err(self.share_error(used - n, n, what));
        }
        let total = self.budget.add(n);
        if let Some(e) = self.budget.over(total, n, what) {
            self.used.fetch_sub(n, Ordering::Relaxed);
            self.budget.sub(n);
            self.budget.refused();
            return Err(e);
        }
        self.peak.fetch_max(used, Ordering::Relaxed);
        Ok(())
    }

    /// After an unconditional [`Account::grow`]: RESOURCE_EXHAUSTED if the request is past its
    /// share or the process past its budget (`what` asked for the last `asked` bytes).
    pub fn check(&self, asked: u64, what: &dyn fmt::Display) -> Result<(), Error> {
        let used = self.used();
        if used > self.limit {
            self.budget.refused();
            return Err(self.share_error(used.saturating_sub(asked), asked, what));
        }
        if let Some(e) = self
            .budget
            .over(self.budget.reserved.load(Ordering::Relaxed), asked, what)
        {
            self.budget.refused();
            return Err(e);
        }
        Ok(())
    }

    fn share_error(&self, held: u64, asked: u64, what: &dyn fmt::Display) -> Error {
        Error::ResourceExhausted(format!(
            "{what} asked for {} with {} already held by this {}, past its share of memory (limits.\
             max_request_memory_bytes = {}); ask for less (fewer rows, columns or groups, smaller values)",
            human(asked),
            human(held),
            self.label,
            human(self.limit),
        ))
    }

    /// A reservation of `n` bytes, given back when dropped.
    pub fn reserve(self: &Arc<Self>, n: u64, what: &dyn fmt::Display) -> Result<Reservation, Error> {
        self.try_grow(n, what)?;
        Ok(Reservation {
            account: self.clone(),
            bytes: n,
        })
    }

    /// This account as an arrow memory pool: arrays claimed with it are counted until dropped.
    pub fn arrow_pool(self: &Arc<Self>) -> ArrowPool {
        ArrowPool(self.clone())
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        // Whatever is still counted (a reservation leaked past its request) goes back.
        let left = self.used.load(Ordering::Relaxed);
        if left > 0 {
            self.budget.sub(left);
        }
        if self.peak() >= COLLECT_AFTER_BYTES {
            give_back();
        }
    }
}

/// Bytes held from an account until dropped.
#[derive(Debug)]
pub struct Reservation {
    account: Arc<Account>,
    bytes: u64,
}

impl Reservation {
    pub fn size(&self) -> u64 {
        self.bytes
    }

    /// Split `n` bytes (at most what is held) off into a reservation of their own.
    pub fn split(&mut self, n: u64) -> Reservation {
        let n = n.min(self.bytes);
        self.bytes -= n;
        Reservation {
            account: self.account.clone(),
            bytes: n,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.account.shrink(self.bytes);
        }
    }
}

/// An account as arrow's memory pool (`Array::claim`): the buffers of claimed arrays count
/// against the request until the last array using them is dropped. Claims cannot fail; the
/// claimant checks the account afterwards ([`Account::check`]).
#[derive(Debug, Clone)]
pub struct ArrowPool(Arc<Account>);

#[derive(Debug)]
struct Claim {
    account: Arc<Account>,
    bytes: usize,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.account.shrink(self.bytes as u64);
    }
}

impl arrow_buffer::MemoryReservation for Claim {
    fn size(&self) -> usize {
        self.bytes
    }

    fn resize(&mut self, new_size: usize) {
        if new_size > self.bytes {
            self.account.grow((new_size - self.bytes) as u64);
        } else {
            self.account.shrink((self.bytes - new_size) as u64);
        }
        self.bytes = new_size;
    }
}

impl arrow_buffer::MemoryPool for ArrowPool {
    fn reserve(&self, size: usize) -> Box<dyn arrow_buffer::MemoryReservation> {
        self.0.grow(size as u64);
        Box::new(Claim {
            account: self.0.clone(),
            bytes: size,
        })
    }

    fn available(&self) -> isize {
        (self.0.limit as i128 - self.0.used() as i128).clamp(isize::MIN as i128, isize::MAX as i128) as isize
    }

    fn used(&self) -> usize {
        self.0.used() as usize
    }

    fn capacity(&self) -> usize {
        self.0.limit.min(usize::MAX as u64) as usize
    }
}

/// DataFusion's memory pool for one request's session: every reservation its operators make
/// counts against the request's account (its share, the process budget) and against the
/// shared pool of all SQL queries (`sql.memory_bytes`), whose fairness between spilling
/// operators it keeps.
#[derive(Debug)]
pub struct RequestPool {
    inner: Arc<dyn datafusion::execution::memory_pool::MemoryPool>,
    account: Arc<Account>,
}

impl RequestPool {
    pub fn new(inner: Arc<dyn datafusion::execution::memory_pool::MemoryPool>, account: Arc<Account>) -> Self {
        RequestPool { inner, account }
    }
}

impl fmt::Display for RequestPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestPool({:?})", self.account)
    }
}

/// What a DataFusion reservation's consumer is, as messages name it.
struct Operator<'a>(&'a datafusion::execution::memory_pool::MemoryReservation);

impl fmt::Display for Operator<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the query's {}", self.0.consumer().name())
    }
}

impl datafusion::execution::memory_pool::MemoryPool for RequestPool {
    fn name(&self) -> &str {
        "astroflight-request"
    }

    fn register(&self, consumer: &datafusion::execution::memory_pool::MemoryConsumer) {
        self.inner.register(consumer)
    }

    fn unregister(&self, consumer: &datafusion::execution::memory_pool::MemoryConsumer) {
        self.inner.unregister(consumer)
    }

    fn grow(&self, reservation: &datafusion::execution::memory_pool::MemoryReservation, additional: usize) {
        self.account.grow(additional as u64);
        self.inner.grow(reservation, additional);
    }

    fn shrink(&self, reservation: &datafusion::execution::memory_pool::MemoryReservation, shrink: usize) {
        self.account.shrink(shrink as u64);
        self.inner.shrink(reservation, shrink);
    }

    fn try_grow(
        &self,
        reservation: &datafusion::execution::memory_pool::MemoryReservation,
        additional: usize,
    ) -> datafusion::error::Result<()> {
        self.account
            .try_grow(additional as u64, &Operator(reservation))
            .map_err(|e| datafusion::error::DataFusionError::ResourcesExhausted(e.to_string()))?;
        if let Err(e) = self.inner.try_grow(reservation, additional) {
            self.account.shrink(additional as u64);
            return Err(e);
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.inner.reserved()
    }

    fn memory_limit(&self) -> datafusion::execution::memory_pool::MemoryLimit {
        self.inner.memory_limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_and_meminfo_values() {
        assert_eq!(parse_cgroup_limit("max\n"), None);
        assert_eq!(parse_cgroup_limit("2147483648\n"), Some(2 << 30));
        assert_eq!(parse_cgroup_limit("9223372036854771712"), None, "v1's unlimited");
        assert_eq!(
            parse_meminfo_total("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            Some(24_576_000 * 1024)
        );
        assert!(default_budget() > 0);
    }

    #[test]
    fn a_share_and_the_budget_refuse_and_memory_goes_back() {
        let budget = Budget::new(1000, 600, false);
        let a = budget.account("request a");
        let b = budget.account("request b");
        let ra = a.reserve(500, &"reading").unwrap();
        let e = a.reserve(200, &"repeat()").unwrap_err().to_string();
        assert!(e.contains("max_request_memory_bytes") && e.contains("repeat()"), "{e}");
        let rb = b.reserve(450, &"a sort").unwrap();
        let e = b.reserve(100, &"a join").unwrap_err().to_string();
        assert!(e.contains("max_memory_bytes") && e.contains("a join"), "{e}");
        assert_eq!(budget.snapshot().reserved_bytes, 950);
        assert_eq!(budget.snapshot().refusals, 2);
        drop(ra);
        b.reserve(100, &"a join").unwrap();
        drop(rb);
        assert_eq!(budget.snapshot().reserved_bytes, 0);
        // Claims through arrow's pool count while the arrays live.
        let pool = a.arrow_pool();
        {
            let arr = arrow::array::Int64Array::from(vec![1i64; 100]);
            use arrow::array::Array;
            arr.claim(&pool);
            assert!(a.used() >= 800, "{}", a.used());
            assert!(a.check(800, &"an array").is_err());
        }
        assert_eq!(a.used(), 0);
        assert_eq!(budget.snapshot().reserved_bytes, 0);
    }

    #[test]
    fn a_dropped_account_gives_back_what_it_still_counts() {
        let budget = Budget::new(1000, 1000, false);
        let a = budget.account("request a");
        a.grow(300);
        drop(a);
        assert_eq!(budget.snapshot().reserved_bytes, 0);
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(12), "12 bytes");
        assert_eq!(human(2 << 30), "2.0 GiB (2147483648 bytes)");
    }
}
