//! The rules and the catalog as data, for kits in other languages: what `contract.json`
//! holds (a test keeps the file equal to [`spec`]; `cargo run -p audit-contract` prints it).

use serde_json::{Value, json};

use crate::catalog::CATALOG;
use crate::rules::*;

/// The contract as JSON. Lengths count Unicode scalar values (code points), not bytes or
/// UTF-16 units; "control characters" are Unicode's category Cc.
pub fn spec() -> Value {
    let catalog: Vec<Value> = CATALOG
        .iter()
        .map(|entry| {
            json!({
                "family": entry.family,
                "helper": entry.helper,
                "action": entry.action,
                "targetType": entry.target_type,
                "outcome": entry.outcome.map(str::to_uppercase),
                "description": entry.description,
            })
        })
        .collect();
    json!({
        "limits": {
            "batch": MAX_BATCH,
            "actionLength": MAX_ACTION_LEN,
            "actionSegments": [ACTION_SEGMENTS.start(), ACTION_SEGMENTS.end()],
            "idLength": MAX_ID_LEN,
            "typeLength": MAX_TYPE_LEN,
            "nameLength": MAX_NAME_LEN,
            "reasonLength": MAX_REASON_LEN,
            "userAgentLength": MAX_USER_AGENT_LEN,
            "keyLength": MAX_KEY_LEN,
            "metadataBytes": MAX_METADATA_BYTES,
            "metadataValues": MAX_METADATA_VALUES,
            "metadataDepth": MAX_METADATA_DEPTH,
            "safeInteger": MAX_SAFE_INTEGER,
            "futureSkewSeconds": MAX_FUTURE_SKEW_SECONDS,
            "subjects": MAX_SUBJECTS,
        },
        "patterns": {
            "segment": "^[a-z][a-z0-9_]*$",
            "traceId": "^(?!0{32}$)[0-9a-f]{32}$",
        },
        "rules": [
            { "field": "action", "rule": "action" },
            { "field": "actor.id", "rule": "id", "length": "idLength" },
            { "field": "actor.name", "rule": "text", "length": "nameLength" },
            { "field": "target.type", "rule": "id", "length": "typeLength" },
            { "field": "target.id", "rule": "id", "length": "idLength" },
            { "field": "target.name", "rule": "text", "length": "nameLength" },
            { "field": "reason", "rule": "text", "length": "reasonLength" },
            { "field": "metadata", "rule": "metadata" },
            { "field": "context.ipAddress", "rule": "ip" },
            { "field": "context.userAgent", "rule": "text", "length": "userAgentLength" },
            { "field": "context.requestId", "rule": "id", "length": "keyLength" },
            { "field": "context.traceId", "rule": "traceId" },
            { "field": "idempotencyKey", "rule": "id", "length": "keyLength" },
            { "field": "subjectIds", "rule": "ids", "length": "idLength", "count": "subjects" },
        ],
        "catalog": catalog,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn contract_json_is_the_spec() {
        let file = include_str!("../contract.json");
        let on_file: serde_json::Value = serde_json::from_str(file).unwrap();
        assert_eq!(
            on_file,
            super::spec(),
            "contract/contract.json is stale: cargo run -p audit-contract > contract/contract.json"
        );
    }
}
