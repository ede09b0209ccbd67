//! Fuzzes JSON as variables, metadata and metadata filters.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| audit_service::fuzzing::json(data));
