"""The chain merge's rename rule with version 1 incrementals: an unchanged folder there is a
member of its own (it has a place in the archive) but no message list, so it must never be
what a renamed folder's identity leads to."""

from __future__ import annotations

from ims.archive.records import FolderRecord
from ims.restore.chain import MergedChain, StateRef, _take_state


def state(folder: str, unchanged: bool) -> FolderRecord:
    return FolderRecord("primary", "amy", folder, 1700000000.0 if unchanged else None,
                        None if unchanged else 42, None if unchanged else 9, None, (),
                        None if unchanged else (), identity=7)


def test_a_renamed_folder_follows_its_last_listing_past_a_v1_unchanged_member():
    chain = MergedChain(readers=[None, None])         # two archives: places are offset x 2 + n
    _take_state(chain, state("Drafts", unchanged=False), 1024 * 2 + 0)     # the full backup
    _take_state(chain, state("Drafts", unchanged=True), 512 * 2 + 1)       # v1 incremental
    _take_state(chain, state("Renamed", unchanged=True))                   # v2, after a rename
    listed = StateRef(0, 1024, 7)
    assert chain.listed(chain.states[("primary", "amy", "Renamed")]) == listed
    assert chain.listed(chain.by_identity[("primary", "amy", 7)]) == listed
    assert chain.listed(chain.states[("primary", "amy", "Drafts")]) == listed
