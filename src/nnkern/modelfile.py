"""The model file: one .npz archive holding the architecture as JSON (under
``"__nnkern__"``, with the format name and version) and the parameters by name, written
atomically (a temporary file in the same folder, flushed, then renamed over the target) and
read back with every way a file can fail to be a model reported as :class:`ModelFileError`.
:func:`nnkern.nn.load` rebuilds a model from what :func:`read` returns."""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

from ._paths import check_writable

META_KEY = "__nnkern__"  # the .npz entry holding the architecture as JSON
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A file given to :func:`load` is not a readable nnkern model (the message names it)."""


def write(path, meta: dict, state: dict) -> None:
    """Write ``meta`` (JSON-able, with a "format" entry) and the arrays of ``state`` to
    ``path`` atomically; any previous file there stays intact if this fails."""
    path = check_writable(path, "save", replaced_by_rename=True)
    directory = os.path.dirname(os.path.abspath(path))
    text = json.dumps({"format": meta["format"], "version": FORMAT_VERSION,
                       **{k: v for k, v in meta.items() if k != "format"}})
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{META_KEY: np.array(text)}, **state)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode())  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    _fsync_directory(directory)


def read(path, *, formats) -> tuple[str, dict, dict]:
    """(path, metadata, arrays by name) of the model file at ``path``, whose format must be
    one of ``formats`` and whose version this nnkern reads."""
    path = os.fspath(path)
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ModelFileError(f"{path}: not an nnkern model file (a single .npy array, not an .npz archive)")
        with archive:
            if META_KEY not in archive.files:
                raise ModelFileError(f"{path}: not an nnkern model file (no {META_KEY!r} entry)")
            meta = json.loads(str(archive[META_KEY]))
            state = {name: archive[name] for name in archive.files if name != META_KEY}
    except (FileNotFoundError, IsADirectoryError, PermissionError, ModelFileError):
        raise
    except ValueError as exc:
        if "pickle" in str(exc):  # NumPy's refusals suggest allow_pickle, which a model file never needs
            raise ModelFileError(f"{path}: {_why_not_arrays(path)}") from None
        raise ModelFileError(f"{path}: not a readable nnkern model file ({type(exc).__name__}: {exc})") from exc
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise ModelFileError(f"{path}: not a readable nnkern model file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") not in formats:
        raise ModelFileError(f"{path}: not an nnkern model file (format {meta.get('format') if isinstance(meta, dict) else meta!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise ModelFileError(f"{path}: model file version {meta.get('version')!r}; this nnkern reads version {FORMAT_VERSION}")
    return path, meta, state
def _why_not_arrays(path: str) -> str:
    """Why NumPy refused ``path`` as arrays without pickles: it holds Python objects (an
    .npy or .npz file of object arrays, or a pickle, whose first byte is the protocol's
    0x80), or it is neither an .npz nor an .npy file."""
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith((b"\x80", b"\x93NUMPY", b"PK")):
        return ("not an nnkern model file (it holds pickled Python objects; nnkern model files hold arrays "
                "alone, and nnkern loads no pickles)")
    return "not a readable nnkern model file (neither an .npz archive nor an .npy array)"


def _new_file_mode() -> int:
    """The mode open() gives a new file: 0o666 less the process umask (which can only be
    read by setting it, so it is set back at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (where the platform allows opening folders)."""
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
