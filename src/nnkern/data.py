"""MNIST, the IDX file format, and mini-batch iteration::

    from nnkern.data import load_mnist, DataLoader
    (x_train, y_train), (x_test, y_test) = load_mnist()          # (60000, 784) float32 in [0, 1]
    for xb, yb in DataLoader(x_train, y_train, 100, shuffle=True, seed=0):
        ...

:func:`load_mnist` looks for the four IDX files, in order: the explicit ``path``;
``$NNKERN_DATA``; ``./data/mnist``; the user cache directory (``$XDG_CACHE_HOME/nnkern/mnist``
or ``~/.cache/nnkern/mnist``); then it downloads them from public mirrors into that cache.
An explicit ``path`` or ``$NNKERN_DATA`` is authoritative: missing or corrupt files there
are an error naming the file, never a silent fall-back to another location.

Arrays returned by :func:`load_mnist` are shared between calls (loading is cached in the
process) and therefore read-only; ``.copy()`` one to modify it.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import tempfile
import threading
import urllib.request
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np

from . import _validate

__all__ = [
    "read_idx",
    "write_idx",
    "load_mnist",
    "find_mnist",
    "mnist_cache_dir",
    "one_hot",
    "DataLoader",
    "random_batch",
    "MNIST_FILES",
    "MNIST_MIRRORS",
]

# ---------------------------------------------------------------------------------------
# IDX format: big-endian; bytes 0-1 zero, byte 2 the element type, byte 3 the number of
# dimensions; one uint32 per dimension; then the elements in row-major order.
# ---------------------------------------------------------------------------------------

_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dtype.newbyteorder("="): code for code, dtype in _IDX_TYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_file_bytes(path) -> bytes:
    """The content of ``path``, decompressed when it is a gzip file (told by its magic bytes)."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt gzip data ({exc})") from None


