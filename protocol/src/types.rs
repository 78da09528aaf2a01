//! Data types shared by every process: schema, rows, shard descriptions.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// Name of a shard, e.g. `"sh1"`.
pub type ShardId = String;
/// Log sequence number within one shard's WAL.
pub type Lsn = u64;
/// Primary epoch of a shard; raised by the manager at every election or membership change.
pub type Epoch = u64;

/// Most an epoch may move forward in one step: a replica refuses an epoch further past its
/// own, and the shard manager does not skip past an epoch a replica reports further past
/// its catalog's. Honest epochs move by one per election or voter change, so a replica that
/// missed even millions of them is far inside the bound; a forged or corrupt epoch near
/// `u64::MAX` is refused instead of becoming the shard's, where the next epoch would wrap.
pub const MAX_EPOCH_STEP: Epoch = 1 << 32;

/// Whether `epoch` is further past `current` than [`MAX_EPOCH_STEP`].
pub fn epoch_too_far(current: Epoch, epoch: Epoch) -> bool {
    epoch > current.saturating_add(MAX_EPOCH_STEP)
}

/// The column every row is keyed and sharded by.
pub const KEY_COLUMN: &str = "Stud_id";

/// Declared type of a column.
///
/// In JSON it is written `"Number"` or `"String"`; on input other usual spellings are accepted
/// case-insensitively (see [`DType::from_str`]).
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// An integer or a decimal number (or a string of digits).
    Number,
    /// Free text (numbers are accepted too and kept as numbers).
    String,
}

impl DType {
    /// The canonical name, as written in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            DType::Number => "Number",
            DType::String => "String",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DType {
    type Err = String;

    /// Accepts the names clients of the original assignment use, in any case.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "number" | "int" | "integer" | "float" => Ok(DType::Number),
            "string" | "str" | "text" => Ok(DType::String),
            _ => Err(format!("unknown dtype '{s}'; expected Number or String")),
        }
    }
}

/// Mirror of [`DType`] with derived serde, used for compact binary decoding.
#[derive(Deserialize)]
enum DTypeRepr {
    Number,
    String,
}

impl<'de> Deserialize<'de> for DType {
    /// JSON gets the lenient spelling rules; binary formats (bincode) keep the derived
    /// variant-index encoding that the derived `Serialize` writes.
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            Ok(match DTypeRepr::deserialize(d)? {
                DTypeRepr::Number => DType::Number,
                DTypeRepr::String => DType::String,
            })
        }
    }
}

/// Columns of the table and their types, in column order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Schema {
    /// Column names, in order.
    pub columns: Vec<String>,
    /// One type per column, same order.
    pub dtypes: Vec<DType>,
}

