"""A forked helper process and its channel: what the backup's store reader
(``ims.readahead``) and the restore's archive reader (``ims.archive.prefetch``) share.

``HelperProcess.start(body)`` forks; the child runs ``body(channel)`` and leaves with
``os._exit`` (never running the parent's exit handlers or flushing its stdout, which may be
the archive).  ``Channel`` carries length-prefixed pickles one way and one-byte slot numbers
back; ``slots`` are shared anonymous mappings that carry message bytes without copying them
through the socket (a message larger than a slot goes in slot-sized chunks, never pickled
whole).  Frame lengths are 64-bit: a folder listing of millions of messages is one frame.
``stop()`` kills and reaps the child by its pid.

Failure behaviour: ``Channel.receive`` returns None when the other side is gone;
``take_slot`` raises EOFError then.  A send to a process that has gone raises OSError.
"""

from __future__ import annotations

import mmap
import os
import pickle
import signal
import socket
import struct
from typing import Any, Callable

from ims.signals import held

_LENGTH = struct.Struct("!Q")


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()

    def send(self, item: Any) -> None:
        payload = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        self.sock.sendall(_LENGTH.pack(len(payload)) + payload)

    def receive(self) -> tuple[bool, Any]:
        """(True, item), or (False, None) when the other side has gone."""
        head = self._exact(_LENGTH.size)
        if head is None:
            return False, None
        payload = self._exact(_LENGTH.unpack(head)[0])
        if payload is None:
            return False, None
        return True, pickle.loads(payload)

    def _exact(self, count: int) -> bytes | None:
        buffer = self._buffer
        while len(buffer) < count:
            try:
                # at most 1 MiB asked for at a time: recv allocates what it is asked for
                chunk = self.sock.recv(min(max(count - len(buffer), 1 << 16), 1 << 20))
            except ConnectionError:         # the other process died (killed, out of memory)
                return None
            if not chunk:
                return None
            buffer += chunk
        data = bytes(buffer[:count])
        del buffer[:count]
        return data

    def give_slot(self, slot: int) -> None:
        try:
            self.sock.sendall(bytes((slot,)))
        except OSError:
            pass      # the helper has finished and needs no more slots

    def slots_returned(self) -> bytes:
        """The slot numbers given back so far, without waiting (b"" when none)."""
        try:
            return self.sock.recv(256, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return b""

    def take_slot(self) -> int:
        data = self.sock.recv(1)
        if not data:
            raise EOFError("the other process went away")
        return data[0]

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class HelperProcess:
    def __init__(self, slots: int, slot_size: int) -> None:
        self.slots = [mmap.mmap(-1, slot_size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
                      for _ in range(slots)]
        self.views = [memoryview(m) for m in self.slots]
        self.pid = 0
        self.channel: Channel | None = None

    def release_above(self, slot: int, keep: int) -> None:
        """Give the pages of ``slot`` above its first ``keep`` bytes back to the system
        (``MADV_REMOVE`` frees a shared mapping's pages in both processes; they read as
        zeros when touched again): a large message must not leave its pages resident."""
        size = len(self.slots[slot])
        if keep < size:
            self.slots[slot].madvise(mmap.MADV_REMOVE, keep, size - keep)

    def start(self, body: Callable[[Channel], None]) -> Channel:
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # the child must not run the parent's Python signal handlers (they raise into a copy
        # of the parent's stack): signals are held across the fork until it has its own
        with held():
            pid = os.fork()
            if pid == 0:
                # Ctrl-C is the parent's to handle (it stops this process): a helper dying
                # first would look like a stream cut short; SIGTERM simply ends it
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if pid == 0:
            code = 0
            try:
                parent_sock.close()
                body(Channel(child_sock))
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        child_sock.close()
        self.pid = pid
        self.channel = Channel(parent_sock)
        return self.channel

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = 0
