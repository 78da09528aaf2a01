//! Validation of JSON rows and shard lists against the schema, for the HTTP shims of the
//! node and the balancer. Pure functions: `serde_json::Value` in, typed values out.
//!
//! Messages start with `"<Error> "` and name the offending field, as the contract requires
//! of every 400 answer.

use std::fmt;

use serde_json::{Map, Number, Value as Json};

use crate::types::{DType, Row, Schema, ShardSpec, Value, KEY_COLUMN};

/// Why a JSON value was refused; `Display` is the message for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field at fault, when there is one.
    pub field: Option<String>,
    /// Human message, starting with `"<Error> "`.
    pub message: String,
}

impl FieldError {
    fn new(field: Option<&str>, message: String) -> FieldError {
        FieldError { field: field.map(str::to_string), message }
    }

    fn missing(field: &str) -> FieldError {
        FieldError::new(Some(field), format!("<Error> missing field '{field}'"))
    }

    fn wrong(field: &str, expected: &str, found: &Json) -> FieldError {
        FieldError::new(
            Some(field),
            format!("<Error> field '{field}' must be {expected}, got {}", describe(found)),
        )
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FieldError {}

/// Names a JSON value in an error message; short scalars are shown as written.
fn describe(v: &Json) -> String {
    match v {
        Json::Null => "null".to_string(),
        Json::Bool(b) => format!("boolean {b}"),
        Json::Number(n) => format!("number {n}"),
        Json::String(s) if s.chars().count() <= 32 => format!("string {s:?}"),
        Json::String(_) => "a string".to_string(),
        Json::Array(_) => "an array".to_string(),
        Json::Object(_) => "an object".to_string(),
    }
}

/// `-?[0-9]+`: the only strings a Number column accepts.
fn is_digit_string(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// 2^63 as f64; an f64 is a valid i64 exactly when it is in [-2^63, 2^63).
const I64_BOUND_F64: f64 = 9_223_372_036_854_775_808.0;

/// The integer a key field holds, or why it is not one.
fn key_of(field: &str, v: &Json) -> Result<i64, FieldError> {
    let not_integer = || FieldError::wrong(field, "an integer", v);
    match v {
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i)
            } else if n.is_u64() {
                Err(not_integer())
            } else {
                // A float such as 2255.0 names an integer even though JSON wrote a fraction.
                match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && (-I64_BOUND_F64..I64_BOUND_F64).contains(&f) => {
                        Ok(f as i64)
                    }
                    _ => Err(not_integer()),
                }
            }
        }
        Json::String(s) if is_digit_string(s) => s.parse::<i64>().map_err(|_| not_integer()),
        _ => Err(not_integer()),
    }
}

/// A JSON number as a cell; integers beyond i64 are refused rather than silently rounded.
fn number_cell(field: &str, n: &Number, whole: &Json) -> Result<Value, FieldError> {
    if let Some(i) = n.as_i64() {
        Ok(Value::Int(i))
    } else if n.is_u64() {
        Err(FieldError::new(
            Some(field),
            format!("<Error> field '{field}': integer {n} is out of range"),
        ))
    } else {
        n.as_f64().map(Value::Float).ok_or_else(|| FieldError::wrong(field, "a number", whole))
    }
}

/// The cell a JSON value gives for a column of type `dtype`.
fn cell(field: &str, dtype: DType, v: &Json) -> Result<Value, FieldError> {
    match (dtype, v) {
        (_, Json::Number(n)) => number_cell(field, n, v),
        (DType::Number, Json::String(s)) if is_digit_string(s) => Ok(Value::Str(s.clone())),
        (DType::Number, _) => Err(FieldError::wrong(field, "a number or a string of digits", v)),
        (DType::String, Json::String(s)) => Ok(Value::Str(s.clone())),
        (DType::String, _) => Err(FieldError::wrong(field, "a string or a number", v)),
    }
}

/// Validates one row against the schema. Every column must be present; fields the schema
/// does not name are ignored. Cells are kept as written (see [`Value`]).
pub fn row_from_json(schema: &Schema, v: &Json) -> Result<Row, FieldError> {
    let obj = v.as_object().ok_or_else(|| {
        FieldError::new(None, format!("<Error> a row must be a JSON object, got {}", describe(v)))
    })?;
    let key_index = schema.key_index().ok_or_else(|| {
        FieldError::new(None, format!("<Error> schema has no '{KEY_COLUMN}' column"))
    })?;
    let mut key = None;
    let mut values = Vec::with_capacity(schema.columns.len());
    for (i, (column, dtype)) in schema.columns.iter().zip(&schema.dtypes).enumerate() {
        let field = obj.get(column).ok_or_else(|| FieldError::missing(column))?;
        if i == key_index {
            key = Some(key_of(column, field)?);
        }
        values.push(cell(column, *dtype, field)?);
    }
    // Only a schema with fewer dtypes than columns (one that fails `Schema::validate`) can
    // end the zip before the key column.
    let key = key.ok_or_else(|| {
        FieldError::new(None, format!("<Error> schema has no dtype for '{KEY_COLUMN}'"))
    })?;
    Ok(Row { key, values })
}

