"""The restore rules as pure functions: no Dovecot, no root, no files."""

from __future__ import annotations

import pytest

from ims.archive.records import (UID_MAX, ArchiveHeader, FolderRecord, ListedMessage,
                                 MessageRecord, RecordError)
from ims.errors import UsageError
from ims.restore.chain import order_chain
from ims.restore.plan import (Action, Placement, Source, plan_folder, plan_merge,
                              plan_message_source, restored_modseq, restored_next_uid)
from ims.store.base import LiveFolder

GONE = LiveFolder(exists=False, pristine=True)
PRISTINE = LiveFolder(exists=True, pristine=True)
LIVE = LiveFolder(exists=True, pristine=False)


def state(next_uid: int | None = 10, uids=(1, 2, 5), modseq: int | None = 42,
          unchanged: float | None = None) -> FolderRecord:
    if unchanged is not None:
        return FolderRecord("p", "u", "Work", unchanged, None, None, None, (), None)
    return FolderRecord("p", "u", "Work", None, 1700000000, next_uid, "ab" * 16, ("$Forwarded",),
                        tuple(ListedMessage(f"k{uid}", uid, "S", ()) for uid in uids), modseq)


# -- rule 1, rule 2, rule 3 per folder ----------------------------------------------------------

@pytest.mark.parametrize("live", [GONE, PRISTINE])
def test_rule1_gone_or_pristine_folder_comes_back_whole_above_its_old_uids(live):
    plan = plan_folder(state(), live, has_full=True, new_sibling=False, uid_margin=1000, now=0)
    assert plan.action is Action.WHOLE and not plan.into_sibling
    assert plan.whole.uidvalidity == 1700000000 and plan.whole.guid == "ab" * 16
    assert plan.whole.next_uid == 10 + 1000
    assert plan.whole.modseq == 43                # above the recorded HIGHESTMODSEQ 42


def test_rule1_next_uid_is_above_the_highest_archived_uid_when_the_header_lags():
    lagging = state(next_uid=3, uids=(1, 2, 7))
    assert restored_next_uid(lagging, 0) == 8
    assert restored_next_uid(lagging, 100) == 108
    assert restored_next_uid(state(next_uid=UID_MAX), 100_000) == UID_MAX


def test_rule1_modseq_floor_grows_with_the_clock_so_a_second_restore_is_above_the_first():
    first, second = restored_modseq(42, 1_800_000_000), restored_modseq(42, 1_800_000_000.5)
    assert second > first > 42
    assert restored_modseq(10**15, 0) == 10**15 + 1
    assert restored_modseq(2**62, 0) < 2**53            # garbage cannot reach the 63-bit end


def test_rule2_live_folder_is_merged_and_minus_n_makes_a_whole_sibling():
    assert plan_folder(state(), LIVE, has_full=True, new_sibling=False).action is Action.MERGE
    sibling = plan_folder(state(), LIVE, has_full=True, new_sibling=True, uid_margin=1000)
    assert sibling.action is Action.WHOLE and sibling.into_sibling
    assert sibling.whole.next_uid == 10          # a new folder: no margin needed


@pytest.mark.parametrize("live", [GONE, PRISTINE, LIVE])
def test_rule3_without_a_full_backup_a_folder_never_comes_back_whole(live):
    plan = plan_folder(state(), live, has_full=False, new_sibling=False)
    assert plan.action is Action.MERGE and plan.whole is None
    if live is not LIVE:
        assert "no full backup" in plan.note


def test_unchanged_folder_without_its_earlier_state_is_skipped_with_a_reason():
    plan = plan_folder(state(unchanged=1.0), GONE, has_full=False, new_sibling=False)
    assert plan.action is Action.SKIP and "unchanged" in plan.note


# -- rule 2 per message, under the lock -----------------------------------------------------------

