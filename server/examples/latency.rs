//! Single-cutout latency from a Rust Flight client (no Python in the loop).
//!
//! cargo run --release -p astroflight-server --example latency -- grpc://127.0.0.1:8815 ztf Science CANDID...
use std::time::Instant;

use astroflight_client::{Client, CutoutRequest, Selector, StampFormat, StampKind};
use futures::TryStreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (url, dataset, kind) = (&args[1], &args[2], astroflight_proto::json::parse_kind(&args[3])?);
    let candids: Vec<i64> = args[4..].iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
    let mut c = Client::connect(url).await?;
    let mut lat = Vec::new();
    for cd in &candids {
        let req = CutoutRequest {
            dataset: dataset.clone(),
            selector: Selector::Candids {
                candids: vec![*cd],
                object_id: None,
            },
            kind,
            format: StampFormat::Gzip,
            hdu: 0,
        };
        let t0 = Instant::now();
        let batches: Vec<_> = c.cutouts(&req).await?.try_collect().await?;
        lat.push(t0.elapsed().as_secs_f64() * 1e3);
        assert!(!batches.is_empty() || kind == StampKind::All);
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "{} requests: p50 {:.2} ms, p99 {:.2} ms",
        lat.len(),
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100]
    );
    Ok(())
}
