//! Privacy through the real API (docs/privacy.md): personal values sealed at rest and in no
//! dump of the database, shown in clear only to `audit:pii`, erased per data subject with
//! every hash and proof unchanged; the action registry; the privacy key file.

use std::time::Duration;

use serde_json::{Value, json};

use crate::auth::{claims, hs256, with_jwt};
use crate::helpers::{Backend, TestApp, new_database, post_json, spawn_app_with};
use crate::subscriptions::Client;

fn token(tenant: &str, scopes: &str) -> String {
    hs256(&claims(tenant, scopes))
}

async fn gql(app: &TestApp, token: &str, query: &str, variables: Value) -> Value {
    let url = format!("{}/graphql", app.address);
    let body = json!({ "query": query, "variables": variables });
    post_json(&app.client, &url, Some(token), body).await
}

/// `gql`, which must succeed; returns `data`.
async fn data(app: &TestApp, token: &str, query: &str, variables: Value) -> Value {
    let body = gql(app, token, query, variables).await;
    assert_eq!(body["errors"], Value::Null, "{query}: {body}");
    body["data"].clone()
}

/// What the database holds, as bytes: a `pg_dump` on PostgreSQL; on SQLite the database
/// file and its WAL.
fn dump(app: &TestApp) -> Vec<u8> {
    match app.backend {
        Backend::Postgres => {
            let output = std::process::Command::new("pg_dump")
                .arg(&app.database_url)
                .output()
                .expect("pg_dump runs");
            assert!(output.status.success(), "{output:?}");
            output.stdout
        }
        Backend::Sqlite => {
            let file = app.database_url["sqlite://".len()..]
                .split('?')
                .next()
                .expect("a path")
                .to_owned();
            let mut bytes = std::fs::read(&file).expect("the database file");
            bytes.extend(std::fs::read(format!("{file}-wal")).unwrap_or_default());
            bytes
        }
    }
}

fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

const EVENT: &str = "id sequence hash actor { id name } action metadata \
    context { ipAddress userAgent }";

async fn events(app: &TestApp, token: &str) -> Vec<Value> {
    let query =
        format!("{{ auditLogs(first: 100, orderBy: OCCURRED_AT_ASC) {{ nodes {{ {EVENT} }} }} }}");
    let found = data(app, token, &query, json!({})).await;
    found["auditLogs"]["nodes"]
        .as_array()
        .expect("nodes")
        .clone()
}

fn by_action<'e>(events: &'e [Value], action: &str, actor: &str) -> &'e Value {
    events
        .iter()
        .find(|e| e["action"] == action && e["actor"]["id"] == actor)
        .unwrap_or_else(|| panic!("no {action} by {actor} in {events:?}"))
}

/// Proofs and checkpoints as the server gives them, to compare before and after erasure.
async fn proofs(app: &TestApp, token: &str, id: &str, size: &str) -> Value {
    let query = "query($id: ID!, $size: String!) { \
        verifyAuditChain { valid checkedCount } \
        auditChainHead { sequence hash } \
        auditInclusionProof(id: $id, treeSize: $size) { leafIndex treeSize hashes } \
        auditConsistencyProof(fromSize: \"1\", toSize: $size) { fromSize toSize hashes } }";
    data(app, token, query, json!({ "id": id, "size": size })).await
}

