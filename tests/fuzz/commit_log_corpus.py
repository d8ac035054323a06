#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_commit_log (tests/fuzz/corpus/commit_log/).

tests/fuzz/commit_log_fuzz.cpp decodes its input with libFuzzer's
FuzzedDataProvider: bytes (payloads) from the front, numbers from the back.
Seed below says which segments, entries, tails and after_lsn to write, and
is encoded in the order Decode() consumes them; the two must change together.
Run from anywhere, then check what each seed decodes to:

    python3 tests/fuzz/commit_log_corpus.py
    LIAISON_FUZZ_TRACE=1 build-asan/tests/fuzz_commit_log -runs=0 tests/fuzz/corpus/commit_log
"""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fuzz", "corpus", "commit_log")

# Decode()'s choices.
FLAG_SPARE, FLAG_PREALLOCATE, FLAG_DECOY, FLAG_COUNTER_NEAR_MAX = 1, 2, 4, 0x18
RAW, LYING_LENGTH, BAD_CRC, VALID = 0, 1, 2, 3       # entry kinds: (op >> 2) & 7
TAIL_NONE, TAIL_CUT, TAIL_ZEROS, TAIL_GARBAGE, TAIL_FLIP = 0, 4, 5, 6, 7
PICK_GAP = 3                                           # PickLsn: next + 1..3
AFTER_ZERO, AFTER_MAX, AFTER_NEAR = 1, 2, 7            # after_lsn: 0, 2^64-1 - n, first - 1 + n


class Provider:
    """The inverse of FuzzedDataProvider, for the calls Decode makes."""

    def __init__(self):
        self.front = bytearray()
        self.back = bytearray()  # in the order consumed: the input ends with it reversed

    def integral(self, lo, hi, value, bits=64):
        span, result, n = hi - lo, value - lo, 0
        assert 0 <= result <= span
        while n * 8 < bits and (span >> (n * 8)) > 0:
            n += 1
        self.back += result.to_bytes(n, "big") if n else b""

    def boolean(self, value):
        self.integral(0, 255, 1 if value else 0, 8)

    def data(self, b):
        self.front += b

    def input(self):
        return bytes(self.front) + bytes(reversed(self.back))


def encode(segments, after=(AFTER_ZERO, 0), flags=0, append=b"appended", release=0, counter_below_max=0):
    """segments: lists of (kind, payload, gap) entries plus a tail, as
    {"entries": [...], "tail": (TAIL_x, n), "from_last_valid": bool}."""
    p = Provider()
    p.integral(0, 255, flags, 8)
    if flags & FLAG_COUNTER_NEAR_MAX == FLAG_COUNTER_NEAR_MAX:
        p.integral(0, 6, counter_below_max)  # the first counter: 2^64-1 - this
    else:
        p.integral(0, 2, 1)        # the first counter
    p.integral(0, 3, 1)            # the first lsn
    p.integral(0, 5, len(segments), 32)
    for i, seg in enumerate(segments):
        if i > 0:
            p.integral(1, 3, 1)    # counter step
            p.boolean(seg.get("from_last_valid", False))
            if not seg.get("from_last_valid", False):
                p.integral(0, 15, 5, 32)  # PickLsn: next
        p.integral(0, 6, len(seg["entries"]), 32)
        for kind, payload, gap in seg["entries"]:
            p.integral(0, 255, (kind << 2) | (3 if gap else 0), 8)
            if gap:
                p.integral(0, 15, PICK_GAP, 32)
                p.integral(1, 3, gap)
            p.integral(0, 40, len(payload))
            p.data(payload)
            if kind == LYING_LENGTH:
                p.integral(0, 2**32 - 1, 100, 32)  # length + 101: past the end
            elif kind == BAD_CRC:
                p.integral(1, 2**32 - 1, 1, 32)
        tail, n = seg.get("tail", (TAIL_NONE, 0))
        p.integral(0, 7, tail, 32)
        if tail == TAIL_CUT:
            size = sum(16 + len(e[1]) for e in seg["entries"])
            p.integral(1, size, n)
        elif tail == TAIL_ZEROS:
            p.integral(1, 40, n)
    mode, n = after
    p.integral(0, 7, mode, 32)
    if mode == AFTER_MAX:
        p.integral(0, 3, n)
    elif mode == AFTER_NEAR:
        valid = sum(1 for s in segments for e in s["entries"] if e[0] >= VALID and e[1])
        p.integral(0, valid + 1, n)
    p.integral(1, 32, len(append))
    p.data(append)
    p.integral(0, 2**64 - 1, release)
    return p.input()


def valid(*payloads):
    return [(VALID, p, 0) for p in payloads]


SEEDS = {
    # Three segments, lsns 1 to 5, all replayed.
    "whole-three-segments": encode([
        {"entries": valid(b"one", b"two")},
        {"entries": valid(b"three", b"four")},
        {"entries": valid(b"five")},
    ], release=3),
    # The same with preallocated zeros after the entries, a spare left
    # behind and a copy of the first segment under a 19-digit name; lsns up
    # to 2 are in SQLite already.
    "whole-zeros-spare-decoy": encode([
        {"entries": valid(b"one", b"two", b"three"), "tail": (TAIL_ZEROS, 40)},
        {"entries": valid(b"four", b"five"), "tail": (TAIL_ZEROS, 7)},
        {"entries": []},
    ], after=(AFTER_NEAR, 2), flags=FLAG_SPARE | FLAG_PREALLOCATE | FLAG_DECOY, release=5),
    # The last entry cut short: a torn tail, lsns 1 and 2 replayed.
    "torn-tail-cut": encode([
        {"entries": valid(b"one", b"two", b"three, cut short"), "tail": (TAIL_CUT, 9)},
    ]),
    # A bad CRC at the end of the first segment, and a second segment that
    # goes on from the last valid lsn: an earlier Open's torn tail.
    "torn-tail-then-next-segment": encode([
        {"entries": valid(b"one", b"two") + [(BAD_CRC, b"three, torn", 0)]},
        {"entries": valid(b"three", b"four"), "from_last_valid": True},
    ]),
    # A bad CRC in the middle of the first segment, with a later segment
    # going on after it: acknowledged entries lost, Corruption.
    "corrupt-middle": encode([
        {"entries": valid(b"one") + [(BAD_CRC, b"two", 0)] + valid(b"three")},
        {"entries": valid(b"four")},
    ]),
    # lsns 3 and 4 missing between the segments, held by SQLite (after_lsn 4).
    "gap-below-after-lsn": encode([
        {"entries": valid(b"one", b"two")},
        {"entries": [(VALID, b"five", 2)] + valid(b"six")},
    ], after=(AFTER_NEAR, 4)),
    # A length past the end of the file in the last segment's last entry.
    "length-past-end": encode([
        {"entries": valid(b"one")},
        {"entries": valid(b"two") + [(LYING_LENGTH, b"three", 0)]},
    ]),
    # Regressions (tests/broker/commit_log_test.cpp has their unit tests):
    # a segment numbered 2^64-1, after which Open started segment 0 ...
    "regression-counter-limit": encode([
        {"entries": valid(b"one")},
        {"entries": valid(b"two")},
    ], flags=FLAG_COUNTER_NEAR_MAX, counter_below_max=1),
    # ... and after_lsn 2^64-1, after which Append took lsn 0.
    "regression-after-lsn-limit": encode([], after=(AFTER_MAX, 0)),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
