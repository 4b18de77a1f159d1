"""The restore's table of first copies counts the sights of each shared message itself
(ims/restore/firstcopies.py): a first copy is forgotten after as many sights as its inode
had links, whether its folder is still in progress or settled, and a name that shares its
hash with another never counts or forgets the other's entry."""

from __future__ import annotations

from ims.restore import firstcopies
from ims.restore.firstcopies import FirstCopies


def table() -> FirstCopies:
    return FirstCopies(lambda place: place.encode(), lambda packed: packed.decode())


def test_a_settled_first_copy_is_forgotten_at_its_last_link_not_before():
    copies = table()
    copies["p/u/INBOX/a"] = "place-a"
    copies.settle()
    copies.sighted("p/u/INBOX/a", 3)          # the first copy and one link: 2 of 3
    assert copies.get("p/u/INBOX/a") == "place-a"
    copies.sighted("p/u/INBOX/a", 3)
    assert copies.get("p/u/INBOX/a") is None
    assert len(copies) == 0


def test_sights_in_the_open_folder_carry_over_when_it_settles():
    copies = table()
    copies["p/u/INBOX/b"] = "place-b"
    copies.sighted("p/u/INBOX/b", 4)          # a link in the same folder: 2 of 4
    copies.settle()
    copies.sighted("p/u/INBOX/b", 4)          # 3 of 4
    assert copies.get("p/u/INBOX/b") == "place-b"
    copies.sighted("p/u/INBOX/b", 4)
    assert "p/u/INBOX/b" not in copies


def test_an_open_first_copy_with_two_links_goes_at_once():
    copies = table()
    copies["p/u/INBOX/c"] = "place-c"
    copies.sighted("p/u/INBOX/c", 2)
    assert "p/u/INBOX/c" not in copies
    copies.settle()
    assert len(copies) == 0


def test_a_name_of_the_same_hash_neither_counts_nor_forgets_the_other(monkeypatch):
    monkeypatch.setattr(firstcopies, "_key", lambda encoded: 7)
    copies = table()
    copies["p/u/INBOX/first"] = "place-first"
    copies.settle()
    copies.sighted("p/u/INBOX/other", 2)      # same key, another name: not remembered
    assert copies.get("p/u/INBOX/first") == "place-first"
    assert copies.get("p/u/INBOX/other") is None
    copies.sighted("p/u/INBOX/first", 2)
    assert copies.get("p/u/INBOX/first") is None


def test_a_name_never_remembered_is_ignored():
    copies = table()
    copies.sighted("p/u/INBOX/nothing", 2)
    assert len(copies) == 0


def test_a_link_reads_its_settled_first_copy_once(monkeypatch):
    """Is it there, where is it, one sight more: the engine's three lookups of a link read
    the table's file once; a name not settled is not read again either, until a settle."""
    copies = table()
    copies["p/u/INBOX/d"] = "place-d"
    copies.settle()
    reads: list[int] = []
    real_get = copies._settled.get
    monkeypatch.setattr(copies._settled, "get", lambda key: reads.append(key) or real_get(key))
    assert "p/u/INBOX/d" in copies
    assert copies["p/u/INBOX/d"] == "place-d"
    copies.sighted("p/u/INBOX/d", 3)
    assert len(reads) == 1
    assert copies.get("p/u/INBOX/d") == "place-d"     # changed by the sight: read again
    assert len(reads) == 2
    assert copies.get("p/u/INBOX/e") is None and "p/u/INBOX/e" not in copies
    assert len(reads) == 3
    copies["p/u/INBOX/e"] = "place-e"
    copies.settle()
    assert copies.get("p/u/INBOX/e") == "place-e"     # settled since: read again
