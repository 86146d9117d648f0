//! Header tables: one Arrow row per HDU.
//!
//! The columns (the contract, in this order): `path`, `hdu`, `type`, `extname`, `bitpix`,
//! `naxis`, `naxes`, `header_offset`, `data_offset`, `data_size`, `cards`; then `gzip`,
//! `zbitpix`, `znaxes` and `error`; then one typed column per key asked for.
//!
//! A file whose scan stopped on an error has one more row, at the HDU where it stopped, with
//! `error` set and the HDU's columns null: the rows before it are still there, and the scan of
//! the other files goes on.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, ListBuilder, RecordBatch, StringBuilder,
    StructBuilder,
};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};

use astroflight_fits::header::{parse_float, Card, Hdu, ValueKind};

use super::file_headers::FileHeaders;
use crate::error::{quoted, Error, Result};

/// The columns every header table has, before the key columns.
pub const BASE_COLUMNS: [&str; 15] = [
    "path",
    "hdu",
    "type",
    "extname",
    "bitpix",
    "naxis",
    "naxes",
    "header_offset",
    "data_offset",
    "data_size",
    "cards",
    "gzip",
    "zbitpix",
    "znaxes",
    "error",
];

fn card_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, true),
        Field::new("comment", DataType::Utf8, true),
    ])
}

fn int64_list() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Int64, true)))
}

/// The base columns' fields.
pub fn base_fields() -> Vec<Field> {
    vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("hdu", DataType::Int32, false),
        Field::new("type", DataType::Utf8, true),
        Field::new("extname", DataType::Utf8, true),
        Field::new("bitpix", DataType::Int32, true),
        Field::new("naxis", DataType::Int32, true),
        Field::new("naxes", int64_list(), true),
        Field::new("header_offset", DataType::Int64, true),
        Field::new("data_offset", DataType::Int64, true),
        Field::new("data_size", DataType::Int64, true),
        Field::new(
            "cards",
            DataType::List(Arc::new(Field::new("item", DataType::Struct(card_fields()), true))),
            true,
        ),
        Field::new("gzip", DataType::Boolean, false),
        Field::new("zbitpix", DataType::Int32, true),
        Field::new("znaxes", int64_list(), true),
        Field::new("error", DataType::Utf8, true),
    ]
}

/// The type of a key column, from the syntax of the key's values in the HDUs of the query:
/// all logical: boolean; all integers: int64; integers and reals: float64; anything else
/// (strings, complex numbers, commentary text, a mix): string. A key never seen: string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Boolean,
    Int64,
    Float64,
    Utf8,
}

impl KeyType {
    pub fn data_type(self) -> DataType {
        match self {
            KeyType::Boolean => DataType::Boolean,
            KeyType::Int64 => DataType::Int64,
            KeyType::Float64 => DataType::Float64,
            KeyType::Utf8 => DataType::Utf8,
        }
    }

    pub fn of_data_type(t: &DataType) -> Option<KeyType> {
        Some(match t {
            DataType::Boolean => KeyType::Boolean,
            DataType::Int64 => KeyType::Int64,
            DataType::Float64 => KeyType::Float64,
            DataType::Utf8 => KeyType::Utf8,
            _ => return None,
        })
    }

    /// The type of a value of this kind (None: the value does not decide a type).
    fn of_card(c: &Card) -> Option<KeyType> {
        match c.kind {
            ValueKind::Undefined => None,
            ValueKind::Logical => Some(KeyType::Boolean),
            ValueKind::Integer => match c.value.as_deref().map(str::parse::<i64>) {
                Some(Ok(_)) => Some(KeyType::Int64),
                _ => Some(KeyType::Float64),
            },
            ValueKind::Float => Some(KeyType::Float64),
            _ => Some(KeyType::Utf8),
        }
    }

    fn join(self, other: KeyType) -> KeyType {
        use KeyType::*;
        match (self, other) {
            (a, b) if a == b => a,
            (Int64, Float64) | (Float64, Int64) => Float64,
            _ => Utf8,
        }
    }
}

