//! What the process shares across requests: the CPU runtimes ([`cpu`]) where decoding and bulk
//! work run, with the helpers that move a future or a stream onto one of them, and the parquet
//! footer cache ([`footer`]) shared by ticket scans and Flight SQL. It sits below the lake (the
//! lake holds one of each) and imports nothing of the serving code above it.

pub mod cpu;
pub mod footer;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use arrow::array::RecordBatch;
use futures::stream::{self, BoxStream, StreamExt};
use futures::FutureExt;
use tracing::Instrument;

use crate::error::{Error, Result};
pub use cpu::CpuPool;

/// Make the stream (its tasks start there) and run it and `step` on the CPU runtime, handing
/// the results over a one-batch channel ([`cpu::relay`]: the work stops as soon as the consumer
/// goes). A panic in `step` or in the stream becomes an error item; `at_end(count)` may turn a
/// stream that ended early into an error.
pub fn on_cpu<M, S, F, E>(cpu: &CpuPool, make: M, mut step: F, at_end: E) -> BoxStream<'static, Result<RecordBatch>>
where
    M: FnOnce() -> S + Send + 'static,
    S: futures::Stream<Item = Result<RecordBatch>> + Send + Unpin + 'static,
    F: FnMut(RecordBatch, &mut usize) -> Result<RecordBatch> + Send + 'static,
    E: Fn(usize) -> Option<Error> + Send + 'static,
{
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    let mut n = 0usize;
    let steps = stream::once(async move { make() }).flatten().map(move |raw| {
        let out = raw.and_then(|raw| {
            std::panic::catch_unwind(AssertUnwindSafe(|| step(raw, &mut n)))
                .unwrap_or_else(|p| Err(panicked("converting rows", p)))
        });
        count.store(n, std::sync::atomic::Ordering::Relaxed);
        out
    });
    let end = stream::once(async move { at_end(seen.load(std::sync::atomic::Ordering::Relaxed)) })
        .filter_map(|e| futures::future::ready(e.map(Err)));
    cpu::relay(&cpu.handle(), steps.chain(end).boxed(), |p| panicked("reading rows", p))
}

/// Run a future on another runtime (the bulk one: SQL planning, counting), cancelled when the
/// caller stops waiting for it (its deadline passed, its client went); a panic in it is an
/// error.
pub async fn on_runtime<T: Send + 'static>(
    cpu: &CpuPool,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T> {
    struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);
    impl<T> Drop for AbortOnDrop<T> {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut task = AbortOnDrop(cpu.handle().spawn(AssertUnwindSafe(f.in_current_span()).catch_unwind()));
    match (&mut task.0).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(p)) => Err(panicked("planning", p)),
        Err(e) => Err(Error::Internal(format!("a worker task failed: {e}"))),
    }
}

/// Make a stream on another runtime (the future that makes it runs there too, so that the tasks
/// it starts live there) and hand its batches over a one-batch channel; an error making it is
/// the stream's first item.
pub fn stream_on<F, S>(cpu: &CpuPool, make: F) -> BoxStream<'static, Result<RecordBatch>>
where
    F: std::future::Future<Output = Result<S>> + Send + 'static,
    S: futures::Stream<Item = Result<RecordBatch>> + Send + 'static,
{
    let made = stream::once(make).map(|r| match r {
        Ok(s) => s.boxed(),
        Err(e) => stream::iter([Err(e)]).boxed(),
    });
    on_cpu_stream(cpu, made.flatten().boxed())
}

/// Run a stream on the CPU runtime (with panic capture), handing batches over a one-batch
/// channel: the reads and decoding happen there, and the stream stops when the consumer goes.
pub fn on_cpu_stream(
    cpu: &CpuPool,
    s: BoxStream<'static, Result<RecordBatch>>,
) -> BoxStream<'static, Result<RecordBatch>> {
    on_cpu(
        cpu,
        move || s,
        |b, n| {
            *n += b.num_rows();
            Ok(b)
        },
        |_| None,
    )
}

pub fn panicked(doing: &str, p: Box<dyn std::any::Any + Send>) -> Error {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    tracing::error!(doing, panic = %msg, "a task panicked; its request fails");
    Error::Internal(format!("internal error while {doing}: {msg}"))
}
