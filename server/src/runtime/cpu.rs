//! Dedicated runtimes for CPU work, apart from the gRPC runtime, which only moves finished
//! batches, so that a burst of heavy requests cannot starve connection handling. (DataFusion
//! recommends the same split of I/O and CPU runtimes.) There are two:
//!
//! - the **CPU** runtime: point reads (cutouts, sections, stamp headers): parquet page
//!   decompression and decoding (which the async parquet reader does inside `poll`), gunzip and
//!   FITS decoding. Short work, at normal priority.
//! - the **bulk** runtime: work whose size the caller chooses: SQL queries (DataFusion plans and
//!   executes there), alert batch scans and their conditions, header table conditions. Its
//!   threads run at a lower OS priority (nice [`BULK_NICE`]), so that while bulk work keeps
//!   every core busy, a cutout still gets a core when it needs one; and a query that hogs its
//!   threads only delays other bulk work.

use tokio::runtime::{Builder, Handle, Runtime};

use crate::error::{Error, Result};

/// The nice value of the bulk runtime's threads (Linux; 0 to 19, higher yields more).
pub const BULK_NICE: i32 = 10;

/// Stack of the bulk runtime's threads: SQL planning walks expression trees recursively (DataFusion
/// grows its stack on the heap where it recurses deepest; this is the margin for the rest).
const BULK_STACK_BYTES: usize = 16 << 20;

pub struct CpuPool {
    rt: Option<Runtime>,
}

impl CpuPool {
    /// The CPU runtime: `threads` workers at normal priority.
    pub fn new(threads: usize) -> Result<Self> {
        Self::build(threads, "astroflight-cpu", 0, 2 << 20)
    }

    /// The bulk runtime: `threads` workers at a lower priority, with larger stacks.
    pub fn bulk(threads: usize) -> Result<Self> {
        Self::build(threads, "astroflight-bulk", BULK_NICE, BULK_STACK_BYTES)
    }

    fn build(threads: usize, name: &str, nice: i32, stack: usize) -> Result<Self> {
        let rt = Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(name)
            .thread_stack_size(stack)
            .on_thread_start(move || lower_priority(nice))
            .on_thread_park(crate::memory::on_park)
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the {name} runtime: {e}")))?;
        Ok(CpuPool { rt: Some(rt) })
    }

    pub fn handle(&self) -> Handle {
        self.rt.as_ref().expect("runtime lives until drop").handle().clone()
    }
}

/// Poll a stream on `runtime` and hand its items over a one-item channel: the work of producing
/// them (reading, decoding, encoding) happens there, the caller only moves finished items. The
/// stream stops at once when the consumer goes (its client cancelled, its deadline passed),
/// even in the middle of producing an item, and after its first error; a panic in it becomes
/// the error `panicked` makes of it.
pub fn relay<T, E>(
    runtime: &Handle,
    mut stream: futures::stream::BoxStream<'static, std::result::Result<T, E>>,
    panicked: impl Fn(Box<dyn std::any::Any + Send>) -> E + Send + 'static,
) -> futures::stream::BoxStream<'static, std::result::Result<T, E>>
where
    T: Send + 'static,
    E: Send + 'static,
{
    use futures::{FutureExt, StreamExt};
    use std::panic::AssertUnwindSafe;
    use tracing::Instrument;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    runtime.spawn(
        async move {
            loop {
                let next = tokio::select! {
                    biased;
                    _ = tx.closed() => break,
                    next = AssertUnwindSafe(stream.next()).catch_unwind() => next,
                };
                let item = match next {
                    Ok(Some(item)) => item,
                    Ok(None) => break,
                    Err(p) => Err(panicked(p)),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        }
        .in_current_span(),
    );
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

/// Lower the calling thread's priority (Linux: the nice value is per thread).
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority takes plain integers; `who = 0` is the calling thread on Linux.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, nice);
    }
}

impl Drop for CpuPool {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is not allowed inside another runtime: let its
        // threads wind down in the background instead.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
