#!/usr/bin/env python3
"""Check disclosed personal values against the commitments an export's hash chain covers.

Usage: python3 tools/verify_disclosures.py EXPORT.ndjson DISCLOSURES.json

EXPORT.ndjson is `audit-service export` output (check its chain with verify_export.py).
DISCLOSURES.json is a JSON list of {"id", "path", "salt", "value"}: what `AuditLog.disclosures`
gives a caller with audit:pii, with the event's id. A disclosure is valid when SHA-256 of the
JCS array [salt, path, value] is the commitment the event's "personal" holds at that path
(docs/privacy.md). Exit 0: all valid; 1: one is not; 2: usage or parse error.
Python 3 standard library only.
"""
import hashlib, json, os, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from verify_export import jcs, unique_keys  # noqa: E402  (the chain's canonical encoding)

def main(export_path, disclosures_path):
    commitments = {}
    with open(export_path, "rb") as f:
        for line in f:
            event = json.loads(line, object_pairs_hook=unique_keys)
            commitments[event["id"]] = event.get("personal") or {}
    with open(disclosures_path, "rb") as f:
        disclosures = json.load(f)
    for d in disclosures:
        committed = commitments.get(d["id"], {}).get(d["path"])
        if committed is None:
            print(f"INVALID: event {d['id']} has no commitment at {d['path']}")
            return 1
        digest = hashlib.sha256(jcs([d["salt"], d["path"], d["value"]]).encode("utf-8")).hexdigest()
        if digest != committed:
            print(f"INVALID: the value disclosed at {d['path']} of event {d['id']} is not the one committed to")
            return 1
    print(f"valid: {len(disclosures)} disclosures")
    return 0

if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(2)
    try:
        sys.exit(main(sys.argv[1], sys.argv[2]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"cannot read: {e!r}", file=sys.stderr)
        sys.exit(2)
