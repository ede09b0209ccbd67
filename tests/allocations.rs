//! The server's measure of decoded metadata (`service::capacity::size`) against what
//! parsing really allocates, counted by dhat. It is a test binary of its own because
//! counting needs the global allocator, and with one test in it nothing else allocates
//! meanwhile.

#![expect(
    clippy::expect_used,
    reason = "a test fails loudly at the first surprise"
)]

use audit_service::service::capacity::size::{json_size, value_size};
use serde_json::Value;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// What parsing `text` into a `Value` allocates, plus the value itself.
fn measured(text: &str) -> usize {
    let before = dhat::HeapStats::get().curr_bytes;
    let value: Value = serde_json::from_str(text).expect("JSON");
    let after = dhat::HeapStats::get().curr_bytes;
    drop(value);
    after - before + size_of::<Value>()
}

/// Metadata built to take as much memory as it can, and ordinary metadata.
fn shapes() -> Vec<String> {
    let repeat = |item: &str, n: usize| vec![item; n].join(",");
    vec![
        format!(r#"{{"a":[{}]}}"#, repeat("0", 32_700)),
        format!(r#"{{"a":[{}]}}"#, repeat("{}", 20_000)),
        format!(r#"{{"a":[{}]}}"#, repeat(r#"{"":0}"#, 9_000)),
        format!(r#"{{"a":[{}]}}"#, repeat(r#"{"k":[0]}"#, 6_000)),
        format!(r#"{{"a":[{}]}}"#, repeat("[[[0]]]", 8_000)),
        format!(r#"{{"a":{}0{}}}"#, "[".repeat(30), "]".repeat(30)),
        (0..3000).fold("{".to_owned(), |s, i| s + &format!(r#""k{i}":{i},"#)) + r#""z":1}"#,
        r#"{"plan":"pro","seats":12,"tags":["a","b"],"owner":{"id":"u-1","name":"Ann"}}"#
            .to_owned(),
        format!(r#"{{"filler":"{}"}}"#, "x".repeat(60_000)),
        r#"{"escaped":"\u00e9\n\t","n":1.5e300,"t":true,"f":null}"#.to_owned(),
    ]
}

#[test]
fn the_measure_tracks_what_parsing_allocates() {
    let _profiler = dhat::Profiler::builder().testing().build();
    for text in shapes() {
        let (model, real) = (json_size(&text), measured(&text));
        let value: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(value_size(&value), model, "{text:.60}");
        eprintln!(
            "{text:.40}: {} bytes of text, {real} allocated, {model} modelled",
            text.len()
        );
        assert!(
            model >= real && model <= real + real / 2 + 64,
            "{text:.60}: allocated {real}, modelled {model}"
        );
    }
}