async fn signed_checkpoint(app: &TestApp, token: &str, size: u64) -> Value {
    let started = std::time::Instant::now();
    loop {
        let found = data(
            app,
            token,
            "{ auditCheckpoint { treeSize rootHash signedNote } }",
            json!({}),
        )
        .await;
        let checkpoint = &found["auditCheckpoint"];
        let signed = checkpoint["treeSize"].as_str().map(|s| s.parse::<u64>());
        if signed.is_some_and(|s| s.is_ok_and(|s| s >= size)) {
            return checkpoint.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no checkpoint");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn personal_values_are_sealed_shown_to_pii_and_erased(backend: Backend) {
    let dir = tempfile::tempdir().expect("dir");
    let checkpoint_key = dir.path().join("checkpoint.key");
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_audit-service"))
        .args([
            "checkpoint-key",
            "create",
            "--name",
            "privacy.test",
            "--out",
        ])
        .arg(&checkpoint_key)
        .output()
        .expect("runs");
    assert!(made.status.success(), "{made:?}");
    let Some(app) = spawn_app_with(backend, |config| {
        with_jwt(config);
        config.transparency.key_file = Some(checkpoint_key);
        config.transparency.checkpoint_interval_seconds = 1;
    })
    .await
    else {
        return;
    };
    let writer = token("acme", "audit:write audit:read");
    let reader = token("acme", "audit:read");
    let pii = token("acme", "audit:read audit:pii");
    let admin = token("acme", "audit:admin");
    let globex = token("globex", "audit:admin audit:write audit:pii");
    let mark = uuid::Uuid::now_v7().simple().to_string();
    let ada = format!("Ada {mark}");
    let ip = "198.51.100.213";
    let agent = format!("Agent/{mark}");
    let email = format!("invitee-{mark}@example.com");
    let grace = format!("Grace {mark}");

    // The action: its schema, and where its metadata holds personal data.
    let register = "mutation($input: AuditActionInput!) { registerAuditAction(input: $input) { action personalPaths } }";
    let schema = json!({
        "type": "object",
        "properties": { "email": { "type": "string" }, "role": { "enum": ["viewer", "editor"] } },
        "required": ["role"]
    });
    let input = json!({ "action": "user.invited", "description": "A user invited another",
        "metadataSchema": schema, "personalPaths": ["/email"] });
    let registered = data(&app, &admin, register, json!({ "input": input })).await;
    assert_eq!(
        registered["registerAuditAction"]["personalPaths"],
        json!(["/email"])
    );
    let listed = data(
        &app,
        &reader,
        "{ auditActions { action metadataSchema personalPaths } }",
        json!({}),
    )
    .await;
    assert_eq!(listed["auditActions"][0]["metadataSchema"], schema);
    let refused = gql(&app, &writer, register, json!({ "input": input })).await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{refused}"
    );

    // Metadata that breaks the schema is refused, naming the field; nothing is stored.
    let log = "mutation($inputs: [AuditEventInput!]!) { logAuditEvents(inputs: $inputs) { id } }";
    let bad = json!([
        { "actor": { "type": "USER", "id": "u9" }, "action": "project.created" },
        { "actor": { "type": "USER", "id": "u9" }, "action": "user.invited", "metadata": { "role": "root" } },
    ]);
    let refused = gql(&app, &writer, log, json!({ "inputs": bad })).await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{refused}"
    );
    assert_eq!(
        refused["errors"][0]["extensions"]["field"],
        "inputs[1].metadata.role"
    );
    // (The refused registration above is recorded as `audit.access.denied` in the
    // background, so the table is not counted whole.)
    let u9 = data(
        &app,
        &reader,
        "{ auditLogs(filter: { actorIds: [\"u9\"] }) { totalCount } }",
        json!({}),
    )
    .await;
    assert_eq!(
        u9["auditLogs"]["totalCount"], 0,
        "a batch is all or nothing"
    );

    let inputs = json!([
        { "actor": { "type": "USER", "id": "u1", "name": ada }, "action": "user.invited",
          "subjectIds": ["u2"], "metadata": { "email": email, "role": "viewer" },
          "context": { "ipAddress": ip, "userAgent": agent } },
        { "actor": { "type": "USER", "id": "u3", "name": grace }, "action": "project.created" },
        { "actor": { "type": "SERVICE", "id": "billing" }, "action": "invoice.sent" },
    ]);
    // Live subscribers see what readers see: redacted without audit:pii.
    let mut live = Vec::new();
    for credential in [&reader, &pii] {
        let mut client = Client::connect(&app.address, "graphql-transport-ws").await;
        let init = json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {credential}") } });
        client.send(init).await;
        assert_eq!(client.receive().await["type"], "connection_ack");
        let tail = "subscription { auditLogCreated(filter: { actions: [\"user.invited\"] }) { actor { name } metadata } }";
        client.subscribe("1", tail, json!({})).await;
        live.push(client);
    }
    // The subscriptions are registered before the events are logged.
    tokio::time::sleep(Duration::from_millis(300)).await;
    data(&app, &writer, log, json!({ "inputs": inputs })).await;
    let redacted_live = live[0].next_event("1").await;
    assert_eq!(redacted_live["actor"]["name"], "[redacted]");
    assert_eq!(redacted_live["metadata"]["email"], "[redacted]");
    let clear_live = live[1].next_event("1").await;
    assert_eq!(clear_live["actor"]["name"], ada.as_str());
    assert_eq!(clear_live["metadata"]["email"], email.as_str());
    drop(live);
    let other = json!([{ "actor": { "type": "USER", "id": "u3", "name": grace }, "action": "project.created" }]);
    data(&app, &globex, log, json!({ "inputs": other })).await;

    // Without audit:pii, redacted; with it, in clear.
    let redacted = events(&app, &reader).await;
    let e1 = by_action(&redacted, "user.invited", "u1");
    assert_eq!(e1["actor"]["name"], "[redacted]");
    assert_eq!(
        e1["context"],
        json!({ "ipAddress": "[redacted]", "userAgent": "[redacted]" })
    );
    assert_eq!(
        e1["metadata"],
        json!({ "email": "[redacted]", "role": "viewer" })
    );
    let entity = data(
        &app,
        &reader,
        "query($r: [_Any!]!) { _entities(representations: $r) { ... on AuditLog { actor { name } } } }",
        json!({ "r": [{ "__typename": "AuditLog", "id": e1["id"] }] }),
    )
    .await;
    assert_eq!(entity["_entities"][0]["actor"]["name"], "[redacted]");
    let clear = events(&app, &pii).await;
    let e1 = by_action(&clear, "user.invited", "u1").clone();
    assert_eq!(e1["actor"]["name"], ada.as_str());
    assert_eq!(
        e1["context"],
        json!({ "ipAddress": ip, "userAgent": agent })
    );
    assert_eq!(e1["metadata"], json!({ "email": email, "role": "viewer" }));
    assert_eq!(
        by_action(&clear, "project.created", "u3")["actor"]["name"],
        grace.as_str()
    );

    // No personal value is stored in clear.
    let stored = dump(&app);
    assert!(holds(&stored, "user.invited"), "the dump holds the events");
    for value in [&ada, ip, &agent, &email, &grace] {
        assert!(!holds(&stored, value), "{value} is stored in clear");
    }

    // An auditor with audit:pii checks each value against the commitment its hash covers.
    let disclosed = data(
        &app,
        &pii,
        "query($id: ID!) { auditLog(id: $id) { disclosures { path salt value commitment } } }",
        json!({ "id": e1["id"] }),
    )
    .await;
    let disclosures = disclosed["auditLog"]["disclosures"]
        .as_array()
        .expect("list")
        .clone();
    let paths: Vec<_> = disclosures.iter().map(|d| d["path"].clone()).collect();
    assert_eq!(
        paths,
        json!([
            "actor.name",
            "context.ipAddress",
            "context.userAgent",
            "metadata/email"
        ])
        .as_array()
        .expect("paths")
        .clone()
    );
    let refused = gql(
        &app,
        &reader,
        "query($id: ID!) { auditLog(id: $id) { disclosures { path } } }",
        json!({ "id": e1["id"] }),
    )
    .await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{refused}"
    );
    let export = app.cli(&["export", "--tenant", "acme"]);
    assert!(export.status.success(), "{export:?}");
    let export_file = dir.path().join("before.ndjson");
    std::fs::write(&export_file, &export.stdout).expect("write");
    let check = |disclosures: &[Value]| {
        let listed: Vec<Value> = (disclosures.iter())
            .map(|d| json!({ "id": e1["id"], "path": d["path"], "salt": d["salt"], "value": d["value"] }))
            .collect();
        let file = dir.path().join("disclosures.json");
        std::fs::write(&file, Value::from(listed).to_string()).expect("write");
        std::process::Command::new(crate::helpers::python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tools/verify_disclosures.py"
            ))
            .args([&export_file, &file])
            .output()
            .expect("python runs")
    };
    let verified = check(&disclosures);
    assert!(verified.status.success(), "{verified:?}");
    let mut forged = disclosures.clone();
    forged[0]["value"] = json!("Someone Else");
    assert_eq!(
        check(&forged).status.code(),
        Some(1),
        "a changed value does not verify"
    );

    let head = data(&app, &reader, "{ auditChainHead { sequence } }", json!({})).await;
    let size: u64 = head["auditChainHead"]["sequence"]
        .as_str()
        .expect("seq")
        .parse()
        .expect("n");
    let checkpoint = signed_checkpoint(&app, &reader, size).await;
    let size = checkpoint["treeSize"].as_str().expect("size").to_owned();
    let id = e1["id"].as_str().expect("id");
    let proven = proofs(&app, &reader, id, &size).await;
    assert_eq!(proven["verifyAuditChain"]["valid"], true);

    // Erasing u2, whom the first event names: its values are gone, for everyone.
    let erase = "mutation($s: String!, $r: String!) { eraseAuditSubject(subjectId: $s, reason: $r) { subjectId erasedEvents event { action reason metadata target { id } } } }";
    let refused = gql(&app, &writer, erase, json!({ "s": "u2", "r": "GDPR 17" })).await;
    assert_eq!(refused["errors"][0]["extensions"]["code"], "FORBIDDEN");
    let blank = gql(&app, &admin, erase, json!({ "s": "u2", "r": " " })).await;
    assert_eq!(
        blank["errors"][0]["extensions"]["field"], "reason",
        "{blank}"
    );
    let erased = data(
        &app,
        &admin,
        erase,
        json!({ "s": "u2", "r": "GDPR request 17" }),
    )
    .await;
    let erasure = &erased["eraseAuditSubject"];
    assert_eq!(erasure["erasedEvents"], 1);
    assert_eq!(erasure["event"]["action"], "audit.subject.erased");
    assert_eq!(erasure["event"]["reason"], "GDPR request 17");
    assert_eq!(erasure["event"]["metadata"]["erasedEvents"], 1);
    assert!(
        !erasure.to_string().contains(&mark),
        "no erased value on record: {erasure}"
    );
    let again = data(&app, &admin, erase, json!({ "s": "u2", "r": "again" })).await;
    assert_eq!(again["eraseAuditSubject"]["erasedEvents"], 0, "idempotent");
    // Another tenant's admin erases its own u3, not acme's.
    let elsewhere = data(&app, &globex, erase, json!({ "s": "u3", "r": "theirs" })).await;
    assert_eq!(elsewhere["eraseAuditSubject"]["erasedEvents"], 1);

    let after = events(&app, &pii).await;
    let e1_after = by_action(&after, "user.invited", "u1");
    assert_eq!(e1_after["actor"]["name"], "[erased]");
    assert_eq!(
        e1_after["context"],
        json!({ "ipAddress": "[erased]", "userAgent": "[erased]" })
    );
    assert_eq!(
        e1_after["metadata"],
        json!({ "email": "[erased]", "role": "viewer" })
    );
    assert_eq!(e1_after["hash"], e1["hash"], "the event and its hash stay");
    let gone = data(
        &app,
        &pii,
        "query($id: ID!) { auditLog(id: $id) { disclosures { path } } }",
        json!({ "id": e1["id"] }),
    )
    .await;
    assert_eq!(
        gone["auditLog"]["disclosures"],
        json!([]),
        "nothing left to disclose"
    );
    assert_eq!(e1_after["sequence"], e1["sequence"]);
    assert_eq!(
        by_action(&after, "project.created", "u3")["actor"]["name"],
        grace.as_str()
    );
    let stored = dump(&app);
    for value in [&ada, ip, &agent, &email, &grace] {
        assert!(!holds(&stored, value), "{value} is stored in clear");
    }

    // Every proof from before the erasure is the same, and still verifies.
    let again = proofs(&app, &reader, id, &size).await;
    assert_eq!(again["auditInclusionProof"], proven["auditInclusionProof"]);
    assert_eq!(
        again["auditConsistencyProof"],
        proven["auditConsistencyProof"]
    );
    assert_eq!(again["verifyAuditChain"]["valid"], true);
    let later = signed_checkpoint(&app, &reader, size.parse::<u64>().expect("n") + 2).await;
    assert_ne!(later["rootHash"], Value::Null);
    // The independent verifier: the checkpoint signed before the erasure, the erased event's
    // inclusion in it, and its consistency with the one signed after.
    let verifier_key = String::from_utf8(made.stdout.clone()).expect("utf-8");
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    };
    let old_note = file("old.note", checkpoint["signedNote"].as_str().expect("note"));
    let new_note = file("new.note", later["signedNote"].as_str().expect("note"));
    let consistency = data(
        &app,
        &reader,
        "query($from: String!, $to: String) { auditConsistencyProof(fromSize: $from, toSize: $to) { fromSize toSize hashes } }",
        json!({ "from": size, "to": later["treeSize"] }),
    )
    .await;
    let consistency = file(
        "consistency.json",
        &consistency["auditConsistencyProof"].to_string(),
    );
    let export = app.cli(&["export", "--tenant", "acme"]);
    let exported = String::from_utf8(export.stdout).expect("utf-8");
    let line = exported
        .lines()
        .find(|line| line.contains(e1["id"].as_str().expect("id")))
        .expect("the erased event is exported");
    let line = file("event.ndjson", line);
    let inclusion = file("inclusion.json", &again["auditInclusionProof"].to_string());
    let key = verifier_key.trim();
    for args in [
        vec!["checkpoint", "--key", key, &old_note],
        vec![
            "inclusion",
            "--key",
            key,
            "--checkpoint",
            &old_note,
            "--event",
            &line,
            "--proof",
            &inclusion,
        ],
        vec![
            "consistency",
            "--key",
            key,
            "--old",
            &old_note,
            "--new",
            &new_note,
            "--proof",
            &consistency,
        ],
    ] {
        let verified = std::process::Command::new(crate::helpers::python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tools/verify_proofs.py"
            ))
            .args(&args)
            .output()
            .expect("python runs");
        assert!(verified.status.success(), "{}: {verified:?}", args[0]);
    }
    let export = app.cli(&["export", "--tenant", "acme"]);
    assert!(export.status.success(), "{export:?}");
    let text = String::from_utf8(export.stdout).expect("utf-8");
    assert!(!text.contains(&mark), "the export holds no personal value");
    let path = dir.path().join("acme.ndjson");
    std::fs::write(&path, &text).expect("write");
    let verified = std::process::Command::new(crate::helpers::python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tools/verify_export.py"
        ))
        .arg(&path)
        .output()
        .expect("python runs");
    assert!(verified.status.success(), "{verified:?}");
    app.cleanup().await;
}

