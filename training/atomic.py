"""Files that appear whole or not at all: every stage's writes of labels, sets and states.

A kill mid-write (a session ending, SIGTERM to a worker) must leave the previous file, not
half a new one, and two workers writing the same file side by side (they build the same
augmentation set) must not take each other's temporary file: each write gets its own
(``mkstemp``) beside the target and ``os.replace``s it in.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# mkstemp creates 0600; the files written here are data to share (git, other users).
_MODE = 0o644


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an error it
    replaces ``path`` (in one rename), and on an error it is removed and ``path`` kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
