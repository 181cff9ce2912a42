"""nnkern.data: the IDX reader/writer, load_mnist (on the real files, its lookup order,
checksums, downloads), DataLoader, random_batch, one_hot."""

from __future__ import annotations

import gzip
import io
import os
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from nnkern import data
from nnkern.data import DataLoader, find_mnist, load_mnist, one_hot, random_batch, read_idx, write_idx

REPO_MNIST = Path(__file__).resolve().parents[1] / "data" / "mnist"
TRAIN_LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist_dir() -> Path:
    """The real MNIST files: $NNKERN_DATA in CI, else the repository's copy."""
    return Path(os.environ.get("NNKERN_DATA") or REPO_MNIST)


@pytest.fixture
def mnist_links(tmp_path, mnist_dir) -> Path:
    """A directory of symlinks to the real files, in which single files can be replaced."""
    directory = tmp_path / "mnist_links"
    directory.mkdir()
    for name in data.MNIST_FILES:
        (directory / f"{name}.gz").symlink_to(mnist_dir / f"{name}.gz")
    return directory


@pytest.fixture
def isolated_lookup(tmp_path, monkeypatch) -> Path:
    """No $NNKERN_DATA, an empty working directory and an empty user cache under tmp_path."""
    monkeypatch.delenv("NNKERN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg_cache"))
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return tmp_path


# ---------------------------------------------------------------------------------------
# IDX
# ---------------------------------------------------------------------------------------

IDX_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


@pytest.mark.parametrize("dtype", IDX_DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 5, 1), (4, 0)])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, shape, suffix):
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    else:
        array = (rng.standard_normal(shape) * 1e3).astype(dtype)
    path = tmp_path / f"array.idx{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    assert back.shape == shape
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable


def test_idx_special_float_values_round_trip(tmp_path):
    array = np.array([np.nan, np.inf, -np.inf, -0.0, np.finfo(np.float32).tiny], dtype=np.float32)
    write_idx(tmp_path / "special.idx", array)
    back = read_idx(tmp_path / "special.idx")
    assert back.tobytes() == array.tobytes()


def test_idx_is_big_endian(tmp_path):
    raw = bytes([0, 0, 0x0B, 1]) + struct.pack(">I", 3) + struct.pack(">3h", 1, -2, 258)
    (tmp_path / "int16.idx").write_bytes(raw)
    np.testing.assert_array_equal(read_idx(tmp_path / "int16.idx"), np.array([1, -2, 258], np.int16))
    write_idx(tmp_path / "again.idx", np.array([1, -2, 258], dtype=np.int16))
    assert (tmp_path / "again.idx").read_bytes() == raw


def test_idx_reads_mnist_headers(mnist_dir):
    labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(labels), TEST_LABEL_COUNTS)


def test_write_idx_rejects_unsupported_arrays(tmp_path):
    with pytest.raises(TypeError, match="IDX cannot store dtype complex128"):
        write_idx(tmp_path / "a.idx", np.zeros(3, dtype=np.complex128))
    with pytest.raises(TypeError, match="bool"):
        write_idx(tmp_path / "a.idx", np.zeros(3, dtype=bool))
    with pytest.raises(ValueError, match="1 to 255 dimensions, got 0"):
        write_idx(tmp_path / "a.idx", np.float32(1.0))
    assert not list(tmp_path.iterdir())


def test_write_idx_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "a.idx"
    write_idx(path, np.arange(4, dtype=np.int32))

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_idx(path, np.arange(9, dtype=np.int32))
    monkeypatch.undo()
    np.testing.assert_array_equal(read_idx(path), np.arange(4))
    assert [p.name for p in tmp_path.iterdir()] == ["a.idx"]  # no temporary file left


