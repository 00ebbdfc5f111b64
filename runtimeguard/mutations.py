"""Changes to protected files that the syscall tracepoints cannot judge.

unlink, rename, truncate and chmod name a file by path; a BPF program at a
tracepoint cannot resolve a path to an inode, and this kernel refuses the LSM
hooks that could. fanotify can: inode marks on every protected file report
each change with the pid that made it. That is detection, after the fact: the
change has happened when it is reported (``detected_not_prevented``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from dataclasses import dataclass
from typing import Iterable

FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_CLASS_NOTIF = 0x0
FAN_REPORT_FID = 0x200
FAN_REPORT_DIR_FID = 0x400
FAN_MARK_ADD = 0x1
FAN_MODIFY = 0x2
FAN_ATTRIB = 0x4
FAN_MOVE_SELF = 0x800
FAN_DELETE_SELF = 0x400
FAN_MOVED_FROM = 0x40
FAN_MOVED_TO = 0x80
FAN_CREATE = 0x100
FAN_DELETE = 0x200
FAN_EVENT_ON_CHILD = 0x08000000
FAN_ONDIR = 0x40000000
FAN_EVENT_INFO_TYPE_FID = 1
FAN_EVENT_INFO_TYPE_DFID = 3
AT_FDCWD = -100

WATCHED = FAN_MODIFY | FAN_ATTRIB | FAN_MOVE_SELF | FAN_DELETE_SELF
# A protected directory: its entries changing too (direct children only:
# fanotify inode marks do not reach further down).
WATCHED_DIR = WATCHED | FAN_ONDIR | FAN_EVENT_ON_CHILD | FAN_CREATE | FAN_DELETE | FAN_MOVED_FROM | FAN_MOVED_TO
_METADATA = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_INFO_HEADER = struct.Struct("=BBH")
_FILE_HANDLE = struct.Struct("=Ii")  # handle_bytes, handle_type

OPERATIONS = ((FAN_DELETE_SELF | FAN_DELETE, "delete"), (FAN_MOVE_SELF | FAN_MOVED_FROM | FAN_MOVED_TO, "move"),
              (FAN_CREATE, "create"), (FAN_MODIFY, "modify"), (FAN_ATTRIB, "attributes"))


@dataclass(frozen=True)
class Mutation:
    pid: int
    operation: str
    """delete, move, create (in a protected directory), modify (a write or
    truncate), attributes (chmod, chown, a link count change)."""
    key: object
    """What watch() was given for the file."""


def _libc():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
    libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
    libc.name_to_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p,
                                       ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    return libc


def _file_handle(libc, path: str) -> bytes:
    """The kernel's file handle for path: what fanotify reports it by."""
    size = 128
    buf = ctypes.create_string_buffer(_FILE_HANDLE.size + size)
    struct.pack_into("=I", buf, 0, size)
    mount_id = ctypes.c_int()
    if libc.name_to_handle_at(AT_FDCWD, path.encode(), buf, ctypes.byref(mount_id), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"name_to_handle_at({path}): {os.strerror(err)}")
    handle_bytes, handle_type = _FILE_HANDLE.unpack_from(buf)
    return bytes(buf.raw[: _FILE_HANDLE.size + handle_bytes])


class MutationWatch:
    """fanotify inode marks on the given files; read() returns what changed."""

    def __init__(self, files: Iterable[tuple[str, object]]):
        self._libc = _libc()
        self.fd = self._libc.fanotify_init(
            FAN_CLASS_NOTIF | FAN_REPORT_FID | FAN_REPORT_DIR_FID | FAN_CLOEXEC | FAN_NONBLOCK, os.O_RDONLY)
        if self.fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fanotify_init: {os.strerror(err)}")
        self._keys: dict[bytes, object] = {}
        try:
            for path, key in files:
                mask = WATCHED_DIR if os.path.isdir(path) else WATCHED
                if self._libc.fanotify_mark(self.fd, FAN_MARK_ADD, mask, AT_FDCWD, path.encode()) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"fanotify_mark({path}): {os.strerror(err)}")
                self._keys[_file_handle(self._libc, path)] = key
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
            if info_type in (FAN_EVENT_INFO_TYPE_FID, FAN_EVENT_INFO_TYPE_DFID, 2):
                handle = info[offset + _INFO_HEADER.size + 8: offset + length]  # after the fsid
                if len(handle) >= _FILE_HANDLE.size:
                    size = _FILE_HANDLE.unpack_from(handle)[0]
                    key = self._keys.get(handle[: _FILE_HANDLE.size + size])
                    if key is not None and (found is None or info_type == FAN_EVENT_INFO_TYPE_FID):
                        found = key
            offset += length
        return found

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
