//! The verifiable log as an auditor uses it: signed checkpoints, inclusion and consistency
//! proofs checked by `tools/verify_proofs.py` (an independent verifier) and against a tree
//! built here leaf by leaf, the C2SP tile API, tampering, and retention.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{Backend, TestApp, event, spawn_app_with};

crate::with_each_backend!(
    auditor_flow,
    tampering_is_caught,
    retention_keeps_proofs,
    verification_while_events_are_written,
);

type Hash = [u8; 32];

/// An app that signs a checkpoint and verifies everything every second, with the key that
/// `checkpoint-key create` made; and that key's verifier key.
struct Auditable {
    app: TestApp,
    dir: tempfile::TempDir,
    verifier_key: String,
}

async fn auditable(backend: Backend) -> Option<Auditable> {
    let dir = tempfile::tempdir().expect("temp dir");
    let key_file = dir.path().join("checkpoint.key");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_audit-service"))
        .args(["checkpoint-key", "create", "--name", "audit.test"])
        .arg("--out")
        .arg(&key_file)
        .output()
        .expect("audit-service runs");
    assert!(output.status.success(), "{output:?}");
    let verifier_key = String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    assert!(verifier_key.starts_with("audit.test+"), "{verifier_key}");
    // The key is never overwritten.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_audit-service"))
        .args(["checkpoint-key", "create", "--name", "audit.test"])
        .arg("--out")
        .arg(&key_file)
        .output()
        .expect("audit-service runs");
    assert!(!again.status.success());
    let app = spawn_app_with(backend, |config| {
        config.transparency.key_file = Some(key_file);
        config.transparency.checkpoint_interval_seconds = 1;
        config.transparency.verify_interval_seconds = 1;
    })
    .await?;
    Some(Auditable {
        app,
        dir,
        verifier_key,
    })
}

