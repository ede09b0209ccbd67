//! What an event takes in memory once decoded, known before it is decoded: sized from its
//! raw row (text columns by their length, metadata by the values its JSON holds, as
//! serde_json will hold them). `tests/allocations.rs` checks the measure against what
//! parsing really allocates.

use std::mem::size_of;

use entity::audit_log;
use sea_orm::QueryResult;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// The most a metadata object within the rules (`audit_contract::rules`) takes once
/// decoded: what `MAX_METADATA_VALUES` values of the most expensive shape take.
pub const MAX_METADATA_MEMORY: usize = 3 << 19;

/// About what a stored event takes once decoded (an `audit_log::Model`, its strings and its
/// metadata), read from its raw row before anything is decoded.
pub fn row_size(row: &QueryResult) -> usize {
    let (strings, metadata) = match (row.try_as_pg_row(), row.try_as_sqlite_row()) {
        (Some(row), _) => raw_texts(row),
        (_, Some(row)) => raw_texts(row),
        _ => (0, ""),
    };
    size_of::<audit_log::Model>() + 2 * string_size(32) + strings + json_size(metadata)
}

/// The heap of a raw row's text columns other than metadata, and metadata's text. Only
/// text columns are read (SQLite lets a value be read as one type only), by name, as they
/// are: this runs for every row read.
fn raw_texts<R: sea_orm::sqlx::Row>(row: &R) -> (usize, &str)
where
    for<'r> &'r str: sea_orm::sqlx::Decode<'r, R::Database> + sea_orm::sqlx::Type<R::Database>,
    usize: sea_orm::sqlx::ColumnIndex<R>,
{
    use sea_orm::sqlx::Column;
    let mut strings = 0;
    let mut metadata = "";
    for (index, column) in row.columns().iter().enumerate() {
        let name = column.name();
        let is_metadata = name == "metadata";
        if !is_metadata && !is_text(name) {
            continue;
        }
        let Ok(Some(value)) = row.try_get_unchecked::<Option<&str>, _>(index) else {
            continue;
        };
        match is_metadata {
            true => metadata = value,
            false => strings += string_size(value.len()),
        }
    }
    (strings, metadata)
}

/// Whether an event's column of that name holds text (besides metadata).
fn is_text(name: &str) -> bool {
    matches!(
        name,
        "tenant_id"
            | "actor_id"
            | "actor_name"
            | "action"
            | "target_type"
            | "target_id"
            | "target_name"
            | "reason"
            | "ip_address"
            | "user_agent"
            | "request_id"
            | "trace_id"
            | "idempotency_key"
    )
}

/// About what `model` takes in memory, by the same measure as [`row_size`].
pub fn event_size(model: &audit_log::Model) -> usize {
    let texts = [
        Some(&model.tenant_id),
        Some(&model.actor_id),
        model.actor_name.as_ref(),
        Some(&model.action),
        model.target_type.as_ref(),
        model.target_id.as_ref(),
        model.target_name.as_ref(),
        model.reason.as_ref(),
        model.ip_address.as_ref(),
        model.user_agent.as_ref(),
        model.request_id.as_ref(),
        model.trace_id.as_ref(),
        model.idempotency_key.as_ref(),
    ];
    let strings: usize = texts
        .into_iter()
        .flatten()
        .map(|s| string_size(s.len()))
        .sum();
    size_of::<audit_log::Model>() + 2 * string_size(32) + strings + value_size(&model.metadata)
        - size_of::<Value>()
}

/// What JSON text takes once parsed into a `serde_json::Value`, without parsing it into
/// one (text that is not JSON counts as its length: it is read as a short error object).
pub fn json_size(text: &str) -> usize {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    match Size::deserialize(&mut deserializer) {
        Ok(Size(size)) => size_of::<Value>() + size,
        Err(_) => size_of::<Value>() + text.len() + 256,
    }
}

/// What `value` takes in memory (the same measure as [`json_size`]).
pub fn value_size(value: &Value) -> usize {
    fn heap(value: &Value) -> usize {
        match value {
            Value::String(s) => string_size(s.len()),
            Value::Array(items) => array_size(items.len()) + items.iter().map(heap).sum::<usize>(),
            Value::Object(map) => {
                object_size(map.len())
                    + map
                        .iter()
                        .map(|(k, v)| string_size(k.len()) + heap(v))
                        .sum::<usize>()
            }
            _ => 0,
        }
    }
    size_of::<Value>() + heap(value)
}

