"""Writing a file so that a crash leaves either the old file or the whole new one, never a part.

The one home of this rule for every small record the package writes (checkpoint manifests and metadata, the
`latest` pointer, metrics after a resume, config.json, prepare's job state, exported checkpoints, scores):
write a uniquely named temporary file beside the target, flush it to disk (fsync), then rename it over the
target (os.replace is atomic on POSIX file systems). The directory is fsynced too, so that the rename itself
survives a power loss. A leaf module: it imports nothing from the package.
"""
from __future__ import annotations

import os
from typing import Callable, Union


def write_atomic(path: str, content: Union[str, bytes, Callable]) -> None:
    """Write `content` (text, bytes, or a function that writes into the open binary file it is given, e.g.
    `lambda f: torch.save(state, f)`) to `path` atomically."""
    tmp = f"{path}.{os.getpid()}.tmp"  # unique per process: two writers never share a temporary file
    try:
        with open(tmp, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:  # a file system whose directories cannot be opened: the rename is all it offers
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