impl Auditable {
    /// Logs `n` events, in batches of 100 (each batch its own `recordedAt`).
    async fn log(&self, n: usize) -> Vec<Value> {
        let mut logged = Vec::new();
        for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
            let inputs: Vec<Value> = chunk
                .iter()
                .map(|i| event(&format!("u-{}", i % 7), "project.created"))
                .collect();
            let stored = self.app.log_batch(json!(inputs)).await;
            logged.extend(stored.as_array().expect("events").iter().cloned());
        }
        logged
    }

    /// Waits for the checkpoint of a tree of `size` events (or larger) and returns it.
    async fn checkpoint(&self, size: u64) -> Value {
        let started = Instant::now();
        loop {
            let body = self
                .app
                .graphql(
                    "{ auditCheckpoint { origin treeSize rootHash signedNote verifierKey issuedAt } }",
                    json!({}),
                )
                .await;
            assert_eq!(body["errors"], Value::Null, "{body}");
            let checkpoint = &body["data"]["auditCheckpoint"];
            let signed = checkpoint["treeSize"]
                .as_str()
                .map(|s| s.parse::<u64>().expect("size"));
            if signed.is_some_and(|signed| signed >= size) {
                return checkpoint.clone();
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no checkpoint of size {size}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).expect("write");
        path
    }

    /// Runs `tools/verify_proofs.py`; returns its exit code and output.
    fn python(&self, args: &[&str]) -> (i32, String) {
        let verifier = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/verify_proofs.py");
        let output = std::process::Command::new(crate::helpers::python())
            .arg(verifier)
            .args(args)
            .args(["--key", &self.verifier_key])
            .output()
            .expect("python3 runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code().unwrap_or(-1), text)
    }

    /// The export line of the event with sequence `seq`.
    fn export_line(&self, seq: u64) -> String {
        let output = self.app.cli(&["export", "--tenant", "default"]);
        assert!(output.status.success(), "{output:?}");
        let text = String::from_utf8(output.stdout).expect("utf-8");
        let line = text.lines().find(|line| {
            serde_json::from_str::<Value>(line).expect("json")["seq"] == json!(seq.to_string())
        });
        line.expect("the event is exported").to_owned()
    }

    async fn inclusion(&self, id: &str, size: u64) -> Value {
        let body = self
            .app
            .graphql(
                "query($id: ID!, $size: String) { auditInclusionProof(id: $id, treeSize: $size) { leafIndex treeSize hashes checkpoint { treeSize signedNote } } }",
                json!({ "id": id, "size": size.to_string() }),
            )
            .await;
        assert_eq!(body["errors"], Value::Null, "{body}");
        body["data"]["auditInclusionProof"].clone()
    }

    async fn consistency(&self, from: u64, to: u64) -> Value {
        let body = self
            .app
            .graphql(
                "query($from: String!, $to: String) { auditConsistencyProof(fromSize: $from, toSize: $to) { fromSize toSize hashes } }",
                json!({ "from": from.to_string(), "to": to.to_string() }),
            )
            .await;
        assert_eq!(body["errors"], Value::Null, "{body}");
        body["data"]["auditConsistencyProof"].clone()
    }

    /// Checks with the independent verifier that event `seq` is in the tree of `checkpoint`.
    async fn python_inclusion(
        &self,
        events: &[Value],
        seq: u64,
        checkpoint: &Value,
    ) -> (i32, String) {
        let size = checkpoint["treeSize"]
            .as_str()
            .expect("size")
            .parse()
            .expect("size");
        let id = events[seq as usize - 1]["id"].as_str().expect("id");
        let proof = self.inclusion(id, size).await;
        assert_eq!(proof["checkpoint"]["signedNote"], checkpoint["signedNote"]);
        let note = self.file(
            "inclusion.note",
            checkpoint["signedNote"].as_str().expect("note"),
        );
        let line = self.file("event.ndjson", &self.export_line(seq));
        let proof = self.file("inclusion.json", &proof.to_string());
        self.python(&[
            "inclusion",
            "--checkpoint",
            path(&note),
            "--event",
            path(&line),
            "--proof",
            path(&proof),
        ])
    }
}

fn path(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

// An independent tree, leaf by leaf (RFC 9162 §2.1.1), with proofs by the RFC's recursion.

fn sha(parts: &[&[u8]]) -> Hash {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

fn k(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

fn mth(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        1 => leaves[0],
        n => sha(&[&[1], &mth(&leaves[..k(n)]), &mth(&leaves[k(n)..])]),
    }
}

fn path_of(m: usize, leaves: &[Hash]) -> Vec<Hash> {
    let n = leaves.len();
    if n == 1 {
        return vec![];
    }
    let k = k(n);
    if m < k {
        [path_of(m, &leaves[..k]), vec![mth(&leaves[k..])]].concat()
    } else {
        [path_of(m - k, &leaves[k..]), vec![mth(&leaves[..k])]].concat()
    }
}

fn subproof(m: usize, leaves: &[Hash], whole: bool) -> Vec<Hash> {
    let n = leaves.len();
    if m == n {
        return if whole { vec![] } else { vec![mth(leaves)] };
    }
    let k = k(n);
    if m <= k {
        [subproof(m, &leaves[..k], whole), vec![mth(&leaves[k..])]].concat()
    } else {
        [
            subproof(m - k, &leaves[k..], false),
            vec![mth(&leaves[..k])],
        ]
        .concat()
    }
}

fn hex_list(hashes: &[Hash]) -> Value {
    json!(hashes.iter().map(hex::encode).collect::<Vec<_>>())
}

/// The leaf hashes of the tenant's events, from their stored chain hashes.
async fn leaves(app: &TestApp, n: usize) -> Vec<Hash> {
    let body = app
        .graphql(
            "query($n: Int) { auditLogs(first: $n, orderBy: OCCURRED_AT_ASC) { nodes { sequence hash } } }",
            json!({ "n": n }),
        )
        .await;
    let mut nodes = body["data"]["auditLogs"]["nodes"]
        .as_array()
        .expect("nodes")
        .clone();
    nodes.sort_by_key(|n| {
        n["sequence"]
            .as_str()
            .expect("seq")
            .parse::<u64>()
            .expect("seq")
    });
    nodes
        .iter()
        .map(|n| {
            let hash = hex::decode(n["hash"].as_str().expect("hash")).expect("hex");
            sha(&[&[0], &hash])
        })
        .collect()
}

async fn auditor_flow(backend: Backend) {
    let Some(audit) = auditable(backend).await else {
        return;
    };
    let mut events = audit.log(100).await;
    let a = audit.checkpoint(100).await;
    assert_eq!(a["treeSize"], "100");
    assert_eq!(a["origin"], "audit-service/default");
    assert_eq!(a["verifierKey"], audit.verifier_key);
    events.extend(audit.log(200).await);
    let b = audit.checkpoint(300).await;
    assert_eq!(b["treeSize"], "300");

    // Both checkpoints verify with the printed key; one changed byte does not.
    let note_a = audit.file("a.note", a["signedNote"].as_str().expect("note"));
    let note_b = audit.file("b.note", b["signedNote"].as_str().expect("note"));
    let (code, out) = audit.python(&["checkpoint", path(&note_b)]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("tree size 300"), "{out}");
    let changed = b["signedNote"]
        .as_str()
        .expect("note")
        .replacen("\n300\n", "\n301\n", 1);
    let changed = audit.file("changed.note", &changed);
    let (code, out) = audit.python(&["checkpoint", path(&changed)]);
    assert_eq!(code, 1, "{out}");

    // A → B is consistent; events from before A and after it are in B.
    let proof = audit.file(
        "consistency.json",
        &audit.consistency(100, 300).await.to_string(),
    );
    let (code, out) = audit.python(&[
        "consistency",
        "--old",
        path(&note_a),
        "--new",
        path(&note_b),
        "--proof",
        path(&proof),
    ]);
    assert_eq!(code, 0, "{out}");
    // Swapped, the checkpoints are not consistent.
    let (code, out) = audit.python(&[
        "consistency",
        "--old",
        path(&note_b),
        "--new",
        path(&note_a),
        "--proof",
        path(&proof),
    ]);
    assert_eq!(code, 1, "{out}");
    for seq in [7, 100, 250, 300] {
        let (code, out) = audit.python_inclusion(&events, seq, &b).await;
        assert_eq!(code, 0, "event {seq}: {out}");
    }

    // Every size 1..=300 against a tree built here.
    let leaves = leaves(&audit.app, 300).await;
    assert_eq!(
        hex::encode(mth(&leaves)),
        b["rootHash"].as_str().expect("root")
    );
    for size in 1..=300usize {
        let last = &events[size - 1]["id"];
        let proof = audit
            .inclusion(last.as_str().expect("id"), size as u64)
            .await;
        assert_eq!(proof["leafIndex"], (size - 1).to_string());
        assert_eq!(
            proof["hashes"],
            hex_list(&path_of(size - 1, &leaves[..size])),
            "{size}"
        );
        // The checkpoint of that size, where one was signed (A's, at least).
        let signed = &proof["checkpoint"];
        assert!(
            signed.is_null() || signed["treeSize"] == json!(size.to_string()),
            "{proof}"
        );
        if size == 100 {
            assert_eq!(signed["signedNote"], a["signedNote"]);
        }
        let first = audit
            .inclusion(events[0]["id"].as_str().expect("id"), size as u64)
            .await;
        assert_eq!(
            first["hashes"],
            hex_list(&path_of(0, &leaves[..size])),
            "{size}"
        );
        let consistency = audit.consistency(size as u64, 300).await;
        assert_eq!(
            consistency["hashes"],
            hex_list(&subproof(size, &leaves, true)),
            "{size}"
        );
    }

    // The C2SP tiles hold the same tree.
    let get = |path: &str| {
        let url = format!("{}/tlog/default/{path}", audit.app.address);
        let client = audit.app.client.clone();
        async move {
            let response = client.get(url).send().await.expect("tile");
            (
                response.status().as_u16(),
                response.bytes().await.expect("body").to_vec(),
            )
        }
    };
    let (status, note) = get("checkpoint").await;
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8(note).expect("utf-8"),
        b["signedNote"].as_str().expect("note")
    );
    assert_eq!(get("tile/0/000").await, (200, leaves[..256].concat()));
    assert_eq!(get("tile/0/001.p/44").await, (200, leaves[256..].concat()));
    assert_eq!(
        get("tile/1/000.p/1").await,
        (200, mth(&leaves[..256]).to_vec())
    );
    let (status, entries) = get("tile/entries/000").await;
    assert_eq!(status, 200);
    assert_eq!(entries.len(), 256 * 34);
    assert_eq!(&entries[..2], &[0, 32]);
    // Nothing beyond the signed tree, and no malformed paths.
    for beyond in [
        "tile/0/001",
        "tile/0/001.p/45",
        "tile/1/000",
        "tile/0/1",
        "tile/9/000",
        // Indexes whose byte offsets overflow 64 bits.
        "tile/0/x072/x057/x594/x037/x927/936",
        "tile/entries/x072/x057/x594/x037/x927/936",
        "tile/0/x018/x446/x744/x073/x709/x551/615",
    ] {
        assert_eq!(get(beyond).await.0, 404, "{beyond}");
    }

    // Sizes beyond the checkpoint, other tenants and bad sizes.
    for (query, field) in [
        (
            r#"{ auditConsistencyProof(fromSize: "1", toSize: "301") { hashes } }"#,
            "toSize",
        ),
        (
            r#"{ auditConsistencyProof(fromSize: "0") { hashes } }"#,
            "fromSize",
        ),
        (
            r#"{ auditConsistencyProof(fromSize: "200", toSize: "100") { hashes } }"#,
            "fromSize",
        ),
        (
            r#"{ auditConsistencyProof(fromSize: "01") { hashes } }"#,
            "fromSize",
        ),
    ] {
        let body = audit.app.graphql(query, json!({})).await;
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{body}"
        );
        assert_eq!(body["errors"][0]["extensions"]["field"], field, "{body}");
    }
    let id = events[0]["id"].as_str().expect("id");
    let body = audit
        .app
        .graphql(
            "query($id: ID!) { auditInclusionProof(id: $id, treeSize: \"301\") { hashes } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{body}"
    );
    let body = audit
        .app
        .graphql(
            "{ auditCheckpoint(tenantId: \"nobody\") { treeSize } auditInclusionProof(id: \"00000000-0000-0000-0000-000000000000\") { hashes } }",
            json!({}),
        )
        .await;
    assert_eq!(
        body["data"],
        json!({ "auditCheckpoint": null, "auditInclusionProof": null }),
        "{body}"
    );
    audit.app.cleanup().await;
}

async fn tampering_is_caught(backend: Backend) {
    let Some(audit) = auditable(backend).await else {
        return;
    };
    let events = audit.log(300).await;
    let checkpoint = audit.checkpoint(300).await;
    let (code, out) = audit.python_inclusion(&events, 5, &checkpoint).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(failures(&audit.app).await, 0);

    audit
        .app
        .tamper("UPDATE audit_logs SET reason = 'nothing to see' WHERE seq = 5")
        .await;
    let started = Instant::now();
    while failures(&audit.app).await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "continuous verification did not notice within a few intervals"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Reported once, not every round.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(failures(&audit.app).await, 1);
    let (code, out) = audit.python_inclusion(&events, 5, &checkpoint).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("content changed"), "{out}");
    // Rewriting the hash too does not help: the proof leads to another root.
    let line: Value = serde_json::from_str(&audit.export_line(5)).expect("json");
    let mut canonical = line.clone();
    let object = canonical.as_object_mut().expect("object");
    object.remove("hash");
    let prev = hex::decode(
        object
            .remove("prev_hash")
            .expect("prev")
            .as_str()
            .expect("hex"),
    )
    .expect("hex");
    let rehashed = sha(&[
        &prev,
        serde_json_canonicalizer::to_string(&canonical)
            .expect("jcs")
            .as_bytes(),
    ]);
    let set_hash = match backend {
        Backend::Postgres => format!(
            "UPDATE audit_logs SET hash = '\\x{}' WHERE seq = 5",
            hex::encode(rehashed)
        ),
        Backend::Sqlite => format!(
            "UPDATE audit_logs SET hash = X'{}' WHERE seq = 5",
            hex::encode(rehashed)
        ),
    };
    audit.app.tamper(&set_hash).await;
    let (code, out) = audit.python_inclusion(&events, 5, &checkpoint).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is not in the tree"), "{out}");
    audit.app.cleanup().await;
}