impl Schema {
    /// Checks the schema is usable; the message (starting with `"<Error> "`) says what is
    /// wrong.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.columns.is_empty() {
            return Err("<Error> schema has no columns".to_string());
        }
        if self.columns.len() != self.dtypes.len() {
            return Err(format!(
                "<Error> schema has {} columns but {} dtypes",
                self.columns.len(),
                self.dtypes.len()
            ));
        }
        for (i, c) in self.columns.iter().enumerate() {
            if c.is_empty() {
                return Err(format!("<Error> schema column {i} has an empty name"));
            }
            if self.columns[..i].contains(c) {
                return Err(format!("<Error> schema names column '{c}' twice"));
            }
        }
        match self.key_index() {
            None => Err(format!("<Error> schema has no '{KEY_COLUMN}' column")),
            Some(k) if self.dtypes[k] != DType::Number => Err(format!(
                "<Error> schema column '{KEY_COLUMN}' must be a Number, not {}",
                self.dtypes[k]
            )),
            Some(_) => Ok(()),
        }
    }

    /// Checks that a row from the binary protocol fits the schema (JSON rows are checked when
    /// parsed): one value per column, Number columns hold numbers or digit strings, and the key
    /// column holds the row's key.
    pub fn check_row(&self, row: &Row) -> std::result::Result<(), crate::ErrorBody> {
        if row.values.len() != self.columns.len() {
            return Err(crate::ErrorBody::bad_request(format!(
                "row with Stud_id {} has {} values but the schema has {} columns",
                row.key,
                row.values.len(),
                self.columns.len()
            )));
        }
        for ((col, dtype), v) in self.columns.iter().zip(&self.dtypes).zip(&row.values) {
            if let Value::Float(f) = v {
                if !f.is_finite() {
                    return Err(crate::ErrorBody::bad_request(format!(
                        "field '{col}' must be a finite number"
                    )));
                }
            }
            if let (DType::Number, Value::Str(s)) = (dtype, v) {
                if crate::json::parse_key(&serde_json::Value::String(s.clone())).is_none() {
                    return Err(crate::ErrorBody::bad_request(format!(
                        "field '{col}' must be a number"
                    )));
                }
            }
            if col == KEY_COLUMN {
                let key = match v {
                    Value::Int(i) => Some(*i),
                    // Only a float that names an i64 exactly ([-2^63, 2^63), no fraction).
                    Value::Float(f)
                        if f.fract() == 0.0
                            && *f >= -9.223_372_036_854_776e18
                            && *f < 9.223_372_036_854_776e18 =>
                    {
                        Some(*f as i64)
                    }
                    Value::Str(s) => s.parse().ok(),
                    _ => None,
                };
                if key != Some(row.key) {
                    return Err(crate::ErrorBody::bad_request(format!(
                        "field 'Stud_id' does not match the row key {}",
                        row.key
                    )));
                }
            }
        }
        Ok(())
    }

    /// Position of [`KEY_COLUMN`] among the columns; `None` only for a schema that fails
    /// [`Schema::validate`].
    pub fn key_index(&self) -> Option<usize> {
        self.columns.iter().position(|c| c == KEY_COLUMN)
    }

    /// The default table of the assignment, `StudT(Stud_id: Number, Stud_name: String,
    /// Stud_marks: String)`.
    pub fn student_default() -> Schema {
        Schema {
            columns: vec![
                KEY_COLUMN.to_string(),
                "Stud_name".to_string(),
                "Stud_marks".to_string(),
            ],
            dtypes: vec![DType::Number, DType::String, DType::String],
        }
    }
}

/// One cell, kept as the client wrote it so it can be returned unchanged: a Number sent as
/// `"2255"` comes back as the string `"2255"`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Value {
    /// A JSON integer.
    Int(i64),
    /// A JSON number with a fraction or exponent.
    Float(f64),
    /// A JSON string.
    Str(String),
}

/// One row of the table.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Row {
    /// The key column parsed as an integer, so rows can be ordered and routed without
    /// looking at the schema.
    pub key: i64,
    /// Every cell in schema column order, the key column included.
    pub values: Vec<Value>,
}

/// A shard and, where known, its key range `[low, low + size)`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ShardSpec {
    /// The shard's name.
    pub shard_id: ShardId,
    /// `(Stud_id_low, Shard_size)`; `None` when the shard was configured by name alone.
    pub range: Option<(i64, i64)>,
}

impl ShardSpec {
    /// A shard known by name only.
    pub fn named(shard_id: impl Into<ShardId>) -> ShardSpec {
        ShardSpec { shard_id: shard_id.into(), range: None }
    }

    /// A shard holding `[low, low + size)`.
    pub fn with_range(shard_id: impl Into<ShardId>, low: i64, size: i64) -> ShardSpec {
        ShardSpec { shard_id: shard_id.into(), range: Some((low, size)) }
    }

    /// Whether `key` belongs to this shard; always true when the range is unknown, because a
    /// node checks ranges only for shards whose range it was told.
    pub fn contains(&self, key: i64) -> bool {
        match self.range {
            None => true,
            // i128 so that `low + size` cannot overflow near i64::MAX.
            Some((low, size)) => {
                let (k, low, size) = (i128::from(key), i128::from(low), i128::from(size));
                k >= low && k < low + size
            }
        }
    }