def test_merge_new_already_there_adopted_and_stale_line():
    steps, next_uid = plan_merge(["new", "there", "orphan-file", "stale-line"],
                                 listed={"there", "stale-line"},
                                 on_disk={"there", "orphan-file"}, next_uid=20,
                                 check_existing=True)
    assert [s.placement for s in steps] == [Placement.NEW, Placement.ALREADY_THERE,
                                            Placement.ADOPT, Placement.NEW]
    assert [s.uid for s in steps] == [20, None, 21, 22]
    assert [s.drop_stale_line for s in steps] == [False, False, False, True]
    assert next_uid == 23


def test_merge_with_minus_i_copies_what_is_there_under_a_new_uid():
    steps, next_uid = plan_merge(["there"], listed={"there"}, on_disk={"there"}, next_uid=5,
                                 check_existing=False)
    assert steps[0].placement is Placement.COPY and steps[0].uid == 5 and next_uid == 6


def test_merge_same_key_twice_in_a_batch_lands_once():
    steps, _ = plan_merge(["a", "a"], listed=set(), on_disk=set(), next_uid=1,
                          check_existing=True)
    assert [s.placement for s in steps] == [Placement.NEW, Placement.ALREADY_THERE]


def test_message_sources():
    assert plan_message_source("a", False, "", {}, False) is Source.DATA
    assert plan_message_source("a", True, "a", {}, True) is Source.INVALID
    assert plan_message_source("b", True, "a", {"a"}, False) is Source.LINK
    assert plan_message_source("b", True, "a", set(), True) is Source.FETCH
    assert plan_message_source("b", True, "a", set(), False) is Source.UNRESOLVED


# -- chain rules -----------------------------------------------------------------------------------

def header(created: int, since: float | None = None, names=("/",), ident: str | None = None):
    return ArchiveHeader(created=created, since=since, blocking_factor=20, names=tuple(names),
                         archive_id=ident)


def test_chain_in_order_with_a_full_head():
    order = order_chain([("full", header(100)), ("i1", header(200, 100)),
                         ("i2", header(300, 150))], allow_gaps=False)
    assert order.order == [0, 1, 2] and order.has_full and order.notes == []


def test_chain_given_out_of_order_is_put_in_order_and_said():
    order = order_chain([("i1", header(200, 100)), ("full", header(100))], allow_gaps=False)
    assert order.order == [1, 0] and order.has_full
    assert "not given oldest first" in order.notes[0] and order.notes[0].index("full") < \
        order.notes[0].index("i1")


def test_chain_gap_is_refused_naming_the_interval_unless_allowed():
    archives = [("full", header(100)), ("i2", header(300, 250))]
    with pytest.raises(UsageError) as exc:
        order_chain(archives, allow_gaps=False)
    assert "full" in str(exc.value) and "i2" in str(exc.value) and "--allow-gaps" in str(exc.value)
    assert "1970-01-01 00:01:40" in str(exc.value) and "1970-01-01 00:04:10" in str(exc.value)
    order = order_chain(archives, allow_gaps=True)
    assert order.has_full and "in no archive given" in order.notes[0]


def test_chain_without_a_full_head_says_so():
    order = order_chain([("i1", header(200, 100)), ("i2", header(300, 200))], allow_gaps=False)
    assert not order.has_full and "no full backup precedes it" in order.notes[-1]


def test_chain_of_different_names_or_a_duplicate_is_not_a_chain():
    with pytest.raises(UsageError, match="not one chain"):
        order_chain([("a", header(100)), ("b", header(200, 100, names=("/primary",)))], False)
    with pytest.raises(UsageError, match="twice"):
        order_chain([("a", header(100, ident="1" * 32)), ("b", header(200, 100, ident="1" * 32))],
                    False)


# -- records: values from an archive are validated where parsed -----------------------------------

def folder_body(**changes):
    body = {"partition": "p", "user": "u", "folder": "Work", "unchanged_since": None,
            "uidvalidity": 7, "next_uid": 3, "guid": None, "keywords": [],
            "messages": [["k1", 1, "S", []], ["k2", 2, "", ["$Junk"]]]}
    body.update(changes)
    return body


