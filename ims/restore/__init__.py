"""Restoring archives into the live store: selection -> plan -> apply.

- ``selection``: which users and folders (logical names, user map, target partition);
- ``plan``: pure functions, the restore rules: per folder whole / merge / skip, per message
  new / already there / hard link, and the UID and modseq margins of a folder restored whole;
- ``chain``: a full backup and its incrementals checked (order, gaps, a full at the head) and
  merged into the last state, fed to the engine like one archive;
- ``engine``: applies the plans to a store writer (``ims.store.base.StoreWriter``) and counts
  what landed;
- ``refs``: references files, for links a restore from a pipe could not resolve;
- ``session``: the one place that builds store, readers and engine for ``imsrestore``,
  ``imsasm`` and Bacula's restore.
"""