def _header(type_code: int, shape) -> bytes:
    return bytes([0, 0, type_code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", r"not an IDX file \(only 0 bytes"),
        (b"\x00\x00\x08", r"not an IDX file \(only 3 bytes"),
        (b"\x1f\x00\x08\x01" + struct.pack(">I", 1) + b"\x05", "magic 1f000801: the first two bytes must be zero"),
        (b"\x00\x01\x08\x01" + struct.pack(">I", 1) + b"\x05", "magic 00010801"),
        (_header(0x07, (1,)) + b"\x05", "unknown IDX element type 0x07"),
        (bytes([0, 0, 8, 0]), "declares 0 dimensions"),
        (bytes([0, 0, 8, 3]) + struct.pack(">2I", 2, 2), "truncated IDX header: 3 dimensions need 16 bytes"),
        (_header(0x08, (2, 3)) + bytes(5), r"truncated IDX data: shape \(2x3\) of uint8 needs 18 bytes, the file has 17"),
        (_header(0x0D, (2,)) + bytes(7), r"truncated IDX data: shape \(2\) of float32"),
        (_header(0x08, (2, 3)) + bytes(8), "2 bytes of trailing garbage"),
    ],
)
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_rejects_malformed_files(tmp_path, content, message, compress):
    path = tmp_path / "bad.idx"
    path.write_bytes(gzip.compress(content) if compress else content)
    with pytest.raises(ValueError, match=message) as excinfo:
        read_idx(path)
    assert str(path) in str(excinfo.value)


def test_read_idx_rejects_truncated_gzip(tmp_path):
    path = tmp_path / "cut.idx.gz"
    path.write_bytes(gzip.compress(_header(0x08, (100,)) + bytes(range(100)))[:-10])
    with pytest.raises(ValueError, match="corrupt gzip data") as excinfo:
        read_idx(path)
    assert str(path) in str(excinfo.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.idx"):
        read_idx(tmp_path / "nowhere.idx")


# ---------------------------------------------------------------------------------------
# load_mnist on the real files
# ---------------------------------------------------------------------------------------


def test_load_mnist_default(mnist_dir):
    (x_train, y_train), (x_test, y_test) = load_mnist(mnist_dir)
    assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)
    assert x_train.dtype == np.float32 and x_test.dtype == np.float32
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert y_train.dtype == np.int64 and y_test.dtype == np.int64
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert x_test.min() == 0.0 and x_test.max() == 1.0
    np.testing.assert_array_equal(np.bincount(y_train, minlength=10), TRAIN_LABEL_COUNTS)
    np.testing.assert_array_equal(np.bincount(y_test, minlength=10), TEST_LABEL_COUNTS)
    raw_test = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(x_test, raw_test.reshape(10000, 784).astype(np.float32) / np.float32(255))


def test_load_mnist_is_cached_and_read_only(mnist_dir):
    (x_train, y_train), (x_test, _) = load_mnist(mnist_dir)
    (x_train_again, y_train_again), _ = load_mnist(mnist_dir)
    assert x_train_again is x_train and y_train_again is y_train
    for array in (x_train, y_train, x_test):
        assert not array.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        x_train[0, 0] = 1.0


def test_load_mnist_normalizations(mnist_dir):
    (x_unit, _), (x_unit_test, _) = load_mnist(mnist_dir, normalize="unit")
    (x_sym, _), (x_sym_test, _) = load_mnist(mnist_dir, normalize="symmetric")
    assert x_sym.dtype == np.float32
    assert x_sym.min() == -1.0 and x_sym.max() == 1.0
    np.testing.assert_array_equal(x_sym_test, (x_unit_test - np.float32(0.5)) / np.float32(0.5))
    (x_raw, _), _ = load_mnist(mnist_dir, normalize=None)
    assert x_raw.dtype == np.float32 and x_raw.min() == 0.0 and x_raw.max() == 255.0
    np.testing.assert_array_equal(x_raw[:100] / np.float32(255), x_unit[:100])
    _, (x_bytes_test, _) = load_mnist(mnist_dir, normalize=None, dtype=np.uint8, flatten=False)
    np.testing.assert_array_equal(x_bytes_test, read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz"))


def test_load_mnist_float64_unflattened_one_hot(mnist_dir):
    (x_train, y_train), (x_test, y_test) = load_mnist(mnist_dir, dtype=np.float64, flatten=False, one_hot=True)
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert x_train.dtype == np.float64 and x_train.max() == 1.0
    assert y_train.shape == (60000, 10) and y_test.shape == (10000, 10)
    assert y_train.dtype == np.float64
    assert set(np.unique(y_train)) == {0.0, 1.0}
    np.testing.assert_array_equal(y_train.sum(axis=1), 1.0)
    np.testing.assert_array_equal(y_train.sum(axis=0), TRAIN_LABEL_COUNTS)
    (_, labels), (_, test_labels) = load_mnist(mnist_dir)
    np.testing.assert_array_equal(y_train.argmax(axis=1), labels)
    np.testing.assert_array_equal(y_test.argmax(axis=1), test_labels)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"normalize": "minmax"}, "normalize must be 'unit', 'symmetric' or None"),
        ({"dtype": np.int32}, "dtype must be a floating type"),
        ({"dtype": np.uint8}, "dtype must be a floating type"),
    ],
)
def test_load_mnist_rejects_bad_options(mnist_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_mnist(mnist_dir, **kwargs)


# ---------------------------------------------------------------------------------------
# Missing and corrupt files: errors naming the file, no fall-back
# ---------------------------------------------------------------------------------------


def _corrupt_label_file(directory: Path) -> Path:
    """Replace the test labels in ``directory`` by a copy with one label changed."""
    path = directory / "t10k-labels-idx1-ubyte.gz"
    labels = read_idx(path)
    labels[0] = (labels[0] + 1) % 10
    path.unlink()
    write_idx(path, labels)
    return path


def test_checksum_mismatch_names_the_file(mnist_links):
    corrupt = _corrupt_label_file(mnist_links)
    with pytest.raises(ValueError, match="sha256 of the decompressed content") as excinfo:
        load_mnist(mnist_links)
    assert str(corrupt) in str(excinfo.value)
    assert data.MNIST_FILES["t10k-labels-idx1-ubyte"] in str(excinfo.value)


def test_verify_false_loads_modified_files_and_verify_true_still_checks(mnist_links, mnist_dir):
    _corrupt_label_file(mnist_links)
    _, (_, y_test) = load_mnist(mnist_links, verify=False)
    _, (_, y_real) = load_mnist(mnist_dir)
    assert y_test[0] != y_real[0]
    np.testing.assert_array_equal(y_test[1:], y_real[1:])
    with pytest.raises(ValueError, match="sha256"):
        load_mnist(mnist_links)  # the unverified arrays in the cache are not reused


def test_explicit_path_missing_file_is_an_error_not_a_fallback(mnist_links, mnist_dir, monkeypatch):
    monkeypatch.setenv("NNKERN_DATA", str(mnist_dir))
    (mnist_links / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="the path given to load_mnist") as excinfo:
        load_mnist(mnist_links)
    assert str(mnist_links / "train-labels-idx1-ubyte[.gz]") in str(excinfo.value)


def test_explicit_path_that_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist") as excinfo:
        load_mnist(tmp_path / "absent")
    assert str(tmp_path / "absent") in str(excinfo.value)


def test_nnkern_data_incomplete_is_an_error_not_a_fallback(mnist_links, monkeypatch):
    (mnist_links / "t10k-images-idx3-ubyte.gz").unlink()
    monkeypatch.setenv("NNKERN_DATA", str(mnist_links))
    monkeypatch.chdir(REPO_MNIST.parents[1])  # ./data/mnist would be complete here
    with pytest.raises(FileNotFoundError, match=r"\$NNKERN_DATA") as excinfo:
        load_mnist()
    assert "t10k-images-idx3-ubyte[.gz]" in str(excinfo.value)


def test_truncated_file_in_explicit_path(mnist_links):
    labels_path = mnist_links / "train-labels-idx1-ubyte.gz"
    content = gzip.decompress(labels_path.read_bytes())
    labels_path.unlink()
    raw_path = mnist_links / "train-labels-idx1-ubyte"  # an uncompressed file is read too
    raw_path.write_bytes(content[:-3])
    with pytest.raises(ValueError, match="truncated IDX data") as excinfo:
        load_mnist(mnist_links, verify=False)
    assert str(raw_path) in str(excinfo.value)


def test_uncompressed_files_verify(mnist_links):
    labels_path = mnist_links / "t10k-labels-idx1-ubyte.gz"
    content = gzip.decompress(labels_path.read_bytes())
    labels_path.unlink()
    (mnist_links / "t10k-labels-idx1-ubyte").write_bytes(content)
    _, (_, y_test) = load_mnist(mnist_links)
    np.testing.assert_array_equal(np.bincount(y_test), TEST_LABEL_COUNTS)


def test_inconsistent_files_are_rejected(tmp_path):
    _write_fake_mnist(tmp_path, marker=1)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(7, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"labels must be uint8 of shape \(3,\)"):
        load_mnist(tmp_path, verify=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 10, 1], dtype=np.uint8))
    with pytest.raises(ValueError, match="label 10 out of range"):
        load_mnist(tmp_path, verify=False)


