"""The chain's frozen table of shared messages' data members: every hash the merge saw is
found with its offset (negative hashes too: Python's ``hash`` of a name may be), a hash it
did not see gives the caller's default, and a hash two names shared stays the -1 the merge
wrote (so that neither name is taken for the other)."""

from __future__ import annotations

import random

from ims.restore.chain import SharedOffsets


def test_every_hash_is_found_and_no_other():
    rng = random.Random(12)
    found = {rng.randrange(-(1 << 63), 1 << 63): rng.randrange(0, 1 << 40) for _ in range(5000)}
    found[-(1 << 63)] = 512                  # the extremes of a signed 64-bit hash
    found[(1 << 63) - 1] = 1024
    found[rng.randrange(-(1 << 63), 1 << 63)] = -1          # two names of one hash
    table = SharedOffsets(found)
    for name_hash, offset in found.items():
        assert table.get(name_hash, -7) == offset
    absent = [rng.randrange(-(1 << 63), 1 << 63) for _ in range(2000)]
    for name_hash in absent:
        if name_hash not in found:
            assert table.get(name_hash, -7) == -7


def test_an_empty_table_finds_nothing():
    table = SharedOffsets({})
    assert table.get(0, -1) == -1
    assert table.get((1 << 63) - 1, -3) == -3
