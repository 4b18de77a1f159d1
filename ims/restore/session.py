"""The one place that builds a restore: store writer, readers, engine — for ``imsrestore``,
``imsasm`` (NetWorker's recover) and Bacula's restore (``imsrestore`` from bpipe).

Each entry point returns the engine's ``RestoreReport`` and the header of the archive it
restored (for references files); the commands only parse options and print.

Failure behaviour: ``ConfigError`` (exit 2) for a store configuration that cannot be used;
``UsageError`` (exit 2) for a chain that is not one or a name not in the archive;
``ArchiveDamaged`` (exit 4) for an archive whose header or trailer cannot be read; the rest
is in the report.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterable

from ims.archive.prefetch import PrefetchReader
from ims.archive.reader import ArchiveReader
from ims.archive.records import ArchiveHeader, RecordError, TrailerRecord
from ims.config import Config
from ims.errors import ArchiveDamaged, ConfigError, UsageError
from ims.restore import chain as chains
from ims.restore.engine import (Decide, Engine, Fetch, RestoreOptions, RestoreReport,
                                feed_archive, feed_indexed, fetch_by_name, indexed_folders)
from ims.restore.refs import feed_refs
from ims.restore.selection import Pattern, accept_user_forms, not_in_archive, selects_users_only
from ims.store.maildir import LayoutError, MaildirStore
from ims.store.maildir_write import MaildirWriter, Owner


@dataclass(frozen=True)
class WriterSettings:
    lock_timeout: float = 60.0
    sync: bool = False
    batch: int = 500


def open_store(config: Config) -> MaildirStore:
    try:
        return MaildirStore(config.msg.partitions(), config.msg.get("store.maildir.layout") or "")
    except LayoutError as exc:
        raise ConfigError(f"{config.msg.path}: store.maildir.layout: {exc}") from None


def store_writer(config: Config, store: MaildirStore, settings: WriterSettings) -> MaildirWriter:
    uid, gid = config.msg.get("local.store.uid"), config.msg.get("local.store.gid")
    owner = Owner(int(uid), int(gid)) if uid and gid and uid.isdigit() and gid.isdigit() else None
    return MaildirWriter(store, owner, settings.lock_timeout, settings.sync, settings.batch)


def check_partition(store: MaildirStore, partition: str | None) -> None:
    if partition is not None and partition not in store.partition_dirs:
        raise UsageError(f"--partition {partition}: not a configured partition"
                         f" ({', '.join(store.partition_dirs)})")


Emit = Callable[[str], None] | None


def check_names(names: list[str], patterns: tuple[Pattern, ...],
                users: Iterable[tuple[str, str, str]],
                folders: Iterable[tuple[str, str, str, str]], where: str) -> None:
    """Every NAME must select something (users as (partition, group, user), folders as
    (partition, group, user, folder)): checked before anything is restored.  Each iterable
    is walked once (at a million messages the folders are some 70,000)."""
    unmatched = dict(enumerate(patterns))
    for user in users:
        for i, p in list(unmatched.items()):
            if p.folder is None and p.user_matches(*user):
                del unmatched[i]
    if any(p.folder is not None for p in unmatched.values()):
        for folder in folders:
            for i, p in list(unmatched.items()):
                if p.folder is not None and p.user_matches(*folder[:3]) \
                        and p.folder_matches(folder[3]):
                    del unmatched[i]
            if not unmatched:
                break
    missing = [names[i] for i in sorted(unmatched)]
    if missing:
        raise UsageError(not_in_archive(missing, where, hint=False))


def with_user_forms(names: list[str] | None, options: RestoreOptions,
                    trailers: list[TrailerRecord | None]) -> tuple[RestoreOptions, list[str]]:
    """``/P/user1`` taken as ``/P/user/user1`` where the archives' trailers recorded a user
    user1 and no group user1 (``accept_user_forms``), and the notes to print."""
    if not names:
        return options, []
    recorded = [(u.partition, u.group, u.user) for t in trailers if t is not None for u in t.users]
    patterns, notes = accept_user_forms(names, options.patterns, recorded)
    return dataclasses.replace(options, patterns=patterns), notes


def restore_archive(writer: MaildirWriter, reader: ArchiveReader | PrefetchReader,
                    options: RestoreOptions, decide: Decide, emit: Emit = None,
                    names: list[str] | None = None) -> tuple[RestoreReport, ArchiveHeader]:
    """One archive, from a file (read by the trailer's index when only some users are
    selected) or a stream (in order)."""
    header = reader.read_header()
    order = chains.order_chain([(reader.device_name, header)], allow_gaps=True)
    trailer = None
    if isinstance(reader, ArchiveReader):
        # the folders' index serves NAMEs of folders and a restore of some users; a whole
        # archive (no NAME, or /) read in order needs the users' entries alone, for its
        # NAMEs' check (held, the index had been some 4 MiB of the peak at 1,000,000 messages)
        trailer = reader.locate_trailer(
            keep_index=any(p != Pattern() for p in options.patterns), keep_users=True)
    options, name_notes = with_user_forms(names, options, [trailer])
    if names and trailer is not None:
        check_names(names, options.patterns,
                    ((u.partition, u.group, u.user) for u in trailer.users),
                    indexed_folders(reader, trailer, options.patterns), reader.device_name)
    if trailer is not None and selects_users_only(options.patterns) and not options.list_only:
        feed = feed_indexed(reader, trailer)
        fetch: Fetch | None = fetch_by_name(reader, trailer)
    else:
        # read in order, the index serves only a link whose first copy must be fetched (not
        # there when its link comes): it is located again then, not held through the run (at
        # 1,000,000 messages some 5 MiB), nor built again for the trailer verified at the end
        fetch = fetch_by_name(reader) if trailer is not None else None
        trailer = None
        if isinstance(reader, ArchiveReader):
            reader.keep_trailer_index = False
            if reader.seekable and not options.list_only:
                return _restore_file_in_order(writer, reader, header, options, decide, emit,
                                              fetch, order, name_notes)
        feed = feed_archive(reader)
    engine = Engine(writer, options, decide, has_full=order.has_full,
                    backup_created=header.created, fetch=fetch, emit=emit,
                    forget_linked=header.options.get("links_counted") is True)
    engine.report.notes.extend(order.notes + name_notes)
    return engine.run(feed), header


def _restore_file_in_order(writer: MaildirWriter, reader: ArchiveReader, header: ArchiveHeader,
                           options: RestoreOptions, decide: Decide, emit: Emit,
                           fetch: Fetch | None, order: chains.ChainOrder,
                           name_notes: list[str]) -> tuple[RestoreReport, ArchiveHeader]:
    """A whole archive file read in order, as a stream is: a child process reads it from
    its start, checks every digest and the trailer, and hands the members over while this
    one writes (one process had done both: 1.6x the time of ``tar -xf`` at 1,000,000
    messages).  This process reads the file by offset only, to fetch a link's first copy."""
    reader.read_by_offset_only()        # its buffer freed before the child is forked
    prefetch = PrefetchReader(reader.fd, reader.device_name, reader.blocking_factor,
                              rewind=True, located_by=reader)
    engine = Engine(writer, options, decide, has_full=order.has_full,
                    backup_created=header.created, fetch=fetch, emit=emit,
                    forget_linked=header.options.get("links_counted") is True)
    engine.report.notes.extend(order.notes + name_notes)
    try:
        again = prefetch.read_header()
        if again != header:
            raise ArchiveDamaged(f"{reader.device_name}: the archive's header changed while the"
                                 " archive was read")
        return engine.run(feed_archive(prefetch)), header
    finally:
        prefetch.close()