/// `audit_chain_verification_failures_total` at `/metrics`.
async fn failures(app: &TestApp) -> u64 {
    let scrape = crate::metrics::scrape(app).await;
    crate::metrics::value(&scrape, "audit_chain_verification_failures_total", &[]) as u64
}

async fn retention_keeps_proofs(backend: Backend) {
    let Some(audit) = auditable(backend).await else {
        return;
    };
    let mut events = audit.log(300).await;
    events.extend(audit.log(20).await);
    let before = audit.checkpoint(320).await;
    // Everything logged before the last batch goes: 300 events, not a multiple of 256.
    let cutoff = events[300]["recordedAt"].as_str().expect("recordedAt");
    let output = audit
        .app
        .cli(&["purge", "--tenant", "default", "--before", cutoff]);
    assert!(output.status.success(), "{output:?}");
    let after = audit.checkpoint(321).await;
    assert_eq!(after["treeSize"], "321", "the purge event is leaf 320");

    let old = audit.file("old.note", before["signedNote"].as_str().expect("note"));
    let new = audit.file("new.note", after["signedNote"].as_str().expect("note"));
    let proof = audit.file("c.json", &audit.consistency(320, 321).await.to_string());
    let (code, out) = audit.python(&[
        "consistency",
        "--old",
        path(&old),
        "--new",
        path(&new),
        "--proof",
        path(&proof),
    ]);
    assert_eq!(code, 0, "{out}");
    for (from, to) in [(1, 321), (100, 321), (256, 321), (300, 320)] {
        let proof = audit.consistency(from, to).await;
        assert_eq!(
            proof["hashes"].as_array().map(Vec::is_empty),
            Some(false),
            "{from}→{to}"
        );
    }
    for seq in [301, 320] {
        let (code, out) = audit.python_inclusion(&events, seq, &after).await;
        assert_eq!(code, 0, "event {seq}: {out}");
    }
    // The purged events' leaves are still in the tiles; their entries are gone.
    let tile = audit
        .app
        .client
        .get(format!("{}/tlog/default/tile/0/000", audit.app.address))
        .send()
        .await
        .expect("tile");
    assert_eq!(tile.status(), 200);
    assert_eq!(tile.bytes().await.expect("bytes").len(), 256 * 32);
    let entries = audit
        .app
        .client
        .get(format!(
            "{}/tlog/default/tile/entries/000",
            audit.app.address
        ))
        .send()
        .await
        .expect("entries");
    assert_eq!(entries.status(), 404);
    // And continuous verification, which starts over after the purge, stays quiet.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(failures(&audit.app).await, 0);
    audit.app.cleanup().await;
}

