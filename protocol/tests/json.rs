//! JSON rows, keys, schemas and shard lists as the HTTP shims see them.

use proptest::prelude::*;
use protocol::json::{
    key_field, rows_from_json, schema_from_json, shard_spec_from_json, shard_specs_from_json,
};
use protocol::{parse_key, row_from_json, row_to_json, DType, Row, Schema, ShardSpec, Value};
use serde_json::json;

/// The assignment's table: `Stud_marks` is declared a String but sent as a number.
fn stud_t() -> Schema {
    Schema::student_default()
}

/// The same table with `Stud_marks` a Number.
fn stud_t_numeric() -> Schema {
    let mut s = stud_t();
    s.dtypes[2] = DType::Number;
    s
}

fn keys_of(v: &serde_json::Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn the_contract_example_row_is_accepted() {
    let v = json!({"Stud_id": 2255, "Stud_name": "GHI", "Stud_marks": 28});
    let row = row_from_json(&stud_t(), &v).unwrap();
    assert_eq!(
        row,
        Row { key: 2255, values: vec![Value::Int(2255), Value::Str("GHI".into()), Value::Int(28)] }
    );
    assert_eq!(row_to_json(&stud_t(), &row), v);
}

#[test]
fn a_key_given_as_a_digit_string_comes_back_as_a_string() {
    let v = json!({"Stud_id": "2255", "Stud_name": "GHI", "Stud_marks": "28"});
    let row = row_from_json(&stud_t(), &v).unwrap();
    assert_eq!(row.key, 2255);
    assert_eq!(row.values[0], Value::Str("2255".into()));
    assert_eq!(row_to_json(&stud_t(), &row), v);
}

#[test]
fn number_columns_take_integers_floats_and_digit_strings() {
    let s = stud_t_numeric();
    for marks in [json!(28), json!(28.5), json!("-28"), json!("0028")] {
        let v = json!({"Stud_id": 1, "Stud_name": "A", "Stud_marks": marks});
        let row = row_from_json(&s, &v).unwrap_or_else(|e| panic!("{marks}: {e}"));
        assert_eq!(row_to_json(&s, &row)["Stud_marks"], marks);
    }
    for marks in [json!("28.5"), json!("abc"), json!(""), json!("-"), json!(true), json!(null)] {
        let v = json!({"Stud_id": 1, "Stud_name": "A", "Stud_marks": marks});
        let err = row_from_json(&s, &v).unwrap_err();
        assert!(err.to_string().contains("'Stud_marks'"), "{marks}: {err}");
        assert_eq!(err.field.as_deref(), Some("Stud_marks"));
    }
}

#[test]
fn a_missing_field_is_named() {
    let v = json!({"Stud_id": 2255, "Stud_marks": 28});
    let err = row_from_json(&stud_t(), &v).unwrap_err();
    assert_eq!(err.to_string(), "<Error> missing field 'Stud_name'");
    assert_eq!(err.field.as_deref(), Some("Stud_name"));
}

#[test]
fn ill_typed_string_fields_are_named() {
    for bad in [json!(true), json!(null), json!([1]), json!({"a": 1})] {
        let v = json!({"Stud_id": 1, "Stud_name": bad, "Stud_marks": 2});
        let err = row_from_json(&stud_t(), &v).unwrap_err().to_string();
        assert!(err.starts_with("<Error> field 'Stud_name' must be"), "{bad}: {err}");
    }
}

#[test]
fn a_non_integer_key_is_refused_naming_the_key() {
    for bad in [
        json!(22.5),
        json!("22.5"),
        json!("x1"),
        json!(" 1"),
        json!("99999999999999999999"),
        json!(18446744073709551615u64),
        json!(1e300),
        json!(null),
        json!(true),
    ] {
        let v = json!({"Stud_id": bad, "Stud_name": "A", "Stud_marks": 2});
        let err = row_from_json(&stud_t(), &v).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("Stud_id"), "{bad}");
        assert!(err.to_string().contains("'Stud_id' must be an integer"), "{bad}: {err}");
    }
}

#[test]
fn a_key_written_as_a_whole_float_is_an_integer() {
    let v = json!({"Stud_id": 2255.0, "Stud_name": "A", "Stud_marks": 2});
    let row = row_from_json(&stud_t(), &v).unwrap();
    assert_eq!(row.key, 2255);
    assert_eq!(row_to_json(&stud_t(), &row), v);
}

#[test]
fn unknown_fields_are_ignored_and_output_follows_schema_order() {
    let v = json!({"extra": 1, "Stud_marks": 28, "Stud_name": "GHI", "Stud_id": 7});
    let row = row_from_json(&stud_t(), &v).unwrap();
    let out = row_to_json(&stud_t(), &row);
    assert_eq!(keys_of(&out), ["Stud_id", "Stud_name", "Stud_marks"]);
    assert_eq!(
        serde_json::to_string(&out).unwrap(),
        r#"{"Stud_id":7,"Stud_name":"GHI","Stud_marks":28}"#
    );
}

#[test]
fn a_row_must_be_an_object() {
    let err = row_from_json(&stud_t(), &json!([1, 2, 3])).unwrap_err().to_string();
    assert!(err.starts_with("<Error> a row must be a JSON object"), "{err}");
}

#[test]
fn a_bad_row_in_a_list_says_which() {
    let v = json!([
        {"Stud_id": 1, "Stud_name": "A", "Stud_marks": 2},
        {"Stud_id": 2, "Stud_marks": 2}
    ]);
    let err = rows_from_json(&stud_t(), &v).unwrap_err().to_string();
    assert_eq!(err, "<Error> missing field 'Stud_name' (row 1)");
}

