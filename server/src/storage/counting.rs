//! [`CountingStore`]: counts what is read through it into any number of [`IoStats`] (the
//! server's totals and the current request's), and holds a request's reads against its memory
//! account while their bytes live.

use super::*;

/// A store that counts what is read through it.
#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    stats: Vec<Arc<IoStats>>,
    ranges: RangeReads,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn ObjectStore>, ranges: RangeReads, stats: Vec<Arc<IoStats>>) -> Self {
        CountingStore { inner, stats, ranges }
    }
    fn add(&self, requests: u64, bytes: u64) {
        for s in &self.stats {
            s.add(requests, bytes);
        }
    }

    /// The account reads are held against (the request's), if any.
    fn account(&self) -> Option<&Arc<crate::memory::Account>> {
        self.stats.iter().find_map(|s| s.memory())
    }

    /// Reserve `n` bytes for a read of `location` before it is made (RESOURCE_EXHAUSTED when
    /// the request's share or the budget has no room: the read is not made).
    fn reserve(&self, location: &Path, n: u64) -> object_store::Result<Option<crate::memory::Reservation>> {
        let Some(account) = self.account() else {
            return Ok(None);
        };
        account
            .reserve(n, &format_args!("reading {location}"))
            .map(Some)
            .map_err(|e| object_store::Error::Generic {
                store: crate::error::MEMORY_STORE,
                source: Box::new(e),
            })
    }
}

/// Bytes that hold their share of a reservation until the last slice of them is dropped.
struct Held {
    bytes: Bytes,
    _reservation: crate::memory::Reservation,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

fn held(bytes: Bytes, reservation: &mut Option<crate::memory::Reservation>) -> Bytes {
    match reservation {
        Some(r) => {
            let part = r.split(bytes.len() as u64);
            Bytes::from_owner(Held {
                bytes,
                _reservation: part,
            })
        }
        None => bytes,
    }
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

wrapper_store!(CountingStore {
    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        let head = options.head;
        // A child span of the request's: one per storage request, with its bytes.
        let span =
            tracing::info_span!("storage.read", path = %location, requests = 1i64, bytes = tracing::field::Empty);
        async {
            // A request counts when it is made; its bytes when they arrive.
            self.add(1, 0);
            let r = self.inner.get_opts(location, options).await?;
            if head {
                return Ok(r);
            }
            let n = r.range.end - r.range.start;
            self.add(0, n);
            tracing::Span::current().record("bytes", n as i64);
            // A request's reads hold its memory while their bytes live.
            let mut reservation = self.reserve(location, n)?;
            if reservation.is_none() {
                return Ok(r);
            }
            let (meta, range, attributes) = (r.meta.clone(), r.range.clone(), r.attributes.clone());
            // A local file is read in one blocking read of the whole range: its stream would
            // be 8 KiB chunks, each a hop to the blocking pool (128 for one stamp page, which
            // made a local cutout ~4 ms slower). Remote bodies stream as they arrive.
            let chunks = if matches!(r.payload, GetResultPayload::File(..)) {
                let body = held(r.bytes().await?, &mut reservation);
                stream::once(async move { Ok(body) }).boxed()
            } else {
                r.into_stream().map_ok(move |b| held(b, &mut reservation)).boxed()
            };
            Ok(GetResult {
                payload: GetResultPayload::Stream(chunks),
                meta,
                range,
                attributes,
            })
        }
        .instrument(span)
        .await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        match self.ranges {
            RangeReads::Exact => {
                let n: u64 = ranges.iter().map(|r| r.end - r.start).sum();
                let span = tracing::info_span!("storage.read", path = %location, requests = ranges.len() as i64, bytes = n as i64);
                self.add(ranges.len() as u64, 0);
                let mut reservation = self.reserve(location, n)?;
                let out = self.inner.get_ranges(location, ranges).instrument(span).await?;
                self.add(0, n);
                Ok(out.into_iter().map(|b| held(b, &mut reservation)).collect())
            }
            RangeReads::Coalesced => {
                // Each merged GET goes through `get_range` (counted, held, traced on its own).
                object_store::coalesce_ranges(ranges, |r| self.get_range(location, r), OBJECT_STORE_COALESCE_DEFAULT)
                    .await
            }
        }
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.add(1, 0);
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.add(1, 0);
        self.inner.list_with_delimiter(prefix).await
    }

});
