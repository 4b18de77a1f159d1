"""The compact map of shared messages (ims/spilledmap.py): it answers as a dict would
through inserts, lookups, count updates and removals in any order, across growth, with keys
that collide (removal moves the entries after a hole, also around the end of the array),
with long values, and with no usable temporary directory (the values stay in memory)."""

from __future__ import annotations

import os
import random
import tracemalloc

import pytest

from ims import spilledmap
from ims.errors import DeviceError
from ims.spilledmap import SpilledMap


def check_against_dict(table: SpilledMap, rng: random.Random, operations: int,
                       key_space: int) -> None:
    reference: dict[int, tuple[bytes, int]] = {}
    for step in range(operations):
        key = rng.randrange(key_space) * 3 + rng.randrange(3)
        action = rng.random()
        if action < 0.45:
            value = bytes(rng.randrange(256) for _ in range(rng.choice((0, 5, 60, 5000))))
            table.put(key, value, step)
            reference[key] = (value, step)
        elif action < 0.75:
            table.remove(key)
            reference.pop(key, None)
        elif action < 0.85 and key in reference:
            table.set_count(key, step + 7)
            reference[key] = (reference[key][0], step + 7)
        else:
            assert table.get(key) == reference.get(key)
        assert len(table) == len(reference)
    for key, expected in reference.items():
        assert table.get(key) == expected
    for key in range(key_space * 3):
        if key not in reference:
            assert table.get(key) is None


@pytest.mark.parametrize("seed", range(4))
def test_it_answers_as_a_dict_would(seed):
    table = SpilledMap(capacity=16)
    check_against_dict(table, random.Random(seed), 4000, 300)
    table.close()


def test_colliding_keys_and_removal_around_the_end(monkeypatch):
    """Every key's home is one of the last two slots: each run of entries wraps around the
    end of the array, and every removal has entries after it to move up."""
    monkeypatch.setattr(SpilledMap, "_home",
                        lambda self, key: self._size - 1 - key % 2)
    table = SpilledMap(capacity=64)
    check_against_dict(table, random.Random(9), 3000, 20)


def test_without_a_temporary_directory_values_stay_in_memory(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(2, "No such file or directory")
    monkeypatch.setattr(spilledmap.tempspace, "unnamed_file", refuse)
    table = SpilledMap()
    assert table._memory is not None
    check_against_dict(table, random.Random(5), 2000, 100)


def test_unknown_keys():
    table = SpilledMap()
    assert table.get(1) is None
    table.remove(1)
    assert len(table) == 0
    with pytest.raises(KeyError):
        table.set_count(1, 3)


def test_the_largest_keys_and_zero_are_keys_like_any_other():
    table = SpilledMap(capacity=16)
    for key in (0, (1 << 64) - 1, 1 << 63):
        table.put(key, str(key).encode(), 2)
    assert [table.get(key) for key in (0, (1 << 64) - 1, 1 << 63)] == [
        (b"0", 2), (str((1 << 64) - 1).encode(), 2), (str(1 << 63).encode(), 2)]
    table.remove(0)
    assert table.get(0) is None and table.get(1 << 63) == (str(1 << 63).encode(), 2)


def _fill_to_the_brink(table: SpilledMap) -> int:
    """Entries up to the last one before the table doubles; the next key."""
    key = 0
    while 4 * (len(table) + 1) <= 3 * table._size:
        table.put(key * 7919, b"v%d" % key, key % 5)
        key += 1
    return key


def test_the_old_and_the_new_slots_are_never_held_together():
    """Doubling writes the old slots to the temporary file and frees them before the new
    array is made: the moment's peak is the new array and a chunk, not both arrays (and
    not a zeroed bytes object of the new array's size besides)."""
    tracemalloc.start()             # before the old array is made: its freeing counts
    try:
        table = SpilledMap(capacity=1 << 15)
        key = _fill_to_the_brink(table)
        old_bytes = len(table._slots) * 8
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        table.put(key * 7919, b"v%d" % key, 1)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert len(table._slots) * 8 == 2 * old_bytes
    # the old array freed, the new one made and a chunk read back: the old one more, and
    # the new one's size above it with both held (``before`` counts the old one)
    assert peak < old_bytes + old_bytes // 2, (peak, old_bytes)
    for k in range(key + 1):
        assert table.get(k * 7919) == (b"v%d" % k, k % 5 if k < key else 1)


def test_a_doubling_the_file_refuses_holds_both_arrays_and_loses_nothing(monkeypatch):
    table = SpilledMap(capacity=64)
    key = _fill_to_the_brink(table)
    real_pwrite = os.pwrite

    def refuse_the_slots(fd, data, offset):
        if len(data) >= 8 * 64:                       # the dump, not a string
            raise OSError(28, "No space left on device")
        return real_pwrite(fd, data, offset)
    monkeypatch.setattr(spilledmap.os, "pwrite", refuse_the_slots)
    table.put(key * 7919, b"last", 2)
    assert table._size == 128
    assert table.get(key * 7919) == (b"last", 2)
    for k in range(key):
        assert table.get(k * 7919) == (b"v%d" % k, k % 5)


def test_short_reads_give_the_whole_value_or_an_error(monkeypatch):
    table = SpilledMap()
    value = bytes(range(256)) * 40                      # 10,240 bytes: several reads
    table.put(1, value, 3)
    table.put(2, b"hello", 1)
    real = os.pread
    monkeypatch.setattr(spilledmap.os, "pread",
                        lambda fd, n, off: real(fd, min(n, 4000), off))   # short, not EOF
    assert table.get(1) == (value, 3)
    monkeypatch.setattr(spilledmap.os, "pread", lambda fd, n, off: b"")  # nothing there
    with pytest.raises(DeviceError):
        table.get(2)
