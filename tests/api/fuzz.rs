//! Replays the fuzz targets' checked-in corpus (`fuzz/corpus/<target>/`, and any crash
//! saved under `fuzz/regressions/<target>/`) through the same code the targets run, so
//! every input the fuzzers kept stays a regression test. `cargo fuzz` explores further.

use std::path::Path;

const FUZZ: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz");

/// Runs `target` on every file under the corpus and regression folders; returns how many.
fn replay(name: &str, target: fn(&[u8])) -> usize {
    let mut count = 0;
    for folder in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(Path::new(FUZZ).join(folder).join(name)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            let input = std::fs::read(&path).expect("readable");
            let outcome = std::panic::catch_unwind(|| target(&input));
            assert!(outcome.is_ok(), "{} fails", path.display());
            count += 1;
        }
    }
    count
}

#[test]
fn document_corpus_replays() {
    let count = replay("document", audit_service::fuzzing::document);
    assert!(count >= 20, "only {count} document inputs");
}

#[test]
fn json_corpus_replays() {
    let count = replay("json", audit_service::fuzzing::json);
    assert!(count >= 10, "only {count} JSON inputs");
}
