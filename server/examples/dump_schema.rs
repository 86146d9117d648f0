//! Print the Arrow schema of a parquet file as the JSON the generator embeds
//! (`server/src/gen/schemas/*.json`), without field metadata.
//!
//! cargo run -p astroflight-server --example dump_schema -- FILE.parquet > schema.json
use std::sync::Arc;

use arrow_schema::{Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn main() {
    let path = std::env::args().nth(1).expect("usage: dump_schema FILE.parquet");
    let file = std::fs::File::open(&path).expect("open");
    let schema = ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet")
        .schema()
        .clone();
    let fields: Vec<Arc<Field>> = schema
        .fields()
        .iter()
        .map(|f| Arc::new(astroflight_gen::schema::strip(f)))
        .collect();
    println!("{}", serde_json::to_string(&Schema::new(fields)).expect("json"));
}
