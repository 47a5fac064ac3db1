"""Atomic file writes, for every file qcnn writes (checkpoints, model files, exports, reports, plots).

A file is written to a temporary `.{name}.tmp{pid}` beside it, flushed to disk, then renamed over the final
name: the final name holds the old file or the whole new one, never a truncated one. A failed write removes its
temporary and raises WriteError, one line naming the file and the OS reason. A writer killed outright (SIGKILL,
power loss) leaves its temporary behind; remove_stale_temps removes those of writers no longer running, and
each write does so for its own file first (on a full disk they would otherwise keep it full).
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import BinaryIO, Callable, Union

Content = Union[bytes, str, Callable[[BinaryIO], None]]

_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.tmp(?P<pid>[0-9]{1,10})")
_PID_LIMIT = 1 << 22  # Linux's largest pid_max


class WriteError(OSError):
    """A file qcnn could not write: str() is "cannot write PATH: REASON"; errno is the OS error's."""


def temp_path(path: str | Path) -> Path:
    """The temporary this process writes `path` through."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_file(path: str | Path, content: Content) -> Path:
    """Writes `content` to `path` atomically: bytes, str (UTF-8), or a function that writes into the binary file
    object it is given (torch.save, savefig, ...). Raises WriteError on any OSError, with no temporary left."""
    path = Path(path)
    if callable(content):
        # Serialized in memory first: torch.save, for one, reports a short write to a real file as a RuntimeError
        # about stream positions, not as the OS error.
        buffer = io.BytesIO()
        content(buffer)
        content = buffer.getbuffer()
    elif isinstance(content, str):
        content = content.encode()
    remove_stale_temps(path.parent, path.name)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        _unlink(tmp)
        error = WriteError(f"cannot write {path}: {err.strerror or err}")
        error.errno = err.errno
        raise error from err
    except BaseException:
        _unlink(tmp)
        raise
    _sync_directory(path.parent)
    return path


def remove_stale_temps(directory: str | Path, name: str | None = None) -> list[Path]:
    """Removes the temporaries in `directory` (those of the file `name` only, when given) whose writer is no
    longer running; a running writer's are kept. Returns the removed paths."""
    try:
        entries = list(os.scandir(directory))
    except OSError:  # no directory yet (or unreadable): nothing of ours to remove
        return []
    removed = []
    for entry in entries:
        match = _TEMP_NAME.fullmatch(entry.name)
        if match is None or (name is not None and match["name"] != name) or _running(int(match["pid"])):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # gone meanwhile, or another user's
            continue
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid() or not 0 < pid < _PID_LIMIT:  # ours (maybe another thread's), or not a pid we write
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _sync_directory(directory: Path) -> None:
    # Makes the rename itself durable; some filesystems cannot open or fsync a directory, and the file is
    # complete either way.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