/// The name a key is matched by: `HIERARCH ` dropped, case ignored (FITS keywords are upper
/// case; astropy's lookups ignore case too).
fn key_matches(card_key: &str, asked: &str) -> bool {
    let strip = |k: &str| {
        let k = k.trim();
        match k.get(..9) {
            Some(p) if p.eq_ignore_ascii_case("HIERARCH ") => k[9..].trim_start().to_string(),
            _ => k.to_string(),
        }
    };
    strip(card_key).eq_ignore_ascii_case(&strip(asked))
}

/// The cards of an HDU holding `key`.
fn cards_of<'a>(h: &'a Hdu, key: &'a str) -> impl Iterator<Item = &'a Card> + 'a {
    h.cards.iter().filter(move |c| key_matches(&c.key, key))
}

/// Gathers the types of key columns over the HDUs of a query.
#[derive(Debug, Default)]
pub struct KeyTypes {
    seen: BTreeMap<String, Option<KeyType>>,
}

impl KeyTypes {
    pub fn new(keys: &[String]) -> Self {
        KeyTypes {
            seen: keys.iter().map(|k| (k.clone(), None)).collect(),
        }
    }

    pub fn add(&mut self, f: &FileHeaders) {
        for h in &f.hdus {
            for (key, t) in self.seen.iter_mut() {
                let kinds = cards_of(h, key).filter_map(KeyType::of_card);
                for k in kinds {
                    *t = Some(t.map_or(k, |t| t.join(k)));
                }
            }
        }
    }

    /// The key columns, in the order asked.
    pub fn fields(&self, keys: &[String]) -> Vec<Field> {
        keys.iter()
            .map(|k| {
                let t = self.seen.get(k).copied().flatten().unwrap_or(KeyType::Utf8);
                Field::new(k, t.data_type(), true)
            })
            .collect()
    }
}

/// The schema of a header table with these key columns.
pub fn schema(key_fields: Vec<Field>) -> SchemaRef {
    let mut f = base_fields();
    f.extend(key_fields);
    Arc::new(Schema::new(f))
}

