"""Changes to protected files that the syscall tracepoints cannot judge.

unlink, rename, truncate and chmod name a file by path; a BPF program at a
tracepoint cannot resolve a path to an inode, and this kernel refuses the LSM
hooks that could. fanotify can: inode marks on every protected file report
each change with the pid that made it. That is detection, after the fact: the
change has happened when it is reported (``detected_not_prevented``).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Iterable

from ._native import ffi, lib

WATCHED = lib.FAN_MODIFY | lib.FAN_ATTRIB | lib.FAN_MOVE_SELF | lib.FAN_DELETE_SELF
# A protected directory: its entries changing too (direct children only:
# fanotify inode marks do not reach further down).
WATCHED_DIR = (WATCHED | lib.FAN_ONDIR | lib.FAN_EVENT_ON_CHILD | lib.FAN_CREATE | lib.FAN_DELETE
               | lib.FAN_MOVED_FROM | lib.FAN_MOVED_TO)

_METADATA = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_INFO_HEADER = struct.Struct("=BBH")
_FILE_HANDLE = struct.Struct("=Ii")  # handle_bytes, handle_type

OPERATIONS = ((lib.FAN_DELETE_SELF | lib.FAN_DELETE, "delete"),
              (lib.FAN_MOVE_SELF | lib.FAN_MOVED_FROM | lib.FAN_MOVED_TO, "move"),
              (lib.FAN_CREATE, "create"), (lib.FAN_MODIFY, "modify"), (lib.FAN_ATTRIB, "attributes"))


@dataclass(frozen=True)
class Mutation:
    pid: int
    operation: str
    """delete, move, create (in a protected directory), modify (a write or
    truncate), attributes (chmod, chown, a link count change)."""
    key: object
    """What watch() was given for the file."""


def _file_handle(path: str) -> bytes:
    """The kernel's file handle for path: what fanotify reports it by."""
    buf = ffi.new("unsigned char[]", ffi.sizeof("struct file_handle") + lib.MAX_HANDLE_SZ)
    handle = ffi.cast("struct file_handle *", buf)
    handle.handle_bytes = lib.MAX_HANDLE_SZ
    mount_id = ffi.new("int *")
    if lib.name_to_handle_at(lib.AT_FDCWD, path.encode(), handle, mount_id, 0) != 0:
        err = ffi.errno
        raise OSError(err, f"name_to_handle_at({path}): {os.strerror(err)}")
    return ffi.buffer(buf, ffi.sizeof("struct file_handle") + handle.handle_bytes)[:]


class MutationWatch:
    """fanotify inode marks on the given files; read() returns what changed."""

    def __init__(self, files: Iterable[tuple[str, object]]):
        self.fd = lib.fanotify_init(
            lib.FAN_CLASS_NOTIF | lib.FAN_REPORT_FID | lib.FAN_REPORT_DIR_FID | lib.FAN_CLOEXEC | lib.FAN_NONBLOCK,
            os.O_RDONLY)
        if self.fd < 0:
            err = ffi.errno
            raise OSError(err, f"fanotify_init: {os.strerror(err)}")
        self._keys: dict[bytes, object] = {}
        try:
            for path, key in files:
                mask = WATCHED_DIR if os.path.isdir(path) else WATCHED
                if lib.fanotify_mark(self.fd, lib.FAN_MARK_ADD, mask, lib.AT_FDCWD, path.encode()) != 0:
                    err = ffi.errno
                    raise OSError(err, f"fanotify_mark({path}): {os.strerror(err)}")
                self._keys[_file_handle(path)] = key
        except BaseException:
            self.close()
            raise

    def read(self) -> list[Mutation]:
        found = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return found
            offset = 0
            while offset + _METADATA.size <= len(data):
                event_len, _, _, metadata_len, mask, _, pid = _METADATA.unpack_from(data, offset)
                key = self._key(data[offset + metadata_len: offset + event_len])
                for bits, operation in OPERATIONS:
                    if mask & bits:
                        found.append(Mutation(pid=pid, operation=operation, key=key))
                offset += event_len

    def _key(self, info: bytes) -> object:
        """The protected file an event is about: its own handle (FID), or for
        an entry of a protected directory, the directory's (DFID)."""
        found = None
        offset = 0
        while offset + _INFO_HEADER.size <= len(info):
            info_type, _, length = _INFO_HEADER.unpack_from(info, offset)
            if length == 0:
                break
            if info_type in (lib.FAN_EVENT_INFO_TYPE_FID, lib.FAN_EVENT_INFO_TYPE_DFID,
                             lib.FAN_EVENT_INFO_TYPE_DFID_NAME):
                handle = info[offset + _INFO_HEADER.size + 8: offset + length]  # after the fsid
                if len(handle) >= _FILE_HANDLE.size:
                    size = _FILE_HANDLE.unpack_from(handle)[0]
                    key = self._keys.get(handle[: _FILE_HANDLE.size + size])
                    if key is not None and (found is None or info_type == lib.FAN_EVENT_INFO_TYPE_FID):
                        found = key
            offset += length
        return found

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
