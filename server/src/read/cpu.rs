//! A dedicated runtime for CPU work: parquet page decompression and decoding (which the async
//! parquet reader does inside `poll`), gunzip and FITS decoding. The gRPC runtime only moves
//! finished batches, so a burst of heavy requests cannot starve connection handling.
//! (DataFusion recommends the same split of I/O and CPU runtimes.)

use tokio::runtime::{Builder, Handle, Runtime};

use crate::error::{Error, Result};

pub struct CpuPool {
    rt: Option<Runtime>,
}

impl CpuPool {
    pub fn new(threads: usize) -> Result<Self> {
        let rt = Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("astroflight-cpu")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the CPU runtime: {e}")))?;
        Ok(CpuPool { rt: Some(rt) })
    }

    pub fn handle(&self) -> Handle {
        self.rt.as_ref().expect("runtime lives until drop").handle().clone()
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