/// A string's heap: its bytes, rounded up as allocators do.
fn string_size(len: usize) -> usize {
    match len {
        0 => 0,
        n => n.next_multiple_of(16),
    }
}

/// An array's heap: serde grows a `Vec` by doubling from 4.
fn array_size(len: usize) -> usize {
    match len {
        0 => 0,
        n => n.next_power_of_two().max(4) * size_of::<Value>(),
    }
}

/// An object's heap: serde_json's `Map` (an `IndexMap`) keeps the indices of its entries
/// in a hash table, and the entries (hash, key, value) in a `Vec` as large as the table's
/// capacity.
fn object_size(len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    // hashbrown's bucket counts: 4, 8, then powers of two kept at most 7/8 full.
    let buckets = match len {
        1..=3 => 4,
        4..=7 => 8,
        n => (n * 8).div_ceil(7).next_power_of_two(),
    };
    let capacity = if buckets < 8 {
        buckets - 1
    } else {
        buckets / 8 * 7
    };
    let entry = size_of::<usize>() + size_of::<String>() + size_of::<Value>();
    capacity * entry + buckets * (size_of::<usize>() + 1) + 16
}

/// The heap a JSON value takes once parsed, measured by serde_json's own reader.
struct Size(usize);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SizeVisitor)
    }
}

struct SizeVisitor;

impl<'de> Visitor<'de> for SizeVisitor {
    type Value = Size;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Size, E> {
        Ok(Size(0))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Size, E> {
        Ok(Size(0))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Size, E> {
        Ok(Size(0))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Size, E> {
        Ok(Size(0))
    }
    fn visit_unit<E>(self) -> Result<Size, E> {
        Ok(Size(0))
    }
    fn visit_str<E>(self, s: &str) -> Result<Size, E> {
        Ok(Size(string_size(s.len())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Size, A::Error> {
        let (mut len, mut heap) = (0usize, 0usize);
        while let Some(Size(item)) = seq.next_element()? {
            len += 1;
            heap += item;
        }
        Ok(Size(array_size(len) + heap))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Size, A::Error> {
        // Keys repeat at most once in a stored object; counting each one is an upper bound.
        let (mut len, mut heap) = (0usize, 0usize);
        while let Some(key) = map.next_key::<KeyLen>()? {
            let Size(value) = map.next_value()?;
            len += 1;
            heap += string_size(key.0) + value;
        }
        Ok(Size(object_size(len) + heap))
    }
}

/// A key's length, unescaped.
struct KeyLen(usize);

impl<'de> Deserialize<'de> for KeyLen {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = KeyLen;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, s: &str) -> Result<KeyLen, E> {
                Ok(KeyLen(s.len()))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_measure_of_text_is_the_measure_of_its_value() {
        for text in [
            r#"{"plan":"pro","seats":12,"tags":["a","b"],"owner":{"id":"u-1","name":"Ann"}}"#,
            r#"{"a":[0,0,0,{},[],{"":0}],"b":"\u00e9\n"}"#,
            "{}",
        ] {
            let value: Value = serde_json::from_str(text).unwrap();
            assert_eq!(json_size(text), value_size(&value), "{text}");
        }
        assert!(json_size("not json") > 0);
    }

    #[test]
    fn metadata_within_the_rules_stays_small_in_memory() {
        use audit_contract::rules::{MAX_METADATA_VALUES, check_metadata};
        use serde_json::json;
        let most = MAX_METADATA_VALUES;
        let nested = |n: usize| (0..n).fold(json!(0), |inner, _| json!([inner]));
        let shapes = [
            json!({ "a": vec![0; most - 2] }),
            json!({ "a": vec![json!({}); most - 2] }),
            json!({ "a": vec![json!([]); most - 2] }),
            json!({ "a": vec![json!({ "": 0 }); (most - 2) / 2] }),
            json!({ "a": vec![json!([[0]]); (most - 2) / 3] }),
            json!({ "a": vec![nested(30); (most - 2) / 31] }),
        ];
        for metadata in shapes {
            check_metadata(&metadata).unwrap();
            let size = value_size(&metadata);
            assert!(size <= MAX_METADATA_MEMORY, "{size} bytes: {metadata:.60}");
        }
        assert!(check_metadata(&json!({ "a": vec![0; most] })).is_err());
    }
}
