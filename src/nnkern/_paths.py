"""Checks of the files nnkern will write, made before the long work whose results they hold,
so that a bad path costs seconds instead of a training run."""

from __future__ import annotations

import os
import tempfile


def check_writable(path, what: str, *, replaced_by_rename: bool = False) -> str:
    """``path`` as a string, after checking that a file can be written there: its folder
    exists and takes new files, and the path is not a folder (nor, unless the writer
    replaces the file by renaming a new one over it, an existing file that cannot be
    overwritten). Otherwise raises FileNotFoundError, IsADirectoryError,
    NotADirectoryError or PermissionError whose message starts with ``what`` and names the
    path. The check writes and removes an empty temporary file in the folder."""
    path = os.fspath(path)
    if not path:
        raise FileNotFoundError(f"{what}: empty file name")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path}: is a folder, not a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(folder):
        raise FileNotFoundError(f"{what} {path}: the folder {folder} does not exist (create it first, "
                                f"e.g. mkdir -p {folder})")
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{what} {path}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".nnkern-write-check-", dir=folder)
    except OSError as exc:
        raise PermissionError(f"{what} {path}: cannot create files in {folder} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)
    if not replaced_by_rename and os.path.exists(path) and not os.access(path, os.W_OK):
        raise PermissionError(f"{what} {path}: the file exists and is not writable")
    return path