enum KeyColumn {
    Boolean(BooleanBuilder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    Utf8(StringBuilder),
}

impl KeyColumn {
    fn data_type(&self) -> DataType {
        match self {
            KeyColumn::Boolean(_) => DataType::Boolean,
            KeyColumn::Int64(_) => DataType::Int64,
            KeyColumn::Float64(_) => DataType::Float64,
            KeyColumn::Utf8(_) => DataType::Utf8,
        }
    }
}

/// Whether a key's value in an HDU fits the column (Err: the value as written): the type the
/// value alone would give ([`KeyType::of_card`]) joins into the column's type.
fn check_key(col: &KeyColumn, h: &Hdu, key: &str) -> std::result::Result<(), String> {
    let Some(c) = cards_of(h, key).next() else {
        return Ok(());
    };
    let column = KeyType::of_data_type(&col.data_type()).expect("key columns have key types");
    match KeyType::of_card(c) {
        Some(t) if t.join(column) != column => Err(c.value.clone().unwrap_or_default()),
        _ => Ok(()),
    }
}

/// Builds batches of a header table of a given schema.
pub struct RowsBuilder {
    schema: SchemaRef,
    keys: Vec<String>,
    rows: usize,
    path: StringBuilder,
    hdu: Int32Builder,
    kind: StringBuilder,
    extname: StringBuilder,
    bitpix: Int32Builder,
    naxis: Int32Builder,
    naxes: ListBuilder<Int64Builder>,
    header_offset: Int64Builder,
    data_offset: Int64Builder,
    data_size: Int64Builder,
    cards: ListBuilder<StructBuilder>,
    gzip: BooleanBuilder,
    zbitpix: Int32Builder,
    znaxes: ListBuilder<Int64Builder>,
    error: StringBuilder,
    key_columns: Vec<KeyColumn>,
}

impl RowsBuilder {
    /// A builder for `schema` (the base columns, then key columns of the four key types).
    pub fn new(schema: SchemaRef) -> Result<Self> {
        let mut keys = Vec::new();
        let mut key_columns = Vec::new();
        for f in schema.fields().iter().skip(BASE_COLUMNS.len()) {
            keys.push(f.name().clone());
            key_columns.push(match KeyType::of_data_type(f.data_type()) {
                Some(KeyType::Boolean) => KeyColumn::Boolean(BooleanBuilder::new()),
                Some(KeyType::Int64) => KeyColumn::Int64(Int64Builder::new()),
                Some(KeyType::Float64) => KeyColumn::Float64(Float64Builder::new()),
                Some(KeyType::Utf8) => KeyColumn::Utf8(StringBuilder::new()),
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "key column {} has type {}, which header tables do not produce",
                        f.name(),
                        f.data_type()
                    )))
                }
            });
        }
        let list = || ListBuilder::new(Int64Builder::new());
        Ok(RowsBuilder {
            schema,
            keys,
            rows: 0,
            path: StringBuilder::new(),
            hdu: Int32Builder::new(),
            kind: StringBuilder::new(),
            extname: StringBuilder::new(),
            bitpix: Int32Builder::new(),
            naxis: Int32Builder::new(),
            naxes: list(),
            header_offset: Int64Builder::new(),
            data_offset: Int64Builder::new(),
            data_size: Int64Builder::new(),
            cards: ListBuilder::new(StructBuilder::from_fields(card_fields(), 0)),
            gzip: BooleanBuilder::new(),
            zbitpix: Int32Builder::new(),
            znaxes: list(),
            error: StringBuilder::new(),
            key_columns,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The rows of one file: one per HDU, and one more for the error that stopped its scan.
    /// Fails when a key's value does not fit its column's type (see [`append_key`]).
    pub fn add_file(&mut self, f: &FileHeaders) -> Result<()> {
        for h in &f.hdus {
            // Key values first: a value that does not fit leaves the builders untouched.
            for (key, col) in self.keys.iter().zip(self.key_columns.iter()) {
                check_key(col, h, key).map_err(|v| {
                    Error::DataLoss(format!(
                        "key {} of HDU {} of {} is {v:?}, which does not fit the column's type {} (key columns are typed when the query is planned, and this file changed since): plan the query again",
                        quoted(key),
                        h.index,
                        f.path,
                        col.data_type()
                    ))
                })?;
            }
        }
        for h in &f.hdus {
            self.add_hdu(&f.path, f.gzip, h);
        }
        if let Some(e) = &f.error {
            self.add_error(f, e);
        }
        Ok(())
    }

    fn add_hdu(&mut self, path: &str, gzip: bool, h: &Hdu) {
        self.rows += 1;
        self.path.append_value(path);
        self.hdu.append_value(h.index as i32);
        self.kind.append_value(h.kind.name());
        self.extname.append_option(h.extname.as_deref());
        self.bitpix.append_value(h.bitpix as i32);
        self.naxis.append_value(h.naxis as i32);
        self.naxes.append_value(h.naxes.iter().map(|&n| Some(n)));
        self.header_offset.append_value(h.header_offset as i64);
        self.data_offset.append_value(h.data_offset as i64);
        self.data_size.append_value(h.data_size as i64);
        let cards = self.cards.values();
        for c in &h.cards {
            cards
                .field_builder::<StringBuilder>(0)
                .expect("key")
                .append_value(&c.key);
            cards
                .field_builder::<StringBuilder>(1)
                .expect("value")
                .append_option(c.value.as_deref());
            cards
                .field_builder::<StringBuilder>(2)
                .expect("comment")
                .append_option(c.comment.as_deref());
            cards.append(true);
        }
        self.cards.append(true);
        self.gzip.append_value(gzip);
        self.zbitpix.append_option(h.zbitpix.map(|z| z as i32));
        match &h.znaxes {
            Some(z) => self.znaxes.append_value(z.iter().map(|&n| Some(n))),
            None => self.znaxes.append_null(),
        }
        self.error.append_null();
        for (key, col) in self.keys.iter().zip(self.key_columns.iter_mut()) {
            append_key(col, h, key);
        }
    }

    fn add_error(&mut self, f: &FileHeaders, e: &str) {
        self.rows += 1;
        self.path.append_value(&f.path);
        self.hdu.append_value(f.hdus.len() as i32);
        self.kind.append_null();
        self.extname.append_null();
        self.bitpix.append_null();
        self.naxis.append_null();
        self.naxes.append_null();
        // Where the HDU that could not be read starts, when known.
        self.header_offset
            .append_value(f.hdus.last().map_or(0, |h| h.next_offset()) as i64);
        self.data_offset.append_null();
        self.data_size.append_null();
        self.cards.append_null();
        self.gzip.append_value(f.gzip);
        self.zbitpix.append_null();
        self.znaxes.append_null();
        self.error.append_value(e);
        for col in &mut self.key_columns {
            match col {
                KeyColumn::Boolean(b) => b.append_null(),
                KeyColumn::Int64(b) => b.append_null(),
                KeyColumn::Float64(b) => b.append_null(),
                KeyColumn::Utf8(b) => b.append_null(),
            }
        }
    }

    /// The rows so far as a batch; the builder starts again empty.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        self.rows = 0;
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.path.finish()),
            Arc::new(self.hdu.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.extname.finish()),
            Arc::new(self.bitpix.finish()),
            Arc::new(self.naxis.finish()),
            Arc::new(self.naxes.finish()),
            Arc::new(self.header_offset.finish()),
            Arc::new(self.data_offset.finish()),
            Arc::new(self.data_size.finish()),
            Arc::new(self.cards.finish()),
            Arc::new(self.gzip.finish()),
            Arc::new(self.zbitpix.finish()),
            Arc::new(self.znaxes.finish()),
            Arc::new(self.error.finish()),
        ];
        for col in &mut self.key_columns {
            cols.push(match col {
                KeyColumn::Boolean(b) => Arc::new(b.finish()),
                KeyColumn::Int64(b) => Arc::new(b.finish()),
                KeyColumn::Float64(b) => Arc::new(b.finish()),
                KeyColumn::Utf8(b) => Arc::new(b.finish()),
            });
        }
        // The list and struct builders make fields of their own; cast them to the schema's.
        let cols = cols
            .into_iter()
            .zip(self.schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c)
                } else {
                    arrow::compute::cast(&c, f.data_type())
                        .map_err(|e| Error::Internal(format!("header table column {}: {e}", f.name())))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        RecordBatch::try_new(self.schema.clone(), cols).map_err(|e| Error::Internal(format!("header table: {e}")))
    }
}