/// Random events with random personal paths and random erasures: everything still
/// verifies, what was erased reads `[erased]`, everything else reads back as sent, and no
/// personal value is in the database's files.
async fn random_erasures_keep_everything_verifiable(backend: Backend) {
    let Some(app) = spawn_app_with(backend, with_jwt).await else {
        return;
    };
    let admin = token("acme", "audit:admin audit:write audit:read audit:pii");
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ std::process::id() as u64;
    let mut random = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let paths = ["/email", "/phone", "/who/name", "/list/0"];
    let register =
        "mutation($input: AuditActionInput!) { registerAuditAction(input: $input) { action } }";
    let mut registered = Vec::new();
    for action in ["a.one", "a.two"] {
        let chosen: Vec<_> = paths.iter().filter(|_| random(2) == 0).copied().collect();
        let input = json!({ "action": action, "description": "", "personalPaths": chosen });
        data(&app, &admin, register, json!({ "input": input })).await;
        registered.push((action, chosen));
    }
    let users = ["p1", "p2", "p3", "p4", "p5"];
    let mut sent = Vec::new();
    for i in 0..30 {
        let (action, personal) = &registered[random(2) as usize];
        let actor = users[random(5) as usize];
        let subjects: Vec<_> = users.iter().filter(|_| random(4) == 0).copied().collect();
        let value = |label: &str| format!("{label}-{i}-{}", uuid::Uuid::now_v7().simple());
        let metadata = json!({ "email": value("mail"), "phone": value("tel"),
            "who": { "name": value("who") }, "list": [value("item")], "plain": i });
        let input = json!({ "actor": { "type": "USER", "id": actor, "name": value("name") },
            "action": action, "subjectIds": subjects, "metadata": metadata,
            "context": { "userAgent": value("ua") } });
        let log = "mutation($input: AuditEventInput!) { logAuditEvent(input: $input) { id } }";
        let stored = data(&app, &admin, log, json!({ "input": input })).await;
        let mut all: Vec<&str> = subjects.clone();
        all.push(actor);
        let id = stored["logAuditEvent"]["id"].clone();
        sent.push((id, input, personal.clone(), all));
    }
    let erased: Vec<&str> = users.iter().filter(|_| random(3) == 0).copied().collect();
    let erase = "mutation($s: String!) { eraseAuditSubject(subjectId: $s, reason: \"test\") { erasedEvents } }";
    for subject in &erased {
        data(&app, &admin, erase, json!({ "s": subject })).await;
    }

    let found = events(&app, &admin).await;
    let stored = dump(&app);
    for (id, input, personal, subjects) in &sent {
        let event = found.iter().find(|e| e["id"] == *id).expect("the event");
        let gone = subjects.iter().any(|s| erased.contains(s));
        let expect = |sent: &Value| {
            if gone {
                json!("[erased]")
            } else {
                sent.clone()
            }
        };
        assert_eq!(
            event["actor"]["name"],
            expect(&input["actor"]["name"]),
            "{event}"
        );
        assert_eq!(
            event["context"]["userAgent"],
            expect(&input["context"]["userAgent"])
        );
        for path in ["/email", "/phone", "/who/name", "/list/0", "/plain"] {
            let sent = input["metadata"].pointer(path).expect("sent");
            let shown = event["metadata"].pointer(path).expect("shown");
            if personal.contains(&path) {
                assert_eq!(*shown, expect(sent), "{path} of {event}");
                let text = sent.as_str().expect("a string");
                assert!(!holds(&stored, text), "{text} is stored in clear");
            } else {
                assert_eq!(shown, sent, "{path} is not personal");
            }
        }
        let name = input["actor"]["name"].as_str().expect("name");
        assert!(!holds(&stored, name), "{name} is stored in clear");
    }
    let verified = data(
        &app,
        &admin,
        "{ verifyAuditChain { valid checkedCount } }",
        json!({}),
    )
    .await;
    assert_eq!(verified["verifyAuditChain"]["valid"], true, "{verified}");
    let output = app.cli(&["verify"]);
    assert!(output.status.success(), "{output:?}");
    app.cleanup().await;
}