/// Validates a JSON array of rows; the message of a bad row also gives its position.
pub fn rows_from_json(schema: &Schema, v: &Json) -> Result<Vec<Row>, FieldError> {
    let items = v.as_array().ok_or_else(|| {
        FieldError::new(None, format!("<Error> rows must be a JSON array, got {}", describe(v)))
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            row_from_json(schema, item).map_err(|e| FieldError {
                message: format!("{} (row {i})", e.message),
                field: e.field,
            })
        })
        .collect()
}

/// One cell as JSON, as the client wrote it.
pub fn value_to_json(v: &Value) -> Json {
    match v {
        Value::Int(i) => Json::from(*i),
        // Non-finite floats cannot come from JSON; null is the only JSON for them anyway.
        Value::Float(f) => Number::from_f64(*f).map(Json::Number).unwrap_or(Json::Null),
        Value::Str(s) => Json::String(s.clone()),
    }
}

/// A row as a JSON object with its fields in schema column order.
pub fn row_to_json(schema: &Schema, row: &Row) -> Json {
    let mut obj = Map::with_capacity(schema.columns.len());
    for (column, value) in schema.columns.iter().zip(&row.values) {
        obj.insert(column.clone(), value_to_json(value));
    }
    Json::Object(obj)
}

/// Rows as a JSON array of objects.
pub fn rows_to_json(schema: &Schema, rows: &[Row]) -> Json {
    Json::Array(rows.iter().map(|r| row_to_json(schema, r)).collect())
}

/// A key given as an integer (or a float without fraction) or as a string of digits.
pub fn parse_key(v: &Json) -> Option<i64> {
    key_of(KEY_COLUMN, v).ok()
}

/// Reads a required key field of `obj` (e.g. `Stud_id` of `/update`), naming it on error.
pub fn key_field(obj: &Json, field: &str) -> Result<i64, FieldError> {
    let v = obj.get(field).ok_or_else(|| FieldError::missing(field))?;
    key_of(field, v)
}

/// A schema from `{"columns": [...], "dtypes": [...]}`, validated.
pub fn schema_from_json(v: &Json) -> Result<Schema, FieldError> {
    let string_list = |field: &str| -> Result<Vec<String>, FieldError> {
        let list = v.get(field).ok_or_else(|| FieldError::missing(field))?;
        let items =
            list.as_array().ok_or_else(|| FieldError::wrong(field, "an array of strings", list))?;
        items
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| FieldError::wrong(field, "an array of strings", x))
            })
            .collect()
    };
    if !v.is_object() {
        return Err(FieldError::wrong("schema", "an object", v));
    }
    let columns = string_list("columns")?;
    let dtypes = string_list("dtypes")?
        .iter()
        .map(|d| {
            d.parse::<DType>().map_err(|e| {
                FieldError::new(Some("dtypes"), format!("<Error> field 'dtypes': {e}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let schema = Schema { columns, dtypes };
    schema.validate().map_err(|m| FieldError::new(Some("schema"), m))?;
    Ok(schema)
}

/// A shard as `/config` and `/init` give it: either its name alone (`"sh1"`) or
/// `{"Shard_id": "sh1", "Stud_id_low": 0, "Shard_size": 4096}`.
pub fn shard_spec_from_json(v: &Json) -> Result<ShardSpec, FieldError> {
    const ID: &str = "Shard_id";
    const LOW: &str = "Stud_id_low";
    const SIZE: &str = "Shard_size";
    match v {
        Json::String(s) if !s.is_empty() => Ok(ShardSpec::named(s.clone())),
        Json::Object(obj) => {
            let id = obj.get(ID).ok_or_else(|| FieldError::missing(ID))?;
            let id = match id {
                Json::String(s) if !s.is_empty() => s.clone(),
                _ => return Err(FieldError::wrong(ID, "a non-empty string", id)),
            };
            match (obj.get(LOW), obj.get(SIZE)) {
                (None, None) => Ok(ShardSpec::named(id)),
                (Some(_), None) => Err(FieldError::missing(SIZE)),
                (None, Some(_)) => Err(FieldError::missing(LOW)),
                (Some(low), Some(size)) => {
                    let low = key_of(LOW, low)?;
                    let size_value = size;
                    let size = key_of(SIZE, size)?;
                    if size <= 0 {
                        return Err(FieldError::wrong(SIZE, "a positive integer", size_value));
                    }
                    Ok(ShardSpec::with_range(id, low, size))
                }
            }
        }
        _ => Err(FieldError::wrong("shards", "shard names or shard objects", v)),
    }
}

/// A JSON array of shards (see [`shard_spec_from_json`]).
pub fn shard_specs_from_json(v: &Json) -> Result<Vec<ShardSpec>, FieldError> {
    let items = v.as_array().ok_or_else(|| FieldError::wrong("shards", "an array", v))?;
    items.iter().map(shard_spec_from_json).collect()
}

/// An HTTP request body that must be a JSON object; otherwise the 400 to answer.
pub fn object_body(body: &[u8]) -> Result<Json, crate::ErrorBody> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(crate::ErrorBody::bad_request("request body must be a JSON object"));
    }
    let v: Json = serde_json::from_slice(body).map_err(|e| {
        crate::ErrorBody::bad_request(format!("request body is not valid JSON: {e}"))
    })?;
    if !v.is_object() {
        return Err(crate::ErrorBody::bad_request("request body must be a JSON object"));
    }
    Ok(v)
}
