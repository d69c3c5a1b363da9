"""Whether a path can be used as an input or an output, before any work starts.

The command line checks every path argument with :func:`check_path` after parsing (a
missing input or an unwritable output is refused with one line before anything runs);
anything else that takes paths from a person can do the same.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PATH_KINDS", "check_path"]

#: What a path argument is: read (a file, a folder, either) or written (a file, a folder
#: created with its missing parents).
PATH_KINDS = ("input_file", "input_dir", "input_path", "output_file", "output_dir")


def _writable_dir(d: Path) -> str:
    """'' when files can be created in the existing folder ``d``, else the problem."""
    if not d.is_dir():
        return f"{d} is not a folder"
    if not os.access(d, os.W_OK | os.X_OK):
        return f"folder {d} is not writable"
    return ""


def check_path(text: str, kind: str, special: tuple[str, ...] = (),
               parents: bool = False) -> str:
    """The problem with a path argument before anything runs ('' when there is none).

    Args:
        text: the path as given.
        kind: one of :data:`PATH_KINDS`. ``output_file``: not a folder, in an existing
            writable folder, not a read-only file; ``output_dir``: a writable folder or
            one that can be created in an existing writable folder; ``input_*``: exists,
            is a file (``input_file``) or a folder (``input_dir``), and is readable.
        special: values that are not paths (``real``, ``-`` for stdout).
        parents: ``output_dir`` only: missing folders above it may be created too (a
            cache under the home folder), else its parent must exist (a typo in a path
            does not create a tree).
    """
    if kind not in PATH_KINDS:
        raise ValueError(f"kind must be one of {PATH_KINDS}, got {kind!r}")
    if text in special:
        return ""
    if not text:
        return "empty path"
    p = Path(text)
    try:
        if kind.startswith("input"):
            if not p.exists():
                return "cannot read: " + ("no such file or folder" if kind == "input_path"
                                          else "no such file" if kind == "input_file"
                                          else "no such folder")
            if kind == "input_file" and p.is_dir():
                return "cannot read: is a folder, a file is expected"
            if kind == "input_dir" and not p.is_dir():
                return "cannot read: not a folder"
            if not os.access(p, os.R_OK):
                return "cannot read: permission denied"
            return ""
        if kind == "output_file":
            if p.is_dir():
                return "is a folder, a file name is expected"
            parent = p.parent
            if not parent.exists():
                return f"folder {parent} does not exist"
            problem = _writable_dir(parent)
            if problem:
                return problem
            if p.exists() and not os.access(p, os.W_OK):
                return "exists and is not writable"
            return ""
        # output_dir: it, or the folder it is created in, must be writable.
        if p.exists():
            return "" if p.is_dir() and os.access(p, os.W_OK | os.X_OK) else (
                "exists and is not a folder" if not p.is_dir() else "folder is not writable")
        above = p.parent
        while parents and not above.exists() and above != above.parent:
            above = above.parent
        if not above.exists():
            return f"folder {above} does not exist"
        if not above.is_dir():
            return f"cannot create it: {above} is a file"
        if not os.access(above, os.W_OK | os.X_OK):
            return f"cannot create it: folder {above} is not writable"
        return ""
    except OSError as e:  # a path too long, a name the file system refuses
        return e.strerror or str(e)
