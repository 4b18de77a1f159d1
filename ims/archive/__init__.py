"""The archive format (a POSIX pax tar stream) and its devices.

``format`` builds and parses headers, ``writer`` writes a stream in records with a trailer,
``device`` opens the output.  The format is specified in docs/archive-format.md.
"""
