#!/usr/bin/env python3
"""Writes small seed inputs for the fuzz targets into corpus/<target>/.

The targets damage valid files built in-process (see src/edit.rs), so the empty input is
already a valid vault; these seeds give libFuzzer one example of each edit op on each file,
so it starts from inputs long enough to carry edit scripts instead of growing them byte by
byte. wal_recovery takes a whole segment file: its seeds are segments built here from
docs/format.md, valid, torn and damaged. Run from fuzz/:  python3 seeds.py
"""
import base64
import json
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def op_xor(at, mask):
    return bytes([0]) + struct.pack("<IB", at, mask)


def op_u32(at, v):
    return bytes([1]) + struct.pack("<II", at, v)


def op_u64(at, v):
    return bytes([2]) + struct.pack("<IQ", at, v)


def op_truncate(at):
    return bytes([3]) + struct.pack("<I", at)


def op_insert(at, data):
    return bytes([4]) + struct.pack("<IB", at, len(data)) + data


def op_remove(at, n):
    return bytes([5]) + struct.pack("<IH", at, n)


def op_copy(at, to, n):
    return bytes([6]) + struct.pack("<IIH", at, to, n)


# Offsets that land on the common header (0..64), the first payload words (sub-headers:
# counts, dims, offsets) and further in.
SCRIPTS = [
    b"",
    op_xor(70, 0x01),
    op_u32(64, 0xFFFFFFFF),
    op_u32(68, 0),
    op_u64(72, 1 << 40),
    op_truncate(100),
    op_insert(80, b"\x00" * 8),
    op_remove(64, 16),
    op_copy(64, 128, 32),
    op_xor(12, 0xFF) + op_u32(200, 7),
]

# Template vault: MANIFEST, two segment dirs of four files, and the WAL files.
VAULT_FILES = 16
WAL_TAIL_RECORDS = 4

MANIFEST = {
    "embedder": "fuzz-tiny-8",
    "dim": 8,
    "next_id": 38,
    "next_segment": 5,
    "checkpoint_lsn": 0,
    "segments": ["seg-0000000000000003", "seg-0000000000000004"],
    "tombstones": [3],
}


def manifest_variants():
    m = dict(MANIFEST)
    yield m
    yield dict(m, segments=m["segments"] * 2)
    yield dict(m, segments=["seg-0000000000000003", "../vault/seg-0000000000000004"])
    yield dict(m, next_id=2**64 - 1, checkpoint_lsn=2**64 - 1)
    yield dict(m, next_segment=3)
    yield dict(m, tombstones=[0, 2**64 - 1] + list(range(1, 40)))
    yield dict(m, embedder=None, dim=0)


def wal_segment(batches, seed=0x5EED_CAFE, first_lsn=1):
    """A WAL segment file as docs/format.md specifies it: header, then one frame per record,
    END_OF_BATCH on the last record of each batch; frame crcs start from the header's seed."""
    head = b"MRWALSEG" + struct.pack("<HHIQI", 1, 0, seed, first_lsn, 0)
    out = head + struct.pack("<I", zlib.crc32(head))
    for batch in batches:
        for i, (kind, payload) in enumerate(batch):
            flags = 1 if i + 1 == len(batch) else 0
            frame = struct.pack("<IBB", len(payload), kind, flags)
            frame += struct.pack("<I", zlib.crc32(frame, seed)) + payload
            out += frame + struct.pack("<I", zlib.crc32(frame, seed))
    return out


def wal_recovery_seeds():
    batches = [[(1, b"hello")], [(2, b"a"), (2, b""), (2, bytes(range(40)))], [(3, b"x" * 100)]]
    whole = wal_segment(batches)
    yield "valid", whole
    yield "empty", wal_segment([])
    yield "torn", whole[:-7]  # the last frame cut short: a torn tail
    yield "unfinished-batch", wal_segment(batches[:1] + [[(2, b"a"), (2, b"b")]])[:-20]
    yield "garbage-tail", whole + b"\x00" * 16 + b"\xff" * 16
    flipped = bytearray(whole)
    flipped[32 + 12] ^= 0x01  # a payload bit of the first record: damage before intact data
    yield "flipped", bytes(flipped)
    yield "late-lsn", wal_segment(batches, first_lsn=2)


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    for pick in range(VAULT_FILES):
        for flags in (0, 1):
            for i, s in enumerate(SCRIPTS):
                write("vault_files", f"seed-{pick}-{flags}-{i}", bytes([pick, flags]) + s)
        write("vault_files", f"seed-{pick}-delete", bytes([pick, 2]))
        # The first row id of a records.bin (header 64 + sub-header 16) set to an id another
        # segment holds: once made compaction write a segment with a repeated id.
        write("vault_files", f"seed-{pick}-dupid", bytes([pick, 1]) + op_u64(80, 4))
    for i, s in enumerate(SCRIPTS):
        write("manifest", f"seed-edit-{i}", bytes([0]) + s)
    for i, m in enumerate(manifest_variants()):
        write("manifest", f"seed-raw-{i}", bytes([1]) + json.dumps(m).encode())
    for pick in range(WAL_TAIL_RECORDS + 1):
        for kind in (0x00, 0x81, 0x82, 0x83):
            for i, s in enumerate(SCRIPTS):
                write("wal_payload", f"seed-{pick}-{kind:02x}-{i}", bytes([pick, kind]) + s)
    # The first ingest record's first id (after version u8 and count u32) set to the extremes:
    # u64::MAX once made Vault::open overflow computing the next id.
    for i, v in enumerate((0, 2**62, 2**64 - 1)):
        write("wal_payload", f"seed-id-{i}", bytes([0, 0]) + op_u64(5, v))
    # Found by fuzz/ci.sh: a created_at far in the past made the search's recency prior
    # overflow `now - created_at` (fixed with a saturating subtraction in vault/search.rs).
    write("wal_payload", "crash-recency-overflow", base64.b64decode("gFxcXAYABIBcXFwGAA=="))
    for flags in (0, 2):
        for i, s in enumerate(SCRIPTS):
            write("lexical_view", f"seed-{flags}-{i}", bytes([flags]) + s)
    write("lexical_view", "seed-raw", bytes([3]) + b"MRLEXIDX" + struct.pack("<IIII", 1, 0, 0, 0) + bytes(24))
    for i, s in enumerate(SCRIPTS):
        write("hnsw_graph", f"seed-{i}", bytes([0]) + s)
    for name, data in wal_recovery_seeds():
        write("wal_recovery", f"seed-{name}", data)
    write("hnsw_graph", "seed-raw", bytes([1]) + struct.pack("<8I", 1, 8, 4, 0, 0, 0, 0, 0) + bytes(36))


if __name__ == "__main__":
    main()
