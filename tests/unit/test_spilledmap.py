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
    reference: dict[tuple[int, int], tuple[bytes, int]] = {}
    for step in range(operations):
        key = (rng.randrange(key_space), rng.randrange(3))
        action = rng.random()
        if action < 0.45:
            value = bytes(rng.randrange(256) for _ in range(rng.choice((0, 5, 60, 5000))))
            table.put(*key, value, step)
            reference[key] = (value, step)
        elif action < 0.75:
            table.remove(*key)
            reference.pop(key, None)
        elif action < 0.85 and key in reference:
            table.set_count(*key, step + 7)
            reference[key] = (reference[key][0], step + 7)
        else:
            assert table.get(*key) == reference.get(key)
        assert len(table) == len(reference)
    for key, expected in reference.items():
        assert table.get(*key) == expected
    for key in [(k, d) for k in range(key_space) for d in range(3)]:
        if key not in reference:
            assert table.get(*key) is None


@pytest.mark.parametrize("seed", range(4))
def test_it_answers_as_a_dict_would(seed):
    table = SpilledMap(capacity=16)
    check_against_dict(table, random.Random(seed), 4000, 300)
    table.close()


def test_colliding_keys_and_removal_around_the_end(monkeypatch):
    """Every key's home is one of the last two slots: each run of entries wraps around the
    end of the array, and every removal has entries after it to move up."""
    monkeypatch.setattr(SpilledMap, "_home",
                        lambda self, key1, key2: self._size - 1 - (key1 + key2) % 2)
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
    assert table.get(1, 1) is None
    table.remove(1, 1)
    assert len(table) == 0
    with pytest.raises(KeyError):
        table.set_count(1, 1, 3)