    /// Whether both shards have known ranges that share at least one key.
    pub fn overlaps(&self, other: &ShardSpec) -> bool {
        match (self.range, other.range) {
            (Some((a_low, a_size)), Some((b_low, b_size))) => {
                let (a0, a1) = (i128::from(a_low), i128::from(a_low) + i128::from(a_size));
                let (b0, b1) = (i128::from(b_low), i128::from(b_low) + i128::from(b_size));
                a0 < b1 && b0 < a1 && a0 < a1 && b0 < b1
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_spellings_are_lenient_but_named_on_error() {
        for s in ["Number", "number", "INT", "integer", "Float"] {
            assert_eq!(s.parse::<DType>(), Ok(DType::Number), "{s}");
        }
        for s in ["String", "str", "TEXT"] {
            assert_eq!(s.parse::<DType>(), Ok(DType::String), "{s}");
        }
        let err = "Bool".parse::<DType>().unwrap_err();
        assert!(err.contains("'Bool'"), "{err}");
    }

    #[test]
    fn dtype_json_accepts_spellings_and_writes_canonical_names() {
        let d: Vec<DType> = serde_json::from_str(r#"["int", "Text", "Number"]"#).unwrap();
        assert_eq!(d, vec![DType::Number, DType::String, DType::Number]);
        assert_eq!(serde_json::to_string(&d).unwrap(), r#"["Number","String","Number"]"#);
        let err = serde_json::from_str::<DType>(r#""bool""#).unwrap_err().to_string();
        assert!(err.contains("'bool'"), "{err}");
    }

    #[test]
    fn schema_validation_names_the_problem() {
        assert_eq!(Schema::student_default().validate(), Ok(()));
        let mut s = Schema::student_default();
        s.dtypes.pop();
        assert!(s.validate().unwrap_err().contains("3 columns but 2 dtypes"));
        let mut s = Schema::student_default();
        s.columns[2] = "Stud_name".into();
        assert!(s.validate().unwrap_err().contains("'Stud_name' twice"));
        let mut s = Schema::student_default();
        s.columns[0] = "id".into();
        assert!(s.validate().unwrap_err().contains("no 'Stud_id'"));
        let mut s = Schema::student_default();
        s.dtypes[0] = DType::String;
        assert!(s.validate().unwrap_err().contains("must be a Number"));
        let s = Schema { columns: vec![], dtypes: vec![] };
        assert!(s.validate().unwrap_err().starts_with("<Error> "));
    }

    #[test]
    fn key_index_finds_the_key_anywhere() {
        let s = Schema {
            columns: vec!["a".into(), KEY_COLUMN.into()],
            dtypes: vec![DType::String, DType::Number],
        };
        assert_eq!(s.key_index(), Some(1));
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn shard_range_is_half_open_and_overflow_safe() {
        let s = ShardSpec::with_range("sh2", 4096, 4096);
        assert!(!s.contains(4095));
        assert!(s.contains(4096));
        assert!(s.contains(8191));
        assert!(!s.contains(8192));
        let top = ShardSpec::with_range("top", i64::MAX - 1, 10);
        assert!(top.contains(i64::MAX));
        assert!(!top.contains(0));
        assert!(ShardSpec::named("x").contains(-5));
    }

    #[test]
    fn overlap_needs_a_shared_key() {
        let a = ShardSpec::with_range("a", 0, 4096);
        assert!(!a.overlaps(&ShardSpec::with_range("b", 4096, 4096)));
        assert!(a.overlaps(&ShardSpec::with_range("c", 4095, 1)));
        assert!(!a.overlaps(&ShardSpec::with_range("d", 10, 0)));
        assert!(!a.overlaps(&ShardSpec::named("e")));
    }
}
