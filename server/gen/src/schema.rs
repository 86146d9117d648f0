//! The alert schemas the generator writes, embedded as JSON so that `astroflight gen` needs
//! nothing but the binary. They were dumped from the real files in `../shared/data` with
//! `cargo run -p astroflight-server --example dump_schema -- FILE`; the `embedded_schemas_match`
//! test compares them with those files whenever they are present.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, Schema};

/// ZTF alert schema 3.3 as Fink's raw lake stores it (`online/raw/20200101`).
pub const ZTF_RAW: &str = include_str!("schemas/ztf_raw_3.3.json");
/// Rubin alert schemas as Fink stores them (`lsst/schema/lsst.v9_0.parquet`, `v10_0`).
pub const LSST_V9_0: &str = include_str!("schemas/lsst_v9_0.json");
pub const LSST_V10_0: &str = include_str!("schemas/lsst_v10_0.json");

pub fn parse(json: &str) -> Schema {
    serde_json::from_str(json).expect("embedded schema is valid JSON (checked by tests)")
}

/// A copy of the field without metadata (parquet field ids and the like), recursively.
pub fn strip(f: &Field) -> Field {
    let ty = match f.data_type() {
        DataType::Struct(fs) => DataType::Struct(strip_all(fs)),
        DataType::List(c) => DataType::List(Arc::new(strip(c))),
        DataType::LargeList(c) => DataType::LargeList(Arc::new(strip(c))),
        DataType::Map(c, sorted) => DataType::Map(Arc::new(strip(c)), *sorted),
        t => t.clone(),
    };
    Field::new(f.name(), ty, f.is_nullable())
}

fn strip_all(fs: &Fields) -> Fields {
    fs.iter().map(|f| Arc::new(strip(f))).collect()
}

pub fn strip_schema(s: &Schema) -> Schema {
    Schema::new(strip_all(s.fields()))
}