/// The registry's other parts: retention per action, required registration, removal, each
/// change on record.
async fn the_registry_expires_requires_and_records(backend: Backend) {
    let Some(app) = spawn_app_with(backend, with_jwt).await else {
        return;
    };
    let admin = token("acme", "audit:admin audit:write audit:read audit:pii");
    let register = "mutation($input: AuditActionInput!) { registerAuditAction(input: $input) { action retentionDays } }";
    let input = json!({ "action": "session.started", "description": "A sign-in",
        "personalPaths": ["/email"], "retentionDays": 30 });
    let registered = data(&app, &admin, register, json!({ "input": input })).await;
    assert_eq!(registered["registerAuditAction"]["retentionDays"], 30);
    let hostile = json!({ "action": "session.ended", "description": "",
        "metadataSchema": { "type": "string", "pattern": "^(a+)+$(?=x)" } });
    let refused = gql(&app, &admin, register, json!({ "input": hostile })).await;
    assert_eq!(
        refused["errors"][0]["extensions"]["field"], "input.metadataSchema",
        "{refused}"
    );

    let mark = uuid::Uuid::now_v7().simple().to_string();
    let old_at = (chrono::Utc::now() - chrono::Duration::days(40)).to_rfc3339();
    let log = "mutation($input: AuditEventInput!) { logAuditEvent(input: $input) { id } }";
    for (when, who) in [(Some(old_at), "old"), (None, "new")] {
        let mut input = json!({ "actor": { "type": "USER", "id": who, "name": format!("{who} {mark}") },
            "action": "session.started", "metadata": { "email": format!("{who}-{mark}@example.com") } });
        if let Some(when) = when {
            input["occurredAt"] = json!(when);
        }
        data(&app, &admin, log, json!({ "input": input })).await;
    }
    let purged = app.cli(&["purge"]);
    assert!(purged.status.success(), "{purged:?}");
    let found = events(&app, &admin).await;
    let old = by_action(&found, "session.started", "old");
    assert_eq!(old["actor"]["name"], "[erased]");
    assert_eq!(old["metadata"]["email"], "[erased]");
    let new = by_action(&found, "session.started", "new");
    assert_eq!(new["actor"]["name"], format!("new {mark}"));
    let expired = by_action(&found, "audit.personal.expired", "audit-service");
    assert_eq!(expired["metadata"]["erasedEvents"], 1, "{expired}");

    // Required registration: unregistered actions are refused, audit-service's own are not.
    let settings = "mutation { setAuditTenantSettings(requireRegisteredActions: true) { requireRegisteredActions } }";
    data(&app, &admin, settings, json!({})).await;
    let unregistered =
        json!({ "actor": { "type": "USER", "id": "u1" }, "action": "project.created" });
    let refused = gql(&app, &admin, log, json!({ "input": unregistered })).await;
    assert_eq!(
        refused["errors"][0]["extensions"]["field"], "input.action",
        "{refused}"
    );
    let registered =
        json!({ "actor": { "type": "USER", "id": "u1" }, "action": "session.started" });
    data(&app, &admin, log, json!({ "input": registered })).await;
    let remove = "mutation($a: String!) { removeAuditAction(action: $a) }";
    let removed = data(&app, &admin, remove, json!({ "a": "session.started" })).await;
    assert_eq!(removed["removeAuditAction"], true);
    let again = data(&app, &admin, remove, json!({ "a": "session.started" })).await;
    assert_eq!(again["removeAuditAction"], false);
    let refused = gql(&app, &admin, log, json!({ "input": registered })).await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{refused}"
    );
    let listed = data(
        &app,
        &admin,
        "{ auditActions { action } auditTenantSettings { requireRegisteredActions } }",
        json!({}),
    )
    .await;
    assert_eq!(listed["auditActions"], json!([]));
    assert_eq!(
        listed["auditTenantSettings"]["requireRegisteredActions"],
        true
    );
    let found = events(&app, &admin).await;
    let actions: Vec<&str> = found.iter().filter_map(|e| e["action"].as_str()).collect();
    for recorded in [
        "audit.action.registered",
        "audit.settings.changed",
        "audit.action.removed",
    ] {
        assert!(
            actions.contains(&recorded),
            "{recorded} is on record: {actions:?}"
        );
    }
    app.cleanup().await;
}