@pytest.mark.parametrize("changes, words", [
    ({"uidvalidity": "7\n8"}, "uidvalidity"),
    ({"uidvalidity": 0}, "uidvalidity"),
    ({"next_uid": "x"}, "next_uid"),
    ({"messages": [["k1", -5, "S", []]]}, "uid"),
    ({"messages": [["k1", 2**40, "S", []]]}, "uid"),
    ({"messages": [["k1", 3, "S", []], ["k1", 4, "S", []]]}, "listed twice"),
    ({"messages": [["k1", 1, "S", []], ["k2", 1, "S", []]]}, "UID 1 is listed twice"),
    ({"messages": [["../x", 1, "S", []]]}, "invalid message name"),
    ({"messages": [["k1", 1, "S\n", []]]}, "flags"),
    ({"keywords": ["a b"]}, "keywords"),
    ({"guid": "not-hex"}, "guid"),
    ({"folder": "../../etc"}, "invalid folder"),
])
def test_folder_record_rejects_bad_values_naming_the_member(changes, words):
    with pytest.raises(RecordError) as exc:
        FolderRecord.decode(folder_body(**changes), "p/u/Work/.ims-folder.json at byte 512")
    assert words in str(exc.value) and "at byte 512" in str(exc.value)


def test_folder_record_round_trip():
    record = FolderRecord.decode(folder_body(), "x")
    assert FolderRecord.decode(record.encode(), "x") == record
    assert record.highest_uid() == 2


@pytest.mark.parametrize("pax, words", [
    ({"IMS.uid": "-5"}, "IMS.uid"),
    ({"IMS.uid": str(2**40)}, "IMS.uid"),
    ({"IMS.uid": "１"}, "IMS.uid"),
    ({"IMS.flags": "SX"}, "IMS.flags"),
    ({"IMS.internaldate": "yesterday"}, ""),
    ({"IMS.size": "99"}, "IMS.size"),
    ({"IMS.sha256": "00"}, "IMS.sha256"),
    ({"IMS.basename": "k2"}, "does not end with"),
])
def test_message_record_rejects_bad_values(pax, words):
    good = {"IMS.uid": "1", "IMS.flags": "S", "IMS.basename": "k1", "IMS.size": "3",
            "IMS.sha256": "a" * 64, "IMS.internaldate": "5"}
    with pytest.raises(RecordError) as exc:
        MessageRecord.decode({**good, **pax}, "p/u/Work/k1", 3, 0, False)
    assert words in str(exc.value) and "p/u/Work/k1" in str(exc.value)


def test_merge_never_hands_out_a_uid_dovecot_refuses():
    steps, next_uid = plan_merge(["a"], listed=set(), on_disk=set(), next_uid=UID_MAX,
                                 check_existing=True)
    assert steps[0].uid == UID_MAX == 2**32 - 2
    # what fits goes in; each message past the last UID is refused by name, none dropped
    # with the batch, and a message already there still counts as there
    steps, next_uid = plan_merge(["a", "b", "c", "d"], listed={"c"}, on_disk={"c"},
                                 next_uid=UID_MAX, check_existing=True)
    assert [s.placement for s in steps] == [Placement.NEW, Placement.NO_ROOM,
                                            Placement.ALREADY_THERE, Placement.NO_ROOM]
    assert steps[0].uid == UID_MAX and steps[1].uid is None and next_uid == UID_MAX + 1


def test_whole_folder_next_uid_stays_where_dovecot_can_still_hand_one_out():
    assert restored_next_uid(state(next_uid=UID_MAX - 5), 100_000) == UID_MAX
    lagging = state(next_uid=2**32 - 1, uids=(UID_MAX,))     # as the store had it
    assert restored_next_uid(lagging, 100_000) == 2**32 - 1


def test_chain_starts_at_its_last_full_backup():
    order = order_chain([("i0", header(50, 40)), ("full", header(100)), ("i1", header(200, 100))],
                        allow_gaps=False)
    assert order.order == [1, 2] and order.has_full
    assert any("not needed" in note and "i0" in note for note in order.notes)
