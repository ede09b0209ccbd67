//! Fuzzes GraphQL documents through the depth guard, the parser and validation.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| audit_service::fuzzing::document(data));
