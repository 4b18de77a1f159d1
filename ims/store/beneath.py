"""One system call to open a path below a directory descriptor with no link followed.

A walk of the store by directory descriptors (``O_NOFOLLOW`` at each level) costs an
``open`` and a ``close`` a level: some twelve calls to reach a folder's ``cur/`` from its
partition, on every folder and on every link to a message restored earlier.  Linux's
``openat2`` (5.6 and later) resolves the whole path in one call under
``RESOLVE_NO_SYMLINKS`` (a link at any level, the last included, is refused with ``ELOOP``)
and ``RESOLVE_BENEATH`` (nothing above the starting directory is reached: an absolute path
or a ``..`` that climbs out is refused).  Python has no binding for it; it is called
through libc's ``syscall``.

Failure behaviour: ``open_beneath`` returns ``None`` when the call cannot be used (an older
kernel, a sandbox that filters it: ``ENOSYS``/``EPERM``, remembered for the process; a
machine whose system call table numbers it differently), and the caller walks level by
level as before; a NUL in ``path`` is a ``ValueError``, as for ``os.open``; any other
failure is the ``OSError`` an ``openat`` would have raised, with ``path`` as its file name.
"""

from __future__ import annotations

import ctypes
import errno
import os

# openat2's number where the kernel's tables give it 437 (the generic table and those that
# follow it); elsewhere (alpha, MIPS and others) the walk is used
_SYS_OPENAT2 = 437
_MACHINES = {"x86_64", "i386", "i486", "i586", "i686", "aarch64", "aarch64_be", "arm64",
             "armv6l", "armv7l", "armv8l", "ppc64", "ppc64le", "ppc", "s390x", "riscv64",
             "loongarch64"}
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_NO_MAGICLINKS | _RESOLVE_NO_SYMLINKS | _RESOLVE_BENEATH


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_syscall = ctypes.CDLL(None, use_errno=True).syscall
_syscall.restype = ctypes.c_long
_usable = os.uname().machine in _MACHINES


def open_beneath(dir_fd: int, path: str, flags: int) -> int | None:
    """A descriptor of ``path`` (relative, levels joined by ``/``) below ``dir_fd``, opened
    with ``flags`` and no symbolic link followed at any level; ``None`` when the kernel
    offers no ``openat2`` here."""
    global _usable
    if not _usable:
        return None
    if "\0" in path:           # ctypes would cut the path there; os.open refuses it so
        raise ValueError("embedded null byte")
    how = _OpenHow(flags, 0, _RESOLVE)
    fd = _syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dir_fd),
                  ctypes.c_char_p(os.fsencode(path)), ctypes.byref(how),
                  ctypes.c_size_t(ctypes.sizeof(how)))
    if fd >= 0:
        return fd
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EPERM):
        _usable = False
        return None
    if code == errno.EAGAIN:        # a rename raced a ".." lookup: the walk decides
        return None
    raise OSError(code, os.strerror(code), path)