# ---------------------------------------------------------------------------------------
# Lookup order
# ---------------------------------------------------------------------------------------


def _write_fake_mnist(directory: Path, marker: int) -> Path:
    """Small MNIST-shaped files whose pixels all equal ``marker``: 2 train, 3 test images."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", 2), ("t10k", 3)):
        write_idx(directory / f"{split}-images-idx3-ubyte.gz", np.full((count, 28, 28), marker, np.uint8))
        write_idx(directory / f"{split}-labels-idx1-ubyte.gz", np.arange(count, dtype=np.uint8))
    return directory


def _loaded_marker(path=None) -> int:
    (x_train, y_train), (x_test, _) = load_mnist(path, normalize=None, verify=False, download=False)
    assert x_train.shape == (2, 784) and x_test.shape == (3, 784)
    np.testing.assert_array_equal(y_train, [0, 1])
    return int(x_train[0, 0])


def test_lookup_order(isolated_lookup, monkeypatch):
    root = isolated_lookup
    explicit = _write_fake_mnist(root / "explicit", marker=1)
    from_env = _write_fake_mnist(root / "from_env", marker=2)
    local = _write_fake_mnist(root / "workdir" / "data" / "mnist", marker=3)
    cache = _write_fake_mnist(root / "xdg_cache" / "nnkern" / "mnist", marker=4)
    assert data.mnist_cache_dir() == cache
    monkeypatch.setenv("NNKERN_DATA", str(from_env))

    assert find_mnist(explicit) == explicit and _loaded_marker(explicit) == 1
    assert find_mnist() == from_env and _loaded_marker() == 2
    monkeypatch.delenv("NNKERN_DATA")
    assert find_mnist().resolve() == local and _loaded_marker() == 3
    (local / "train-images-idx3-ubyte.gz").unlink()  # an incomplete ./data/mnist is passed over
    assert find_mnist() == cache and _loaded_marker() == 4


def test_cache_dir_without_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.mnist_cache_dir() == tmp_path / ".cache" / "nnkern" / "mnist"


def test_real_files_from_cache_dir(isolated_lookup, mnist_dir):
    cache = isolated_lookup / "xdg_cache" / "nnkern" / "mnist"
    cache.mkdir(parents=True)
    for name in data.MNIST_FILES:
        (cache / f"{name}.gz").symlink_to(mnist_dir / f"{name}.gz")
    (_, y_train), _ = load_mnist(download=False)
    np.testing.assert_array_equal(np.bincount(y_train), TRAIN_LABEL_COUNTS)


def test_not_found_message_lists_every_place(isolated_lookup):
    local = isolated_lookup / "workdir" / "data" / "mnist"
    _write_fake_mnist(local, marker=3)
    (local / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as excinfo:
        load_mnist(download=False)
    message = str(excinfo.value)
    cache = isolated_lookup / "xdg_cache" / "nnkern" / "mnist"
    for expected in (
        "1. explicit path: none given",
        "2. $NNKERN_DATA: not set",
        f"3. ./data/mnist ({local}): missing t10k-labels-idx1-ubyte[.gz]",
        f"4. user cache ({cache}): no such directory",
        "5. download: disabled",
        "load_mnist(path=DIR)",
        "NNKERN_DATA=DIR",
    ):
        assert expected in message


# ---------------------------------------------------------------------------------------
# Downloads (urllib monkeypatched: no network in tests)
# ---------------------------------------------------------------------------------------


class FakeMirrors:
    """Stands in for urllib.request.urlopen: each mirror either raises or serves bytes."""

    def __init__(self, serve):
        self.serve = serve  # (mirror, file name) -> bytes, or raises
        self.calls = []

    def __call__(self, url, timeout=None):
        self.calls.append((url, timeout))
        mirror, name = url.rsplit("/", 1)
        return io.BytesIO(self.serve(mirror + "/", name.removesuffix(".gz")))


def test_download_failure_is_fast_and_listed(isolated_lookup, monkeypatch):
    def unreachable(mirror, name):
        raise urllib.error.URLError("Name or service not known")

    fake = FakeMirrors(unreachable)
    monkeypatch.setattr(urllib.request, "urlopen", fake)
    with pytest.raises(FileNotFoundError, match="download into .*: failed") as excinfo:
        load_mnist()
    # Each unreachable mirror is tried once, not once per file, with a short timeout.
    assert [url for url, _ in fake.calls] == [f"{m}train-images-idx3-ubyte.gz" for m in data.MNIST_MIRRORS]
    assert all(0 < timeout <= 30 for _, timeout in fake.calls)
    assert "Name or service not known" in str(excinfo.value)
    assert "not tried, no mirror answered: train-labels-idx1-ubyte.gz, t10k-images" in str(excinfo.value)
    cache = isolated_lookup / "xdg_cache" / "nnkern" / "mnist"
    assert not any(cache.iterdir())


def test_download_into_cache_skips_bad_mirrors(isolated_lookup, monkeypatch, mnist_dir):
    first, second, third = data.MNIST_MIRRORS

    def serve(mirror, name):
        if mirror == first:
            raise urllib.error.HTTPError(mirror + name, 403, "Forbidden", None, None)
        if mirror == second and name == "t10k-labels-idx1-ubyte":
            return gzip.compress(b"not the labels")  # fails the checksum: next mirror
        return (mnist_dir / f"{name}.gz").read_bytes()

    fake = FakeMirrors(serve)
    monkeypatch.setattr(urllib.request, "urlopen", fake)
    cache = find_mnist()
    assert cache == isolated_lookup / "xdg_cache" / "nnkern" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.gz" for n in data.MNIST_FILES)
    urls = [url for url, _ in fake.calls]
    assert sum(url.startswith(first) for url in urls) == 1
    assert f"{third}t10k-labels-idx1-ubyte.gz" in urls
    np.testing.assert_array_equal(np.bincount(read_idx(cache / "t10k-labels-idx1-ubyte.gz")), TEST_LABEL_COUNTS)

    fake.calls.clear()
    assert find_mnist() == cache and not fake.calls  # found in the cache now


# ---------------------------------------------------------------------------------------
# DataLoader, random_batch, one_hot
# ---------------------------------------------------------------------------------------


def _dataset(n: int, features: int = 3):
    x = np.arange(n * features, dtype=np.float32).reshape(n, features)
    y = np.arange(n, dtype=np.int64)  # y[i] is the index of x[i]: pairing is checkable
    return x, y


@pytest.mark.parametrize(
    "n, batch_size, drop_last, sizes",
    [
        (10, 3, False, [3, 3, 3, 1]),
        (10, 3, True, [3, 3, 3]),
        (9, 3, False, [3, 3, 3]),
        (9, 3, True, [3, 3, 3]),
        (2, 5, False, [2]),
        (2, 5, True, []),
        (1, 1, False, [1]),
        (0, 4, False, []),
    ],
)
@pytest.mark.parametrize("shuffle", [False, True])
def test_dataloader_batch_counts(n, batch_size, drop_last, sizes, shuffle):
    loader = DataLoader(*_dataset(n), batch_size, shuffle=shuffle, seed=0, drop_last=drop_last)
    assert len(loader) == len(sizes)
    assert [len(xb) for xb, _ in loader] == sizes
    assert [len(yb) for _, yb in loader] == sizes


def test_dataloader_unshuffled_yields_views_in_order():
    x, y = _dataset(23)
    batches = list(DataLoader(x, y, 5))
    for xb, yb in batches:
        assert np.shares_memory(xb, x) and np.shares_memory(yb, y)
    np.testing.assert_array_equal(np.concatenate([xb for xb, _ in batches]), x)
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in batches]), y)


@pytest.mark.parametrize("drop_last", [False, True])
def test_dataloader_shuffled_epoch_covers_each_sample_once(drop_last):
    x, y = _dataset(103)
    loader = DataLoader(x, y, 10, shuffle=True, seed=3, drop_last=drop_last)
    for _ in range(2):
        seen = []
        for xb, yb in loader:
            np.testing.assert_array_equal(xb, x[yb])  # x and y stay paired
            seen.extend(yb.tolist())
        assert len(set(seen)) == len(seen)
        if drop_last:
            assert len(seen) == len(loader) * 10 == 100
        else:
            assert sorted(seen) == list(range(103))


def _epoch_orders(loader, epochs=3):
    return [np.concatenate([yb.copy() for _, yb in loader]) for _ in range(epochs)]


def test_dataloader_seed_reproduces_and_epochs_differ():
    x, y = _dataset(50)
    first = _epoch_orders(DataLoader(x, y, 8, shuffle=True, seed=11))
    again = _epoch_orders(DataLoader(x, y, 8, shuffle=True, seed=11))
    other = _epoch_orders(DataLoader(x, y, 8, shuffle=True, seed=12))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])
    assert not np.array_equal(first[0], other[0])


def test_dataloader_shuffled_reuses_one_batch_buffer():
    x, y = _dataset(40)
    iterator = iter(DataLoader(x, y, 8, shuffle=True, seed=0))
    xb1, yb1 = next(iterator)
    assert not np.shares_memory(xb1, x) and not np.shares_memory(yb1, y)
    xb2, yb2 = next(iterator)
    assert np.shares_memory(xb1, xb2) and np.shares_memory(yb1, yb2)


def test_dataloader_one_hot_targets_and_read_only_source():
    x, labels = _dataset(12)
    targets = one_hot(labels % 10)
    x.flags.writeable = False
    for shuffle in (False, True):
        for xb, tb in DataLoader(x, targets, 5, shuffle=shuffle, seed=1):
            assert tb.shape == (len(xb), 10)
            np.testing.assert_array_equal(tb.argmax(axis=1), (xb[:, 0] / 3).astype(int) % 10)


@pytest.mark.parametrize(
    "args, message",
    [
        ((np.zeros((4, 2)), np.zeros(3), 2), "same number of samples"),
        ((np.zeros((4, 2)), np.zeros(4), 0), "batch_size must be a positive integer"),
        ((np.zeros((4, 2)), np.zeros(4), 2.5), "batch_size must be a positive integer"),
        ((np.zeros((4, 2)), np.zeros(4), True), "batch_size must be a positive integer"),
    ],
)
def test_dataloader_rejects_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        DataLoader(*args)


@pytest.mark.parametrize("shuffle", [False, True])
def test_dataloader_over_tuples_cuts_every_array_alike(shuffle):
    """Several inputs and outputs: the same samples in every array of a batch, and with a
    seed the same order as a loader over one array."""
    x, y = _dataset(23)
    second = -x[:, :2]
    loader = DataLoader((x, second), (y, y * 10), 5, shuffle=shuffle, seed=4)
    single = DataLoader(x, y, 5, shuffle=shuffle, seed=4)
    assert len(loader) == 5 and loader.samples == 23 and isinstance(loader.x, tuple)
    for ((xb, sb), (yb, tb)), (xb_single, yb_single) in zip(loader, single):
        np.testing.assert_array_equal(xb, x[yb])
        np.testing.assert_array_equal(sb, second[yb])
        np.testing.assert_array_equal(tb, yb * 10)
        np.testing.assert_array_equal(yb, yb_single)
    with pytest.raises(ValueError, match="same number of samples"):
        DataLoader((x, second[:5]), y, 5)
    with pytest.raises(ValueError, match="an empty tuple of arrays"):
        DataLoader((), y, 5)


def test_random_batch():
    x, y = _dataset(30)
    xb, yb = random_batch(x, y, 7, np.random.default_rng(5))
    assert xb.shape == (7, 3) and yb.shape == (7,)
    np.testing.assert_array_equal(xb, x[yb])
    assert len(set(yb.tolist())) == 7
    xb_again, yb_again = random_batch(x, y, 7, 5)
    np.testing.assert_array_equal(yb_again, yb)
    assert not np.shares_memory(xb, x)
    with pytest.raises(ValueError, match="cannot draw 31 distinct samples from 30"):
        random_batch(x, y, 31, 0)
    _, many = random_batch(x, y, 100, 0, replace=True)
    assert len(many) == 100 and len(set(many.tolist())) < 100


def test_one_hot():
    encoded = one_hot(np.array([2, 0, 9]))
    assert encoded.dtype == np.float32 and encoded.shape == (3, 10)
    np.testing.assert_array_equal(encoded.argmax(axis=1), [2, 0, 9])
    np.testing.assert_array_equal(encoded.sum(axis=1), 1)
    assert one_hot(np.array([1]), num_classes=3, dtype=np.float64).tolist() == [[0.0, 1.0, 0.0]]
    assert one_hot(np.array([], dtype=np.int64)).shape == (0, 10)
    with pytest.raises(ValueError, match="labels must lie in 0..9, got values from -1 to 3"):
        one_hot(np.array([3, -1]))
    with pytest.raises(ValueError, match="labels must lie in 0..2"):
        one_hot(np.array([3]), num_classes=3)
    with pytest.raises(ValueError, match="1-D integer array"):
        one_hot(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="1-D integer array"):
        one_hot(np.zeros((2, 2), dtype=int))
