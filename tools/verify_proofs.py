#!/usr/bin/env python3
"""Verify audit-service's signed checkpoints and Merkle proofs, independently of the server.

Usage:
  verify_proofs.py checkpoint  --key VKEY NOTE
  verify_proofs.py inclusion   --key VKEY --checkpoint NOTE --event EVENT --proof PROOF
  verify_proofs.py consistency --key VKEY --old NOTE --new NOTE --proof PROOF

VKEY is a verifier key as `audit-service checkpoint-key create` prints it
(`name+keyhash+base64`); NOTE a file holding a signed checkpoint (`signedNote`, or
`GET /tlog/<tenant>/checkpoint`); EVENT a file holding one line of
`audit-service export --format ndjson`; PROOF a file holding the JSON object of
`auditInclusionProof` or `auditConsistencyProof`.

`inclusion` recomputes the event's chain hash from its content (docs/chain.md), so an
event changed after it was logged fails. Trees and proofs are RFC 9162 §2.1; checkpoints
are C2SP tlog-checkpoint bodies in C2SP signed notes with Ed25519. Exit 0: valid;
1: invalid; 2: usage or parse error. Python 3 standard library plus `cryptography`.
"""
import base64, hashlib, json, os, sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from verify_export import jcs, unique_keys  # noqa: E402  (the chain's canonical encoding)


def sha256(*parts):
    return hashlib.sha256(b"".join(parts)).digest()


def invalid(reason):
    print(f"INVALID: {reason}")
    sys.exit(1)


def usage_error(message):
    print(message, file=sys.stderr)
    sys.exit(2)


# --- C2SP signed notes and checkpoints -------------------------------------------------

def parse_verifier_key(text):
    """name+keyhash+base64(0x01 || key) -> (name, key id, public key)."""
    name, key_hash, encoded = text.strip().split("+", 2)
    raw = base64.b64decode(encoded, validate=True)
    if raw[0] != 1 or len(raw) != 33:
        raise ValueError("not an Ed25519 verifier key")
    key_id = sha256(name.encode(), b"\n", raw)[:4]
    if key_id.hex() != key_hash:
        raise ValueError("the key hash does not match the key")
    return name, key_id, Ed25519PublicKey.from_public_bytes(raw[1:])


def open_note(note, key):
    """The body of a signed note, if one of its signatures is the key's; else exits 1.
    As strict as Go's note.Open: UTF-8, no carriage returns, every line ending in a newline,
    signature lines only after the blank line."""
    name, key_id, public = key
    if "\r" in note or not note.endswith("\n"):
        invalid("not a signed note: it has a carriage return or no final newline")
    body, sep, signatures = note.rpartition("\n\n")
    if not sep:
        invalid("not a signed note: no blank line before the signatures")
    body += "\n"
    prefix = f"\u2014 {name} "
    lines = signatures.split("\n")[:-1]
    if not all(line.startswith("\u2014 ") for line in lines):
        invalid("not a signed note: a line after the blank line is not a signature")
    for line in lines:
        try:
            raw = base64.b64decode(line[len(prefix):], validate=True)
        except ValueError:
            continue  # another key's, or malformed: not a signature of this key
        if not line.startswith(prefix) or raw[:4] != key_id:
            continue
        try:
            public.verify(raw[4:], body.encode())
            return body
        except InvalidSignature:
            invalid(f"the signature of {name} does not verify")
    invalid(f"the note has no signature of {name}")


def parse_checkpoint(body):
    """origin, tree size and root hash of a tlog-checkpoint body."""
    lines = body.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        invalid("a checkpoint body has an origin, a size and a root, each on its own line")
    origin, size, root = lines[0], int(lines[1]), base64.b64decode(lines[2], validate=True)
    if str(size) != lines[1] or len(root) != 32:
        invalid("malformed tree size or root hash")
    return origin, size, root


def checkpoint(path, key):
    with open(path, "rb") as f:  # bytes: no newline translation
        return parse_checkpoint(open_note(f.read().decode("utf-8"), key))


# --- RFC 9162 §2.1 ------------------------------------------------------------------------

def node(left, right):
    return sha256(b"\x01", left, right)


def root_from_inclusion(index, size, leaf, proof):
    """RFC 9162 §2.1.3.2."""
    if index >= size:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def consistent(first, second, first_root, second_root, proof):
    """RFC 9162 §2.1.4.2."""
    if first == second:
        return not proof and first_root == second_root
    if not 0 < first < second:
        return False
    if first & (first - 1) == 0:  # a power of two
        proof = [first_root] + proof
    if not proof:
        return False
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node(c, fr), node(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == first_root and sr == second_root


def hashes(proof):
    return [bytes.fromhex(h) for h in proof["hashes"]]


def event_leaf(path):
    """The event's sequence and its chain hash, recomputed from its content."""
    with open(path, "rb") as f:
        event = json.loads(f.readline(), object_pairs_hook=unique_keys)
    claimed, prev = event.pop("hash"), event.pop("prev_hash")
    leaf = sha256(bytes.fromhex(prev), jcs(event).encode("utf-8"))
    if leaf.hex() != claimed:
        invalid(f"event {event['seq']} does not match its hash: its content changed")
    return int(event["seq"]), leaf


def main(argv):
    args = {}
    command, rest = (argv[0], argv[1:]) if argv else (None, [])
    positional = []
    while rest:
        if rest[0].startswith("--") and len(rest) > 1:
            args[rest[0][2:]] = rest[1]
            rest = rest[2:]
        else:
            positional.append(rest.pop(0))
    key = parse_verifier_key(args["key"])
    if command == "checkpoint" and len(positional) == 1:
        origin, size, root = checkpoint(positional[0], key)
        return f"valid: {origin}, tree size {size}, root {root.hex()}"
    with open(args["proof"], encoding="utf-8") as f:
        proof = json.load(f)
    if command == "inclusion":
        origin, size, root = checkpoint(args["checkpoint"], key)
        seq, leaf = event_leaf(args["event"])
        if int(proof["treeSize"]) != size or int(proof["leafIndex"]) != seq - 1:
            invalid(f"the proof is for leaf {proof['leafIndex']} of {proof['treeSize']}, "
                    f"not leaf {seq - 1} of {size}")
        leaf_hash = sha256(b"\x00", leaf)
        if root_from_inclusion(seq - 1, size, leaf_hash, hashes(proof)) != root:
            invalid(f"event {seq} is not in the tree of {origin} at size {size}")
        return f"valid: event {seq} is in {origin} at tree size {size}"
    if command == "consistency":
        old_origin, old_size, old_root = checkpoint(args["old"], key)
        origin, size, root = checkpoint(args["new"], key)
        if old_origin != origin:
            invalid(f"the checkpoints are of two logs, {old_origin} and {origin}")
        if (int(proof["fromSize"]), int(proof["toSize"])) != (old_size, size):
            invalid("the proof is not between these two checkpoints' sizes")
        if not consistent(old_size, size, old_root, root, hashes(proof)):
            invalid(f"{origin} at size {size} does not extend it at size {old_size}")
        return f"valid: {origin} at size {size} extends it at size {old_size}"
    usage_error(__doc__.strip())


if __name__ == "__main__":
    try:
        print(main(sys.argv[1:]))
    except (KeyError, ValueError, OSError, IndexError) as e:
        usage_error(f"{e!r}\n\n{__doc__.strip()}")
