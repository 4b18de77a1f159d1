"""An incremental's unchanged folders as entries of their user's record (format version 2):
encoded and decoded back, every value checked where the record is parsed."""

from __future__ import annotations

import pytest

from ims.archive.records import (IDENTITY_MAX, FolderRecord, RecordError, UnchangedFolder,
                                 UserRecord)


def user(**fields) -> dict:
    body = {"partition": "primary", "user": "amy", "group": "g", "uid": 8, "gid": 12,
            "subscriptions": ["Sent"], "folders": ["INBOX", "Sent", "Work/2024"],
            "excluded_folders": [], "unchanged_since": 1700000000.0,
            "unchanged": [["Sent", 4242], ["Work/2024", None]]}
    body.update(fields)
    return body


def test_unchanged_folders_round_trip_and_read_as_unchanged_folder_states():
    record = UserRecord.decode(user(), "user amy")
    assert record.unchanged == (UnchangedFolder("Sent", 4242), UnchangedFolder("Work/2024", None))
    assert UserRecord.decode(record.encode(), "again") == record
    states = record.unchanged_states()
    assert states == [
        FolderRecord("primary", "amy", "Sent", 1700000000.0, None, None, None, (), None,
                     identity=4242),
        FolderRecord("primary", "amy", "Work/2024", 1700000000.0, None, None, None, (), None)]
    assert all(state.unchanged and state.messages is None for state in states)


def test_a_user_without_unchanged_folders_writes_neither_field():
    record = UserRecord("primary", "amy", "g", 8, 12, (), ("INBOX",))
    assert "unchanged" not in record.encode() and "unchanged_since" not in record.encode()
    assert UserRecord.decode(record.encode(), "amy").unchanged == ()
    assert UserRecord.decode(user(unchanged=None, unchanged_since=None), "amy").unchanged == ()


@pytest.mark.parametrize("fields, said", [
    ({"unchanged": [["../../pwned", 1]]}, "invalid folder '../../pwned' in unchanged"),
    ({"unchanged": [[".hidden", 1]]}, "invalid folder"),
    ({"unchanged": [["a\nb", 1]]}, "invalid folder"),
    ({"unchanged": [["", 1]]}, "invalid folder"),
    ({"unchanged": [[7, 1]]}, "invalid folder 7"),
    ({"unchanged": [["Sent", 1], ["Sent", 2]]}, "'Sent' is listed twice in unchanged"),
    ({"unchanged": [["Nowhere", 1]]}, "'Nowhere' is not among the user's folders"),
    ({"unchanged": "Sent"}, "unchanged is not a list"),
    ({"unchanged": {"Sent": 1}}, "unchanged is not a list"),
    ({"unchanged": ["Sent"]}, "is not [folder, identity]"),
    ({"unchanged": [["Sent"]]}, "is not [folder, identity]"),
    ({"unchanged": [["Sent", 1, 2]]}, "is not [folder, identity]"),
    ({"unchanged": [{"folder": "Sent"}]}, "is not [folder, identity]"),
    ({"unchanged": [["Sent", "x"]]}, "identity of unchanged folder 'Sent'"),
    ({"unchanged": [["Sent", -1]]}, "identity of unchanged folder 'Sent'"),
    ({"unchanged": [["Sent", IDENTITY_MAX + 1]]}, "identity of unchanged folder 'Sent'"),
    ({"unchanged": [["Sent", 1.5]]}, "identity of unchanged folder 'Sent'"),
    ({"unchanged": [["Sent", True]]}, "identity of unchanged folder 'Sent'"),
    ({"unchanged_since": None}, "unchanged_since None is not a time"),
    ({"unchanged_since": "yesterday"}, "unchanged_since 'yesterday' is not a time"),
    ({"unchanged_since": float("inf")}, "is not a time"),
    ({"unchanged_since": -5}, "is not a time"),
])
def test_a_bad_unchanged_entry_makes_the_user_record_invalid(fields, said):
    with pytest.raises(RecordError) as caught:
        UserRecord.decode(user(**fields), "user amy")
    assert said in str(caught.value) and str(caught.value).startswith("user amy: ")