def _parse_idx(data: bytes, path) -> np.ndarray:
    """The array encoded by the IDX bytes ``data``; ``path`` only names the file in errors."""
    if len(data) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(data)} bytes, the header needs 4)")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(
            f"{path}: not an IDX file (magic {data[:4].hex()}: the first two bytes must be zero)"
        )
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_TYPES:
        known = ", ".join(f"0x{code:02X}" for code in _IDX_TYPES)
        raise ValueError(f"{path}: unknown IDX element type 0x{type_code:02X} (known: {known})")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(
            f"{path}: truncated IDX header: {ndim} dimensions need {header_len} bytes, "
            f"the file has {len(data)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_TYPES[type_code]
    expected = header_len + math.prod(shape) * dtype.itemsize
    shape_str = "x".join(map(str, shape))
    if len(data) < expected:
        raise ValueError(
            f"{path}: truncated IDX data: shape ({shape_str}) of {dtype.newbyteorder('=')} "
            f"needs {expected} bytes, the file has {len(data)}"
        )
    if len(data) > expected:
        raise ValueError(
            f"{path}: {len(data) - expected} bytes of trailing garbage after the IDX data "
            f"(shape ({shape_str}) of {dtype.newbyteorder('=')} ends at byte {expected})"
        )
    flat = np.frombuffer(data, dtype=dtype, offset=header_len, count=math.prod(shape))
    # astype copies into native byte order: the result is writeable and owns its memory.
    return flat.astype(dtype.newbyteorder("=")).reshape(shape)


def read_idx(path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a native-byte-order array.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for
    anything that is not a well-formed IDX file: wrong magic bytes, an unknown element type,
    zero dimensions, a truncated header or body, trailing bytes, corrupt gzip data.
    """
    return _parse_idx(_read_file_bytes(path), path)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, so that
    readers never see a partial file."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp_name, path)
    except BaseException:
        os.unlink(tmp_name)
        raise


def write_idx(path, array) -> None:
    """Write ``array`` as an IDX file, gzip-compressed when ``path`` ends in ``.gz``.

    The dtype must be one IDX encodes (uint8, int8, int16, int32, float32, float64) and the
    array at least 1-D. The file is replaced atomically (temporary file + ``os.replace``).
    """
    path = Path(path)
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _IDX_CODES:
        raise TypeError(
            f"write_idx: IDX cannot store dtype {array.dtype} "
            "(uint8, int8, int16, int32, float32 or float64)"
        )
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"write_idx: IDX needs 1 to 255 dimensions, got {array.ndim}")
    if max(array.shape) >= 2**32:
        raise ValueError(f"write_idx: dimension {max(array.shape)} does not fit in uint32")
    header = bytes([0, 0, _IDX_CODES[native], array.ndim]) + np.asarray(
        array.shape, dtype=">u4"
    ).tobytes()
    data = header + np.ascontiguousarray(array, dtype=native.newbyteorder(">")).tobytes()
    if path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=6, mtime=0)
    _atomic_write_bytes(path, data)


# ---------------------------------------------------------------------------------------
# MNIST: locating, downloading, verifying, caching
# ---------------------------------------------------------------------------------------

# sha256 of the decompressed content (data/mnist/README.md); gzip bytes vary between copies.
MNIST_FILES = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
# The mirrors torchvision and TensorFlow use, then the original site (often refuses now).
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
# Short: without a network each mirror fails at once or after this, not after minutes.
DOWNLOAD_TIMEOUT_S = 10.0
_NUM_CLASSES = 10


def mnist_cache_dir() -> Path:
    """Where downloaded MNIST files go: ``$XDG_CACHE_HOME/nnkern/mnist`` or ``~/.cache/nnkern/mnist``."""
    cache_root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache_root) / "nnkern" / "mnist"


def _file_in(directory: Path, name: str) -> Path | None:
    """``name.gz`` or ``name`` in ``directory``, whichever exists (gzip first)."""
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def _missing_files(directory: Path) -> list[str]:
    return [name for name in MNIST_FILES if _file_in(directory, name) is None]


def _require_complete(directory: Path, origin: str) -> Path:
    """``directory`` when it holds all four files; otherwise an error naming what is missing."""
    if not directory.is_dir():
        raise FileNotFoundError(f"MNIST directory {directory} ({origin}) does not exist")
    missing = _missing_files(directory)
    if missing:
        listed = ", ".join(str(directory / f"{name}[.gz]") for name in missing)
        raise FileNotFoundError(f"MNIST files missing in {directory} ({origin}): {listed}")
    return directory


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        return response.read()


def _download_into(cache_dir: Path, names: list[str]) -> list[str]:
    """Download ``names`` into ``cache_dir``, each verified before it is moved into place.

    Returns the reasons of the failures (empty on success). A mirror that fails to answer
    (unreachable, timeout, HTTP error) is not tried again for the remaining files.
    """
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return [f"cannot create {cache_dir}: {exc}"]
    failures: list[str] = []
    dead_mirrors: set[str] = set()
    for position, name in enumerate(names):
        if len(dead_mirrors) == len(MNIST_MIRRORS):
            failures.append("not tried, no mirror answered: " + ", ".join(f"{n}.gz" for n in names[position:]))
            break
        reasons = []
        for mirror in MNIST_MIRRORS:
            if mirror in dead_mirrors:
                continue
            url = f"{mirror}{name}.gz"
            try:
                payload = _fetch(url)
            except OSError as exc:  # URLError, HTTPError, timeouts are all OSErrors
                dead_mirrors.add(mirror)
                reasons.append(f"{url}: {exc}")
                continue
            try:
                digest = hashlib.sha256(gzip.decompress(payload)).hexdigest()
            except (OSError, EOFError, zlib.error) as exc:
                reasons.append(f"{url}: corrupt gzip data ({exc})")
                continue
            if digest != MNIST_FILES[name]:
                reasons.append(f"{url}: sha256 {digest} does not match {MNIST_FILES[name]}")
                continue
            _atomic_write_bytes(cache_dir / f"{name}.gz", payload)
            break
        else:
            failures.append(f"{name}.gz: " + "; ".join(reasons))
    return failures


def find_mnist(path=None, *, download: bool = True) -> Path:
    """The directory :func:`load_mnist` reads, found in the documented order (module docstring).

    Checks that the four files are present, not their content. Raises ``FileNotFoundError``
    naming the missing file when ``path`` or ``$NNKERN_DATA`` is given but incomplete, and,
    when nothing is found anywhere, one that lists every place looked and how to provide
    the files.
    """
    if path is not None:
        return _require_complete(Path(path), "the path given to load_mnist")
    env_dir = os.environ.get("NNKERN_DATA")
    if env_dir:
        return _require_complete(Path(env_dir), "$NNKERN_DATA")

    looked = ["explicit path: none given", "$NNKERN_DATA: not set"]
    cache_dir = mnist_cache_dir()
    for directory, origin in ((Path("data/mnist"), "./data/mnist"), (cache_dir, "user cache")):
        where = f"{origin} ({directory.absolute()})"
        if not directory.is_dir():
            looked.append(f"{where}: no such directory")
            continue
        missing = _missing_files(directory)
        if not missing:
            return directory
        looked.append(f"{where}: missing " + ", ".join(f"{name}[.gz]" for name in missing))

    if download:
        failures = _download_into(cache_dir, _missing_files(cache_dir))
        if not failures:
            return cache_dir
        looked.append(f"download into {cache_dir}: failed: " + " | ".join(failures))
    else:
        looked.append("download: disabled (download=False)")
    places = "\n".join(f"  {i}. {entry}" for i, entry in enumerate(looked, 1))
    files = ", ".join(f"{name}.gz" for name in MNIST_FILES)
    raise FileNotFoundError(
        f"MNIST not found. Looked, in order:\n{places}\n"
        f"Provide the four IDX files ({files}; gzipped or not) in a directory and pass "
        f"load_mnist(path=DIR), or set NNKERN_DATA=DIR, or put them in ./data/mnist or "
        f"{cache_dir}."
    )


class _RawMnist:
    """The four arrays as stored (uint8 images (N, 28, 28), int64 labels), read-only."""

    def __init__(self, directory: Path, verify: bool):
        arrays = {}
        for name, sha256 in MNIST_FILES.items():
            file = _file_in(directory, name)
            data = _read_file_bytes(file)
            if verify:
                digest = hashlib.sha256(data).hexdigest()
                if digest != sha256:
                    raise ValueError(
                        f"{file}: sha256 of the decompressed content is {digest}, expected "
                        f"{sha256}: the file is corrupt or not the MNIST file "
                        "(verify=False loads other IDX files of the same layout)"
                    )
            arrays[name] = (_parse_idx(data, file), file)
        self.verified = verify
        self.train = self._check_pair(arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"])
        self.test = self._check_pair(arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"])

    @staticmethod
    def _check_pair(images_and_file, labels_and_file):
        (images, images_file), (labels, labels_file) = images_and_file, labels_and_file
        if images.dtype != np.uint8 or images.ndim != 3:
            raise ValueError(
                f"{images_file}: MNIST images must be uint8 (N, rows, cols), "
                f"got {images.dtype} of shape {images.shape}"
            )
        if labels.dtype != np.uint8 or labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(
                f"{labels_file}: MNIST labels must be uint8 of shape ({len(images)},) to match "
                f"{images_file.name}, got {labels.dtype} of shape {labels.shape}"
            )
        if labels.size and labels.max() >= _NUM_CLASSES:
            raise ValueError(f"{labels_file}: label {labels.max()} out of range 0..9")
        labels = labels.astype(np.int64)
        images.flags.writeable = False
        labels.flags.writeable = False
        return images, labels


# Loading is called by many tests and scripts: the raw arrays are cached per directory and
# file identity, the converted float arrays (188 MB for the float32 training images) per
# conversion; both only for the most recent few, to bound the memory held.
_CACHE_SIZE = 2
_cache_lock = threading.Lock()
_raw_cache: OrderedDict[tuple, _RawMnist] = OrderedDict()
_converted_cache: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()


def _cached(cache: OrderedDict, key, make, usable=lambda value: True):
    """``cache[key]`` if present and usable, else ``make()`` stored under ``key`` (LRU)."""
    with _cache_lock:
        value = cache.get(key)
        if value is None or not usable(value):
            value = make()
            cache[key] = value
        cache.move_to_end(key)
        while len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
        return value


def _files_identity(directory: Path) -> tuple:
    """Names the four files' content: the same for a directory of symlinks to them, and
    changed whenever one is replaced or rewritten."""
    identity = []
    for name in MNIST_FILES:
        file = _file_in(directory, name).resolve()
        st = file.stat()
        identity.append((str(file), st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(identity)


def _convert_images(images: np.ndarray, normalize, dtype: np.dtype) -> np.ndarray:
    flat = images.reshape(len(images), -1)
    out = flat.astype(dtype)
    if normalize == "unit":
        out /= 255
    elif normalize == "symmetric":
        # The source material's (x/255 - 0.5)/0.5, step by step as torchvision's
        # ToTensor + Normalize((0.5,), (0.5,)) computes it, so the values match exactly.
        out /= 255
        out -= 0.5
        out /= 0.5
    out.flags.writeable = False
    return out


def one_hot(labels, num_classes: int = _NUM_CLASSES, dtype=np.float32) -> np.ndarray:
    """Integer class labels of shape (N,) as an (N, num_classes) array of 0s and 1s."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise ValueError(
            f"one_hot: labels must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"one_hot: labels must lie in 0..{num_classes - 1}, "
            f"got values from {labels.min()} to {labels.max()}"
        )
    encoded = np.zeros((len(labels), num_classes), dtype=dtype)
    encoded[np.arange(len(labels)), labels.astype(np.intp)] = 1
    return encoded


_one_hot = one_hot  # load_mnist's keyword argument of the same name hides one_hot there


def load_mnist(
    path=None,
    *,
    normalize: str | None = "unit",
    flatten: bool = True,
    one_hot: bool = False,
    dtype=np.float32,
    verify: bool = True,
    download: bool = True,
):
    """MNIST as ``((x_train, y_train), (x_test, y_test))``.

    Parameters
    ----------
    path : directory holding the four IDX files (gzipped or not); ``None`` searches the
        places listed in the module docstring.
    normalize : ``"unit"`` scales pixels to [0, 1] (x / 255); ``"symmetric"`` to [-1, 1]
        via (x/255 - 0.5)/0.5; ``None`` keeps the raw values 0..255, converted to ``dtype``.
    flatten : images as (N, 784) when true, as (N, 28, 28) otherwise.
    one_hot : labels as (N, 10) arrays of 0/1 in ``dtype`` (float32 when ``dtype`` is an
        integer type) instead of int64 class indices of shape (N,).
    dtype : floating dtype of the images; ``np.uint8`` is allowed with ``normalize=None``
        and gives the stored bytes.
    verify : compare the sha256 of each file's decompressed content with the canonical
        MNIST checksums (done once per file per process). ``False`` allows other IDX files
        of the same layout (uint8 images (N, rows, cols), uint8 labels 0..9).
    download : fetch missing files from :data:`MNIST_MIRRORS` into :func:`mnist_cache_dir`
        when no location holds them.

    All returned arrays are read-only and shared between calls: the loading and the
    conversion are cached in the process, so a second call costs next to nothing.
    """
    _validate.choice("load_mnist", "normalize", normalize, ("unit", "symmetric", None))
    dtype = np.dtype(dtype)
    if not (np.issubdtype(dtype, np.floating) or (dtype == np.uint8 and normalize is None)):
        raise ValueError(
            f"load_mnist: dtype must be a floating type (or uint8 with normalize=None), got {dtype}"
        )
    directory = find_mnist(path, download=download)
    key = _files_identity(directory)
    raw = _cached(
        _raw_cache, key, lambda: _RawMnist(directory, verify), lambda raw: raw.verified or not verify
    )
    converted = _cached(
        _converted_cache,
        (key, normalize, dtype.str),
        lambda: tuple(_convert_images(images, normalize, dtype) for images, _ in (raw.train, raw.test)),
    )

    label_dtype = dtype if np.issubdtype(dtype, np.floating) else np.float32
    splits = []
    for x, (images, labels) in zip(converted, (raw.train, raw.test)):
        if not flatten:
            x = x.reshape(images.shape)
        if one_hot:
            labels = _one_hot(labels, _NUM_CLASSES, label_dtype)
            labels.flags.writeable = False
        splits.append((x, labels))
    return tuple(splits)


# ---------------------------------------------------------------------------------------
# Mini-batches
# ---------------------------------------------------------------------------------------


def _check_batch_args(x, y, batch_size, where: str):
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise ValueError(
            f"{where}: x and y need the same number of samples, got shapes {x.shape} and {y.shape}"
        )
    return x, y, _validate.integer(where, "batch_size", batch_size, minimum=1, expected="a positive integer",
                                   type_error=ValueError)


def check_sample_weight(sample_weight, samples: int, where: str) -> np.ndarray:
    """``sample_weight`` as a float64 array of ``samples`` finite numbers >= 0, not all
    zero (a ValueError or TypeError naming what is wrong otherwise)."""
    weights = np.asarray(sample_weight)
    if weights.dtype.kind not in "fiub":
        raise TypeError(f"{where}: sample_weight has dtype {weights.dtype}; expected real numbers")
    weights = weights.astype(np.float64)
    if weights.shape != (samples,):
        raise ValueError(f"{where}: sample_weight must have one number per sample, shape ({samples},), "
                         f"got shape {weights.shape}")
    bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
    if bad.size:
        raise ValueError(f"{where}: sample_weight must be finite and >= 0, got {weights[bad[0]]} at index {bad[0]}")
    if samples and not weights.any():
        raise ValueError(f"{where}: sample_weight is zero for every sample")
    return weights


class DataLoader:
    """Mini-batches ``(xb, yb)`` over the first axis of ``x`` and ``y``.

    Without shuffling the batches are slices, views of ``x`` and ``y`` (nothing copied).
    With ``shuffle=True`` every epoch (every ``iter()``) draws a new permutation from one
    numpy Generator seeded once with ``seed``: epochs differ, and the same seed repeats the
    same sequence of epochs. Shuffled samples are gathered into one batch buffer per epoch,
    reused for every batch: **a yielded shuffled batch is only valid until the next one is
    requested**; ``.copy()`` it to keep it.

    ``x`` or ``y`` may also be a tuple of arrays with one number of samples (a model with
    several inputs or outputs): its batches are then tuples of batches, cut alike.

    ``sample_weight`` (one non-negative number per sample) makes the batches
    ``(xb, yb, wb)``, the weights cut alike.

    ``len(loader)`` is the number of batches per epoch; with ``drop_last`` a final batch
    smaller than ``batch_size`` is left out. ``loader.samples`` is the number of samples.
    """

    def __init__(self, x, y, batch_size: int, shuffle: bool = False, seed=None, drop_last: bool = False,
                 sample_weight=None):
        self._x_is_tuple, self._y_is_tuple = isinstance(x, tuple), isinstance(y, tuple)
        self._x_parts = [np.asarray(a) for a in (x if self._x_is_tuple else (x,))]
        self._y_parts = [np.asarray(a) for a in (y if self._y_is_tuple else (y,))]
        if not self._x_parts or not self._y_parts:
            raise ValueError("DataLoader: an empty tuple of arrays")
        for x_part in self._x_parts:
            for y_part in self._y_parts:
                *_, self.batch_size = _check_batch_args(x_part, y_part, batch_size, "DataLoader")
        self.x = tuple(self._x_parts) if self._x_is_tuple else self._x_parts[0]
        self.y = tuple(self._y_parts) if self._y_is_tuple else self._y_parts[0]
        self.samples = len(self._x_parts[0])
        self.sample_weight = None if sample_weight is None else check_sample_weight(sample_weight, self.samples,
                                                                                    "DataLoader")
        self.shuffle = shuffle
        self.drop_last = drop_last
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        if self.drop_last:
            return self.samples // self.batch_size
        return -(-self.samples // self.batch_size)

    def _batch(self, x_parts: list, y_parts: list, weights) -> tuple:
        batch = (tuple(x_parts) if self._x_is_tuple else x_parts[0],
                 tuple(y_parts) if self._y_is_tuple else y_parts[0])
        return batch if weights is None else (*batch, weights)

    def epoch_order(self):
        """The sample order of the next epoch: a new permutation from the loader's generator
        when shuffling (drawn as iterating draws it, so the next epoch moves on), else None,
        the stored order. For code that gathers the batches itself (the "cuda" engine)."""
        return self._rng.permutation(self.samples) if self.shuffle else None

    def __iter__(self):
        stops = range(self.batch_size, len(self) * self.batch_size + 1, self.batch_size)
        order = self.epoch_order()
        if order is None:
            for stop in stops:
                window = slice(stop - self.batch_size, stop)
                yield self._batch([a[window] for a in self._x_parts], [a[window] for a in self._y_parts],
                                  None if self.sample_weight is None else self.sample_weight[window])
            return
        x_buffers = [np.empty((self.batch_size, *a.shape[1:]), dtype=a.dtype) for a in self._x_parts]
        y_buffers = [np.empty((self.batch_size, *a.shape[1:]), dtype=a.dtype) for a in self._y_parts]
        for stop in stops:
            indices = order[stop - self.batch_size : stop]
            count = len(indices)
            # mode="clip" lets take write straight into out (mode="raise" buffers);
            # a permutation is always in range.
            yield self._batch(
                [np.take(a, indices, axis=0, out=b[:count], mode="clip") for a, b in zip(self._x_parts, x_buffers)],
                [np.take(a, indices, axis=0, out=b[:count], mode="clip") for a, b in zip(self._y_parts, y_buffers)],
                None if self.sample_weight is None else self.sample_weight[indices],
            )


def random_batch(x, y, batch_size: int, rng=None, *, replace: bool = False):
    """One random mini-batch ``(x[idx], y[idx])`` (copies), as the source material samples.

    ``rng`` is a numpy Generator (or a seed for one). The source material's
    ``np.random.choice(train_size, batch_size)`` samples with replacement; ``replace=True``
    does the same, the default draws ``batch_size`` distinct samples.
    """
    x, y, batch_size = _check_batch_args(x, y, batch_size, "random_batch")
    if not replace and batch_size > len(x):
        raise ValueError(
            f"random_batch: cannot draw {batch_size} distinct samples from {len(x)} (use replace=True)"
        )
    indices = np.random.default_rng(rng).choice(len(x), size=batch_size, replace=replace)
    return x[indices], y[indices]