#[test]
fn parse_key_takes_integers_and_digit_strings() {
    assert_eq!(parse_key(&json!(2255)), Some(2255));
    assert_eq!(parse_key(&json!("2255")), Some(2255));
    assert_eq!(parse_key(&json!("-3")), Some(-3));
    assert_eq!(parse_key(&json!(i64::MIN)), Some(i64::MIN));
    assert_eq!(parse_key(&json!("2255a")), None);
    assert_eq!(parse_key(&json!(1.5)), None);
    assert_eq!(parse_key(&json!([1])), None);
    assert_eq!(key_field(&json!({"Stud_id": "9"}), "Stud_id"), Ok(9));
    assert_eq!(
        key_field(&json!({}), "Stud_id").unwrap_err().to_string(),
        "<Error> missing field 'Stud_id'"
    );
}

#[test]
fn schemas_parse_leniently_and_are_validated() {
    let s = schema_from_json(&json!({
        "columns": ["Stud_id", "Stud_name", "Stud_marks"],
        "dtypes": ["Number", "string", "INT"]
    }))
    .unwrap();
    assert_eq!(s.dtypes, vec![DType::Number, DType::String, DType::Number]);

    let err = schema_from_json(&json!({"columns": ["Stud_id"], "dtypes": ["Bool"]}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("'Bool'"), "{err}");
    let err = schema_from_json(&json!({"columns": ["Stud_id"]})).unwrap_err().to_string();
    assert_eq!(err, "<Error> missing field 'dtypes'");
    let err = schema_from_json(&json!({"columns": ["id"], "dtypes": ["Number"]}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("'Stud_id'"), "{err}");
    // serde's derive gives the same lenient result for binary-free JSON callers.
    let s2: Schema = serde_json::from_value(json!({
        "columns": ["Stud_id"], "dtypes": ["integer"]
    }))
    .unwrap();
    assert_eq!(s2.dtypes, vec![DType::Number]);
}

#[test]
fn shards_are_names_or_ranged_objects() {
    let v = json!(["sh1", {"Shard_id": "sh2", "Stud_id_low": 4096, "Shard_size": 4096}, {"Shard_id": "sh3"}]);
    assert_eq!(
        shard_specs_from_json(&v).unwrap(),
        vec![
            ShardSpec::named("sh1"),
            ShardSpec::with_range("sh2", 4096, 4096),
            ShardSpec::named("sh3")
        ]
    );
    let err = shard_spec_from_json(&json!({"Shard_id": "sh2", "Stud_id_low": 0})).unwrap_err();
    assert_eq!(err.to_string(), "<Error> missing field 'Shard_size'");
    let err = shard_spec_from_json(&json!({"Shard_id": "sh2", "Stud_id_low": 0, "Shard_size": 0}))
        .unwrap_err();
    assert_eq!(err.field.as_deref(), Some("Shard_size"));
    assert!(shard_spec_from_json(&json!(5)).is_err());
}

/// A JSON cell a column of `dtype` accepts.
fn cell(dtype: DType) -> BoxedStrategy<serde_json::Value> {
    let finite = any::<f64>().prop_filter("finite", |f| f.is_finite());
    match dtype {
        DType::Number => prop_oneof![
            any::<i64>().prop_map(|i| json!(i)),
            finite.prop_map(|f| json!(f)),
            "-?[0-9]{1,25}".prop_map(|s| json!(s)),
        ]
        .boxed(),
        DType::String => prop_oneof![
            ".{0,12}".prop_map(|s| json!(s)),
            any::<i64>().prop_map(|i| json!(i)),
            finite.prop_map(|f| json!(f)),
        ]
        .boxed(),
    }
}

/// A key cell: an integer or its digit string.
fn key_cell() -> impl Strategy<Value = (i64, serde_json::Value)> {
    prop_oneof![
        any::<i64>().prop_map(|k| (k, json!(k))),
        any::<i64>().prop_map(|k| (k, json!(k.to_string()))),
    ]
}

proptest! {
    #[test]
    fn valid_rows_round_trip_in_schema_order(
        (key, key_json) in key_cell(),
        name in cell(DType::String),
        marks in cell(DType::Number),
        extra in cell(DType::String),
    ) {
        let schema = Schema {
            columns: vec!["Stud_name".into(), "Stud_id".into(), "Stud_marks".into()],
            dtypes: vec![DType::String, DType::Number, DType::Number],
        };
        // Fields arrive in another order, with one the schema does not know.
        let mut input = serde_json::Map::new();
        input.insert("Stud_marks".into(), marks.clone());
        input.insert("ignored".into(), extra);
        input.insert("Stud_id".into(), key_json.clone());
        input.insert("Stud_name".into(), name.clone());
        let row = row_from_json(&schema, &serde_json::Value::Object(input)).unwrap();
        prop_assert_eq!(row.key, key);
        let out = row_to_json(&schema, &row);
        let expected = json!({"Stud_name": name, "Stud_id": key_json, "Stud_marks": marks});
        prop_assert_eq!(keys_of(&out), vec!["Stud_name", "Stud_id", "Stud_marks"]);
        prop_assert_eq!(&out, &expected);
        prop_assert_eq!(serde_json::to_string(&out).unwrap(), serde_json::to_string(&expected).unwrap());
    }
}
