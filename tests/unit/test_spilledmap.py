"""The compact map of shared messages (ims/spilledmap.py): it answers as a dict would
through inserts, lookups, count updates and removals in any order, across growth, with keys
that collide (removal moves the entries after a hole, also around the end of the array),
with long values, and with no usable temporary directory (the values stay in memory)."""

from __future__ import annotations

import random

import pytest

from ims import spilledmap
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
    monkeypatch.setattr(spilledmap.tempfile, "TemporaryFile", refuse)
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