def restore_chain(writer: MaildirWriter, readers: list[ArchiveReader], options: RestoreOptions,
                  decide: Decide, allow_gaps: bool, emit: Emit = None,
                  names: list[str] | None = None) -> tuple[RestoreReport, ArchiveHeader]:
    """A full backup and its incrementals, checked and merged (``ims.restore.chain``)."""
    headers = chains.check_headers(readers)
    for reader in readers:
        reader.require_seekable("a chain restore (several -f)")
    order = chains.order_chain(headers, allow_gaps)
    ordered = [readers[i] for i in order.order]
    options, name_notes = with_user_forms(names, options, [_trailer_or_none(r) for r in ordered])
    merged = chains.merge(ordered, options.patterns)
    if names:
        users = [(u.partition, u.group, u.user) for u in merged.users]
        users += [(u.partition, u.group, u.user) for u in merged.earlier_users.values()]
        groups = {(u[0], u[2]): u[1] for u in users}
        check_names(names, options.patterns, users,
                    ((p, groups.get((p, u), ""), u, f) for p, u, f in merged.states),
                    " ".join(r.device_name for r in ordered))
    last = headers[order.order[-1]][1]
    engine = Engine(writer, options, decide, has_full=order.has_full,
                    backup_created=last.created, fetch=chains.fetch_from_chain(merged), emit=emit)
    engine.report.notes.extend(order.notes + name_notes)
    return engine.run(chains.feed_chain(merged)), last


def _trailer_or_none(reader: ArchiveReader) -> TrailerRecord | None:
    """A chain archive's trailer for reading NAMEs; a damaged one is named when the archive
    is read in full (``chains.merge``), so here it only lists no user."""
    try:
        return reader.locate_trailer()
    except RecordError:
        return None


def restore_refs(writer: MaildirWriter, reader: ArchiveReader, entries: list[dict],
                 options: RestoreOptions, decide: Decide) -> tuple[RestoreReport, ArchiveHeader]:
    """Complete a pipe restore: each listed message from the copy it needs."""
    header = reader.read_header()
    trailer = reader.locate_trailer()
    if trailer is None:
        raise ArchiveDamaged(f"{reader.device_name}: no trailer: -r needs the complete archive file")
    plain = RestoreOptions(ignore_existing=options.ignore_existing, uid_margin=options.uid_margin)
    engine = Engine(writer, plain, decide, has_full=True, backup_created=header.created,
                    fetch=fetch_by_name(reader, trailer))
    report = engine.run(feed_refs(entries))
    for entry in report.unresolved:
        report.skipped.append(f"{entry['logical']}: {entry['needs']} is not in {reader.device_name}")
    report.unresolved = []
    return report, header
