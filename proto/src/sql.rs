//! The opaque handles of astroflight's Flight SQL service (`SqlHandle` in astroflight.proto).
//!
//! Flight SQL lets a server choose its statement and prepared statement handles. astroflight's
//! are stateless: a handle carries the SQL, the bound parameters and, in the ticket of one
//! endpoint of a split scan, the files that endpoint reads. Any replica serving the same lake
//! can answer it, and nothing is held between calls.

pub use crate::ticket::{SqlFile, SqlHandle, SqlPart};
use prost::Message;

use crate::quoted;

/// Longest SQL text a handle may carry (bytes).
pub const MAX_SQL_BYTES: usize = 1 << 20;

impl SqlHandle {
    /// A handle of SQL alone.
    pub fn of_sql(sql: impl Into<String>) -> Self {
        SqlHandle {
            sql: sql.into(),
            parameters: Vec::new(),
            part: None,
        }
    }

    /// Decode and check a handle received from a client; `what` names it in errors.
    pub fn decode_checked(bytes: &[u8], what: &str) -> Result<SqlHandle, String> {
        let h = SqlHandle::decode(bytes).map_err(|e| {
            format!("{what} is not a handle this server issued ({e}); use the handle GetFlightInfo or CreatePreparedStatement returned")
        })?;
        if h.sql.trim().is_empty() {
            return Err(format!("{what} carries no SQL; use the handle this server returned"));
        }
        if h.sql.len() > MAX_SQL_BYTES {
            return Err(format!(
                "{what} carries {} bytes of SQL; at most {MAX_SQL_BYTES} are accepted",
                h.sql.len()
            ));
        }
        if let Some(p) = &h.part {
            if p.count == 0 || p.index >= p.count {
                return Err(format!("{what} names endpoint {} of {}", p.index, p.count));
            }
            for f in &p.files {
                if f.path.is_empty() || f.path.starts_with('/') || f.path.split('/').any(|s| s == "..") {
                    return Err(format!(
                        "{what} names the file {}, which is not a path in the lake",
                        quoted(&f.path)
                    ));
                }
                if f.row_groups.iter().any(|&g| g >= f.row_group_count) {
                    return Err(format!(
                        "{what} names row groups {:?} of {}, which has {}",
                        f.row_groups,
                        quoted(&f.path),
                        f.row_group_count
                    ));
                }
            }
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_bad_ones_say_why() {
        let h = SqlHandle {
            sql: "SELECT 1".into(),
            parameters: vec![1, 2],
            part: Some(SqlPart {
                table: "ztf".into(),
                files: vec![SqlFile {
                    path: "year=2024/a.parquet".into(),
                    size: 10,
                    e_tag: None,
                    last_modified_ms: 3,
                    row_groups: vec![1],
                    row_group_count: 2,
                }],
                index: 0,
                count: 1,
            }),
        };
        let back = SqlHandle::decode_checked(&h.encode_to_vec(), "the ticket").unwrap();
        assert_eq!(back, h);
        // Raw SQL text is not a handle.
        assert!(SqlHandle::decode_checked(b"SELECT 1", "the ticket").is_err());
        let mut bad = h.clone();
        bad.part.as_mut().unwrap().files[0].path = "../etc/passwd".into();
        let e = SqlHandle::decode_checked(&bad.encode_to_vec(), "the ticket").unwrap_err();
        assert!(e.contains("not a path in the lake"), "{e}");
        let mut bad = h;
        bad.part.as_mut().unwrap().files[0].row_groups = vec![2];
        assert!(SqlHandle::decode_checked(&bad.encode_to_vec(), "the ticket").is_err());
    }
}
