#!/usr/bin/env python3
"""Verify an `audit-service export --format ndjson` file: the per-tenant hash chain, versions 1 to 3.

Usage: python3 tools/verify_export.py EXPORT.ndjson

Each line is an event's canonical JSON with "hash" and "prev_hash" (hex) added. An event's
hash must be SHA-256(prev_hash || JCS(the event without those two keys)), its prev_hash the
previous line's hash (32 zero bytes for seq 1), and seq must go up by one; docs/chain.md is
the specification. Exit 0: valid; 1: the chain is broken; 2: usage or parse error.
Python 3 standard library only.
"""
import hashlib, json, math, sys
from decimal import Decimal

def number(x):
    """ECMAScript Number.prototype.toString of the double nearest x (RFC 8785, 3.2.2.3)."""
    x = float(x)  # JSON has one number type: 100 and 100.0 are the same double
    if not math.isfinite(x):
        raise ValueError("NaN and Infinity are not JSON")
    if x == 0:
        return "0"  # also -0
    sign, digits, exp = Decimal(repr(x)).normalize().as_tuple()  # repr: shortest round-trip
    d = "".join(map(str, digits))
    k, n = len(d), len(d) + exp  # x = ±0.d × 10^n, with k digits in d
    if k <= n <= 21:
        s = d + "0" * (n - k)
    elif 0 < n <= 21:
        s = d[:n] + "." + d[n:]
    elif -6 < n <= 0:
        s = "0." + "0" * -n + d
    else:
        s = d[0] + ("." + d[1:] if k > 1 else "") + ("e+" if n > 0 else "e-") + str(abs(n - 1))
    return "-" * sign + s

def jcs(v):
    """RFC 8785 JSON Canonicalization Scheme."""
    if isinstance(v, dict):  # keys sorted by UTF-16 code units
        keys = sorted(v, key=lambda key: key.encode("utf-16-be"))
        return "{" + ",".join(jcs(key) + ":" + jcs(v[key]) for key in keys) + "}"
    if isinstance(v, list):
        return "[" + ",".join(map(jcs, v)) + "]"
    if v is None or isinstance(v, (bool, str)):  # bool before numbers: True is an int
        return json.dumps(v, ensure_ascii=False)  # escapes exactly as JCS does
    return number(v)

# The fields each version of the canonical encoding covers (docs/chain.md).
V1_KEYS = {
    "action", "actor_id", "actor_name", "actor_type", "chain_version", "id", "idempotency_key",
    "ip_address", "metadata", "occurred_at", "outcome", "reason", "recorded_at", "request_id",
    "seq", "target_id", "target_name", "target_type", "tenant_id", "user_agent",
}
KEYS = {1: V1_KEYS, 2: V1_KEYS | {"trace_id"}, 3: V1_KEYS | {"trace_id", "personal"}}
# Version 3's personal fields, by the path its commitments name them with (docs/privacy.md).
PERSONAL_FIELDS = {"actor.name": "actor_name", "context.ipAddress": "ip_address",
                   "context.userAgent": "user_agent"}

def personal_left(event):
    """Version 3: the paths committed to whose value is not null in the event (it must hold
    none of its personal values: they are sealed elsewhere, and the hash covers commitments)."""
    commitments = event["personal"]
    if commitments is None:
        return []
    if not isinstance(commitments, dict):
        return ["personal"]
    left = []
    for path, commitment in commitments.items():
        if not (isinstance(commitment, str) and len(commitment) == 64):
            left.append(path)
        elif path in PERSONAL_FIELDS:
            if event[PERSONAL_FIELDS[path]] is not None:
                left.append(path)
        elif path.startswith("metadata/"):
            slot = event["metadata"]
            for token in path[len("metadata/"):].split("/"):
                token = token.replace("~1", "/").replace("~0", "~")
                slot = slot.get(token) if isinstance(slot, dict) else (
                    slot[int(token)] if isinstance(slot, list) and token.isdigit()
                    and int(token) < len(slot) else None)
            if slot is not None:
                left.append(path)
        else:
            left.append(path)
    return left

def unique_keys(pairs):
    if len({key for key, _ in pairs}) != len(pairs):
        raise ValueError("duplicate key")
    return dict(pairs)

def verify(lines):
    """Checks every line; returns the summary, or exits 1 at the first problem."""
    tenant = seq = prev = None
    for count, line in enumerate(lines, 1):
        try:
            event = json.loads(line, object_pairs_hook=unique_keys)
            claimed, claimed_prev = event.pop("hash"), event.pop("prev_hash")
            this_seq, this_tenant = int(event["seq"]), event["tenant_id"]
            canonical = jcs(event).encode("utf-8")
            digest = hashlib.sha256(bytes.fromhex(claimed_prev) + canonical).hexdigest()
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as e:
            usage_error(f"line {count}: cannot parse: {e!r}")

        def check(ok, reason):
            if not ok:
                print(f"INVALID at seq {event['seq']}: {reason}")
                sys.exit(1)

        version = event.get("chain_version")
        check(type(version) is int and version in KEYS, f"chain_version {version!r} is not known")
        check(set(event) == KEYS[version], f"the fields are not those of version {version}")
        if version >= 3:
            left = personal_left(event)
            check(not left, f"personal values in the clear or bad commitments: {left}")
        check(len(claimed_prev) == 64, "prev_hash is not 32 bytes")
        if tenant is None:  # the first line: genesis, or the checkpoint left by a purge
            tenant = this_tenant
            check(this_seq >= 1, "seq starts at 1")
            check(this_seq > 1 or claimed_prev == "0" * 64, "seq 1 must chain to 32 zero bytes")
            if this_seq > 1:
                print(f"export starts at seq {this_seq}: accepting its prev_hash {claimed_prev}"
                      f" as the retention checkpoint (hash of seq {this_seq - 1})", file=sys.stderr)
        else:
            check(this_tenant == tenant, f"tenant_id {this_tenant!r}, expected {tenant!r}")
            check(this_seq == seq + 1, f"seq follows {seq}, expected {seq + 1}")
            check(claimed_prev == prev, f"prev_hash is not the hash of seq {seq}")
        check(digest == claimed, "hash does not match the event: its content changed")
        seq, prev = this_seq, claimed
    if tenant is None:
        usage_error("the export is empty")
    return f"valid: {count} events, tenant {tenant}, head seq {seq} hash {prev}"

def usage_error(message):
    print(message, file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    if len(sys.argv) != 2:
        usage_error(__doc__.strip())
    try:
        with open(sys.argv[1], "rb") as f:  # bytes: json.loads decodes UTF-8 strictly
            print(verify(f))
    except OSError as e:
        usage_error(str(e))
