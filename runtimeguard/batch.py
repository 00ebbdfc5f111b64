"""``EventBatch``: one poll's events as columns, for firehoses.

``Tracer.poll_batch()`` hands a whole batch over as a numpy structured
array of fixed rows (one per event: its header, its result and the acting
task's ids), copied out of the native consumer's buffer in one piece, and
the kernel's records beside it. Counting, filtering and aggregating run over
the columns; ``event(i)`` builds the typed ``Event`` of one row when it is
wanted (its details are encoded then, from the record). numpy is an
optional dependency (``runtimeguard[batch]``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from ._native import ffi, lib
from .errors import RuntimeGuardError
from .schema import EVENT_NAMES, Event

if TYPE_CHECKING:  # pragma: no cover
    import numpy

# The row's fields, as struct rg_event_row (csrc/api.h) lays them out.
ROW_FIELDS = (
    ("timestamp", "<i8"),   # ns since the Unix epoch
    ("seq", "<u8"),
    ("entity_id", "<u8"),   # 0: the program could not read the task
    ("cgroup_id", "<u8"),
    ("result", "<i8"),      # retval or -errno; process_exit: the wait status; lost: the count; else 0
    ("id", "<u4"),          # the event id (EVENT_NAMES)
    ("cpu", "<u4"),
    ("pid", "<u4"),
    ("tid", "<u4"),
    ("uid", "<u4"),         # UNKNOWN_ID where the program could not read it
    ("gid", "<u4"),
    ("details_offset", "<u4"),
    ("details_len", "<u4"),
)
ROW_SIZE = ffi.sizeof("struct rg_event_row")
UNKNOWN_ID = lib.RG_ID_UNKNOWN

_dtype = None


def numpy_module():
    try:
        import numpy
    except ImportError:
        raise RuntimeGuardError("the batch API needs numpy: pip install 'runtimeguard[batch]' "
                                "(or numpy itself)") from None
    return numpy


def row_dtype() -> "numpy.dtype":
    """The numpy dtype of one row, at the offsets the C compiler chose."""
    global _dtype
    if _dtype is None:
        np = numpy_module()
        _dtype = np.dtype({"names": [n for n, _ in ROW_FIELDS], "formats": [f for _, f in ROW_FIELDS],
                           "offsets": [ffi.offsetof("struct rg_event_row", n) for n, _ in ROW_FIELDS],
                           "itemsize": ROW_SIZE})
    return _dtype


class EventBatch:
    """One poll's events: ``rows`` (a numpy structured array, fields as
    ``ROW_FIELDS``) and, in ``records``, what each row's event is made of."""

    __slots__ = ("rows", "records")

    def __init__(self, rows: "numpy.ndarray", records: bytes):
        self.rows = rows
        self.records = records

    def __len__(self) -> int:
        return len(self.rows)

    def event(self, i: int) -> Event:
        """The typed Event of row i."""
        r = self.rows[i]
        start = int(r["details_offset"])
        record = self.records[start:start + int(r["details_len"])]
        event_id = int(r["id"])
        # A row holds the kernel's record; a loss notice (made by the
        # consumer itself) its details, already encoded.
        return Event(id=event_id, timestamp=int(r["timestamp"]), pid=int(r["pid"]), tid=int(r["tid"]),
                     details=record, encoded=event_id == lib.RG_KIND_LOST)

    def events(self) -> list[Event]:
        return list(self)

    def __iter__(self) -> Iterator[Event]:
        return (self.event(i) for i in range(len(self.rows)))

    def names(self) -> list[str]:
        """Each row's event name."""
        return [EVENT_NAMES[i] for i in self.rows["id"].tolist()]

    def select(self, mask) -> "EventBatch":
        """The rows where mask (a boolean array, or indexes) holds."""
        return EventBatch(self.rows[mask], self.records)

