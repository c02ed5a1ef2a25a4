"""The rescue file: where paid answers go when neither the journal nor DuckDB can take them.

Design decision: **room for the answers in flight is set aside before the first call.** A full
disk refuses the journal's append, and DuckDB's write needs more room still; a file created
only then would be refused too. So a paying phase reserves :data:`RESERVE_BYTES` with
``posix_fallocate`` for ``<warehouse>.rescue`` (or the path in ``TACORL_RESCUE_PATH``, e.g. on
another disk) before it sends anything, and a phase that cannot reserve it sends nothing.
When the disk fills, the answers received meanwhile (at most the calls that were in flight)
are written into that room, each answer's entries in one write and fsync'd.

The file holds journal lines (the same ``{"t": table, "r": row}`` shape) followed by the
reservation's zero bytes; an answer is whole or zeroed out. The next write open of the
warehouse loads it like the journal, then removes it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

RESERVE_BYTES = 512 * 1024
ENV = "TACORL_RESCUE_PATH"


def default_path(warehouse: Path) -> Path:
    return warehouse.with_name(warehouse.name + ".rescue")


def paths(warehouse: Path) -> list[Path]:
    """Where rescue files may be: the user's path (if set) and the default, beside the warehouse."""
    out = []
    user = os.environ.get(ENV)
    if user:
        out.append(Path(user).expanduser())
    out.append(default_path(warehouse))
    return list(dict.fromkeys(out))


def _data_end(fd: int) -> int:
    """Bytes of data before the zero padding."""
    size = os.fstat(fd).st_size
    data = os.pread(fd, size, 0) if size else b""
    i = data.find(b"\0")
    return len(data) if i < 0 else i


class RescueFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def reserve(self, nbytes: int = RESERVE_BYTES) -> None:
        """Make sure ``nbytes`` past the data are allocated on disk (OSError if they cannot be)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, _data_end(fd) + nbytes)
            os.fsync(fd)
        finally:
            os.close(fd)

    def save(self, groups: Sequence[bytes]) -> int:
        """Write each group (one answer's journal lines) after the data, fsync'd; stops at the
        first that does not fit and zeroes what it wrote of it. Returns the groups saved."""
        saved = 0
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return 0
        try:
            end = _data_end(fd)
            for data in groups:
                done = 0
                try:
                    while done < len(data):
                        done += os.pwrite(fd, data[done:], end + done)
                    os.fsync(fd)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.pwrite(fd, b"\0" * done, end)
                        os.fsync(fd)
                    break
                end += len(data)
                saved += 1
        finally:
            os.close(fd)
        return saved

    def lines(self) -> list[bytes]:
        """The journal lines it holds (empty when it does not exist)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        i = raw.find(b"\0")
        return [ln for ln in (raw if i < 0 else raw[:i]).splitlines() if ln.strip()]

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