crate::with_each_backend!(
    personal_values_are_sealed_shown_to_pii_and_erased,
    random_erasures_keep_everything_verifiable,
    the_registry_expires_requires_and_records,
);

/// Runs the binary with `env` (and without the test suite's privacy key) until it exits or
/// is ready; returns whether it exited, and its log.
async fn start(database_url: &str, env: &[(&str, &str)]) -> (bool, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let log = tempfile::NamedTempFile::new().expect("log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_audit-service"))
        .env_remove("AUDIT_PRIVACY_KEY_FILE")
        .env("DATABASE_URL", database_url)
        .env("AUDIT_LISTEN", format!("127.0.0.1:{port}"))
        .envs(env.iter().copied())
        .stderr(log.reopen().expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("starts");
    let ready = format!("http://127.0.0.1:{port}/readyz");
    let started = std::time::Instant::now();
    let exited = loop {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(!status.success(), "a refusal exits non-zero");
            break true;
        }
        if reqwest::get(&ready).await.is_ok_and(|r| r.status() == 200) {
            child.kill().await.expect("killed");
            break false;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "neither ready nor exited"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    (exited, std::fs::read_to_string(log.path()).expect("log"))
}

#[tokio::test]
async fn key_files_are_required_checked_and_rotate() {
    let dir = tempfile::tempdir().expect("dir");
    let db_file = dir.path().join("p.db");
    let sqlite = format!("sqlite://{}?mode=rwc", db_file.display());
    let cli = |args: &[&str], env: &[(&str, &str)]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_audit-service"))
            .args(args)
            .env_remove("AUDIT_PRIVACY_KEY_FILE")
            .env("DATABASE_URL", &sqlite)
            .envs(env.iter().copied())
            .output()
            .expect("runs");
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };

    // Nothing configured on SQLite: a key file beside the database, and the log says so.
    let (exited, log) = start(&sqlite, &[]).await;
    assert!(!exited, "{log}");
    assert!(log.contains("made a privacy key file"), "{log}");
    let beside = dir.path().join("p.db.privacy-key");
    assert!(beside.exists());

    // Missing, unreadable or wrong files are errors, never a fallback.
    let missing = dir.path().join("missing.key").display().to_string();
    let (exited, log) = start(&sqlite, &[("AUDIT_PRIVACY_KEY_FILE", &missing)]).await;
    assert!(exited && log.contains("privacy key file"), "{log}");
    let garbage = dir.path().join("garbage.key");
    std::fs::write(&garbage, "not a key").expect("write");
    let garbage = garbage.display().to_string();
    let (exited, log) = start(&sqlite, &[("AUDIT_PRIVACY_KEY_FILE", &garbage)]).await;
    assert!(exited && log.contains("not a privacy key file"), "{log}");
    if let Some((postgres, cleanup)) = new_database(Backend::Postgres).await {
        let (exited, log) = start(&postgres, &[]).await;
        assert!(exited && log.contains("required on PostgreSQL"), "{log}");
        cleanup.run().await;
    }

    // Data keys made under the first key...
    let key = dir.path().join("privacy.key");
    cli(
        &["privacy-key", "create", "--out", &key.display().to_string()],
        &[],
    );
    let key = key.display().to_string();
    let binary = crate::helpers::Binary::start(&sqlite, &[("AUDIT_PRIVACY_KEY_FILE", &key)]).await;
    let client = reqwest::Client::new();
    let url = format!("{}/graphql", binary.base);
    let name = format!("Rotated {}", uuid::Uuid::now_v7().simple());
    let log = json!({ "query": "mutation($i: AuditEventInput!) { logAuditEvent(input: $i) { id } }",
        "variables": { "i": { "actor": { "type": "USER", "id": "r1", "name": name }, "action": "a.b" } } });
    let logged = post_json(&client, &url, None, log).await;
    assert_eq!(logged["errors"], Value::Null, "{logged}");
    // A stream's token is sealed under the same key file.
    let stream = json!({ "query": "mutation { createAuditStream(input: { name: \"dd\", kind: DATADOG, url: \"http://127.0.0.1:9/\", secret: \"dd-token\" }) { id } }" });
    let stream = post_json(&client, &url, None, stream).await;
    assert_eq!(stream["errors"], Value::Null, "{stream}");
    assert!(
        !binary.log().contains(&name),
        "no personal value in the server's log"
    );
    drop(binary);
    // ... a server with another key file refuses to start.
    let other = dir.path().join("other.key");
    cli(
        &[
            "privacy-key",
            "create",
            "--out",
            &other.display().to_string(),
        ],
        &[],
    );
    let other = other.display().to_string();
    let (exited, log) = start(&sqlite, &[("AUDIT_PRIVACY_KEY_FILE", &other)]).await;
    assert!(
        exited && log.contains("does not open the stored data keys"),
        "{log}"
    );

    // Rotation: a new first key, data keys rewrapped, the old key dropped.
    std::thread::sleep(Duration::from_millis(1100));
    cli(&["privacy-key", "rotate", "--file", &key], &[]);
    let rewrapped = cli(
        &["privacy-key", "rewrap"],
        &[("AUDIT_PRIVACY_KEY_FILE", &key)],
    );
    assert!(
        rewrapped.contains("rewrapped 1 data key(s) and 1 stream secret(s)"),
        "{rewrapped}"
    );
    let mut file: Value =
        serde_json::from_str(&std::fs::read_to_string(&key).expect("read")).expect("json");
    let keys = file["keys"].as_array_mut().expect("keys");
    assert_eq!(keys.len(), 2);
    keys.truncate(1);
    std::fs::write(&key, file.to_string()).expect("write");
    let binary = crate::helpers::Binary::start(&sqlite, &[("AUDIT_PRIVACY_KEY_FILE", &key)]).await;
    let read = json!({ "query": "{ auditLogs(first: 1, filter: { actorIds: [\"r1\"] }) { nodes { actor { name } } } }" });
    let read = post_json(&client, &format!("{}/graphql", binary.base), None, read).await;
    assert_eq!(
        read["data"]["auditLogs"]["nodes"][0]["actor"]["name"],
        name.as_str(),
        "{read}"
    );
    // The stream's token opens under the new key: its sink is tried (and cannot connect).
    let started = std::time::Instant::now();
    loop {
        let streams = json!({ "query": "{ auditStreams { lastError } }" });
        let streams = post_json(&client, &format!("{}/graphql", binary.base), None, streams).await;
        let error = &streams["data"]["auditStreams"][0]["lastError"];
        if error.is_string() {
            assert_eq!(error, "the request could not connect", "{streams}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{streams}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The command line erases too.
    let erased = cli(
        &[
            "erase",
            "--tenant",
            "default",
            "--subject",
            "r1",
            "--reason",
            "ticket 9",
        ],
        &[("AUDIT_PRIVACY_KEY_FILE", &key)],
    );
    assert!(erased.contains("\"erasedEvents\":1"), "{erased}");
    let read = json!({ "query": "{ auditLogs(first: 5, filter: { actorIds: [\"r1\"] }) { nodes { actor { name } } } }" });
    let read = post_json(&client, &format!("{}/graphql", binary.base), None, read).await;
    assert_eq!(
        read["data"]["auditLogs"]["nodes"][0]["actor"]["name"], "[erased]",
        "{read}"
    );
}