/// A key's value in an HDU, in the column's type (checked by [`check_key`] first). Commentary
/// keys (`COMMENT`, `HISTORY`) join their cards with newlines; other keys take the first card
/// (as astropy's `header[key]`); an undefined value is null.
fn append_key(col: &mut KeyColumn, h: &Hdu, key: &str) {
    let first = cards_of(h, key).next();
    match col {
        KeyColumn::Boolean(b) => b.append_option(first.and_then(|c| match c.value.as_deref() {
            Some("T") => Some(true),
            Some("F") => Some(false),
            _ => None,
        })),
        KeyColumn::Int64(b) => b.append_option(first.and_then(|c| c.value.as_deref()?.parse::<i64>().ok())),
        KeyColumn::Float64(b) => b.append_option(first.and_then(|c| parse_float(c.value.as_deref()?))),
        KeyColumn::Utf8(b) => match first {
            Some(c) if c.kind == ValueKind::Commentary => {
                let all: Vec<&str> = cards_of(h, key).filter_map(|c| c.value.as_deref()).collect();
                b.append_value(all.join("\n"))
            }
            Some(c) => b.append_option(c.value.as_deref()),
            None => b.append_null(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::FileVersion;
    use arrow::array::{Array, AsArray, Int64Array};
    use arrow::datatypes::{Float64Type, Int64Type};
    use astroflight_fits::header::HduKind;

    fn schema_of(f: Vec<Field>) -> SchemaRef {
        schema(f)
    }

    fn card(key: &str, value: &str, kind: ValueKind) -> Card {
        Card {
            key: key.into(),
            value: Some(value.into()),
            comment: None,
            kind,
        }
    }

    fn file(cards: Vec<Vec<Card>>, error: Option<&str>) -> FileHeaders {
        FileHeaders {
            path: "x.fits".into(),
            version: FileVersion {
                size: 0,
                e_tag: None,
                last_modified_ms: 0,
            },
            gzip: false,
            hdus: cards
                .into_iter()
                .enumerate()
                .map(|(index, cards)| Hdu {
                    index,
                    kind: HduKind::Image,
                    extname: None,
                    bitpix: 8,
                    naxis: 0,
                    naxes: vec![],
                    pcount: 0,
                    gcount: 1,
                    header_offset: 2880 * index as u64,
                    data_offset: 2880 * (index as u64 + 1),
                    data_size: 0,
                    zbitpix: None,
                    znaxes: None,
                    cards,
                })
                .collect(),
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn key_columns_are_typed_from_the_values() {
        let f = file(
            vec![
                vec![
                    card("EXPTIME", "100", ValueKind::Integer),
                    card("NCOMBINE", "3", ValueKind::Integer),
                    card("SIMPLE", "T", ValueKind::Logical),
                    card("HIERARCH ESO DET", "x", ValueKind::String),
                    card("HISTORY", "a", ValueKind::Commentary),
                    card("HISTORY", "b", ValueKind::Commentary),
                ],
                vec![
                    card("EXPTIME", "1.5D2", ValueKind::Float),
                    card("NCOMBINE", "'3'", ValueKind::String),
                ],
            ],
            Some("HDU 2: bad"),
        );
        let keys: Vec<String> = ["exptime", "NCOMBINE", "SIMPLE", "ESO DET", "HISTORY", "MISSING"]
            .map(String::from)
            .to_vec();
        let mut types = KeyTypes::new(&keys);
        types.add(&f);
        let schema = schema_of(types.fields(&keys));
        let t = |name: &str| schema.field_with_name(name).unwrap().data_type().clone();
        assert_eq!(t("exptime"), DataType::Float64);
        assert_eq!(t("NCOMBINE"), DataType::Utf8);
        assert_eq!(t("SIMPLE"), DataType::Boolean);
        assert_eq!(t("MISSING"), DataType::Utf8);
        let mut b = RowsBuilder::new(schema.clone()).unwrap();
        b.add_file(&f).unwrap();
        assert_eq!(b.rows(), 3);
        let batch = b.finish().unwrap();
        let exptime = batch.column_by_name("exptime").unwrap().as_primitive::<Float64Type>();
        assert_eq!((exptime.value(0), exptime.value(1)), (100.0, 150.0));
        assert!(exptime.is_null(2));
        assert_eq!(
            batch.column_by_name("ESO DET").unwrap().as_string::<i32>().value(0),
            "x"
        );
        assert_eq!(
            batch.column_by_name("HISTORY").unwrap().as_string::<i32>().value(0),
            "a\nb"
        );
        let hdu = batch
            .column_by_name("hdu")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int32Type>();
        assert_eq!(hdu.values().to_vec(), vec![0, 1, 2]);
        let err = batch.column_by_name("error").unwrap().as_string::<i32>();
        assert!(err.is_null(0) && err.value(2) == "HDU 2: bad");
        let ho = batch
            .column_by_name("header_offset")
            .unwrap()
            .as_primitive::<Int64Type>();
        assert_eq!(ho.value(2), 5760);
        let _: &Int64Array = ho;
        // A value that no longer fits its column fails, naming the key and the file.
        let mut types = KeyTypes::new(&keys[..1]);
        types.add(&file(vec![vec![card("EXPTIME", "100", ValueKind::Integer)]], None));
        let mut b = RowsBuilder::new(schema_of(types.fields(&keys[..1]))).unwrap();
        let e = b.add_file(&f).unwrap_err().to_string();
        assert!(
            e.contains("\"exptime\"") && e.contains("1.5D2") && e.contains("plan the query again"),
            "{e}"
        );
        assert_eq!(b.rows(), 0);
    }
}