/// Verifying while others write finds nothing wrong: an event committed between reading the
/// head and reading past it is not "past the chain head".
async fn verification_while_events_are_written(backend: Backend) {
    let Some(audit) = auditable(backend).await else {
        return;
    };
    audit.log(50).await;
    let writing = Instant::now();
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let app_url = audit.app.address.clone();
            let client = audit.app.client.clone();
            tokio::spawn(async move {
                while writing.elapsed() < Duration::from_secs(4) {
                    let inputs: Vec<Value> = (0..20).map(|i| event(&format!("w{w}-{i}"), "role.assigned")).collect();
                    let body = json!({ "query": "mutation($i: [AuditEventInput!]!) { logAuditEvents(inputs: $i) { id } }", "variables": { "i": inputs } });
                    let response = client.post(format!("{app_url}/graphql")).json(&body).send().await.expect("write");
                    assert_eq!(response.status(), 200);
                }
            })
        })
        .collect();
    let mut checks = 0;
    while writing.elapsed() < Duration::from_secs(4) {
        let body = audit
            .app
            .graphql(
                "{ verifyAuditChain { valid reason checkedCount } }",
                json!({}),
            )
            .await;
        assert_eq!(body["data"]["verifyAuditChain"]["valid"], true, "{body}");
        checks += 1;
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    assert!(checks > 3, "{checks}");
    // Continuous verification ran through it all, and stays quiet.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(failures(&audit.app).await, 0);
    audit.app.cleanup().await;
}
