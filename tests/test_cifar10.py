"""CIFAR-10 files without torchvision and without unpickling: both layouts, a hostile pickle,
the download's checksum and extraction (on files made here; nothing is fetched)."""

import hashlib
import io
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch

from bnnkit import cifar10, data


def _batch(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), rng.integers(0, 10, size=n).tolist()


def _write_bin(path, flat, labels):
    records = np.concatenate([np.asarray(labels, np.uint8)[:, None], flat], axis=1)
    records.tofile(path)


def _s(b: bytes) -> bytes:  # Python 2 str
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<I", len(b)) + b)


def _int(v: int) -> bytes:
    return b"K" + bytes([v]) if 0 <= v < 256 else b"J" + struct.pack("<i", v)


def py2_batch_pickle(flat: np.ndarray, labels: list[int], data_global=None) -> bytes:
    """The bytes Python 2's cPickle (protocol 2) writes for a CIFAR-10 batch dict."""
    n = flat.shape[0]
    array = (data_global or b"cnumpy.core.multiarray\n_reconstruct\n") + b"cnumpy\nndarray\n" + _int(0) + b"\x85" + \
        _s(b"b") + b"\x87R" + b"(" + _int(1) + b"M" + struct.pack("<H", n) + b"M" + struct.pack("<H", 3072) + \
        b"\x86" + b"cnumpy\ndtype\n" + _s(b"u1") + _int(0) + _int(1) + b"\x87R" + b"(" + _int(3) + _s(b"|") + \
        b"NNN" + _int(-1) + _int(-1) + _int(0) + b"tb" + b"\x89" + _s(flat.tobytes()) + b"tb"
    label_list = b"](" + b"".join(_int(v) for v in labels) + b"e"
    names = b"](" + b"".join(_s(f"img_{i}.png".encode()) for i in range(n)) + b"e"
    return b"\x80\x02}(" + _s(b"data") + array + _s(b"labels") + label_list + _s(b"batch_label") + \
        _s(b"training batch 1 of 5") + _s(b"filenames") + names + b"u."


def _python_layout(root, n=6):
    os.makedirs(root / cifar10.PYTHON_DIR)
    batches = {}
    for k, name in enumerate([*cifar10.TRAIN_BATCHES, cifar10.TEST_BATCH]):
        flat, labels = _batch(n, k)
        (root / cifar10.PYTHON_DIR / name).write_bytes(py2_batch_pickle(flat, labels))
        batches[name] = flat, labels
    return batches


def _binary_layout(root, n=6):
    os.makedirs(root / cifar10.BINARY_DIR)
    batches = {}
    for k, name in enumerate([*cifar10.TRAIN_BATCHES, cifar10.TEST_BATCH]):
        flat, labels = _batch(n, k)
        _write_bin(root / cifar10.BINARY_DIR / f"{name}.bin", flat, labels)
        batches[name] = flat, labels
    (root / cifar10.BINARY_DIR / "batches.meta.txt").write_text("\n".join(cifar10.CLASSES) + "\n")
    return batches


def test_the_fixture_is_what_pythons_unpickler_reads():
    """Test-only check of the fixture itself (bytes made above, never a file from elsewhere)."""
    flat, labels = _batch(3, 0)
    doc = pickle.loads(py2_batch_pickle(flat, labels), encoding="bytes")
    assert np.array_equal(doc[b"data"], flat) and doc[b"labels"] == labels and doc[b"data"].dtype == np.uint8


@pytest.mark.parametrize("layout", ["binary", "python"])
def test_both_layouts_read_the_same_images(tmp_path, layout):
    batches = (_binary_layout if layout == "binary" else _python_layout)(tmp_path)
    images, labels = cifar10.read_cifar10(str(tmp_path), train=True)
    assert images.shape == (30, 32, 32, 3) and images.dtype == np.uint8 and labels.dtype == np.int64
    flat = np.concatenate([batches[n][0] for n in cifar10.TRAIN_BATCHES])
    # record layout: 1024 red, 1024 green, 1024 blue bytes, rows of 32
    assert np.array_equal(images[:, :, :, 0].reshape(30, -1), flat[:, :1024])
    assert np.array_equal(images[7, 2, 5], flat[7, [2 * 32 + 5, 1024 + 2 * 32 + 5, 2048 + 2 * 32 + 5]])
    assert labels.tolist() == sum((batches[n][1] for n in cifar10.TRAIN_BATCHES), [])
    test_images, _ = cifar10.read_cifar10(str(tmp_path), train=False)
    assert test_images.shape == (6, 32, 32, 3)


def test_load_dataset_cifar10_without_torchvision(tmp_path):
    _binary_layout(tmp_path)
    splits = data.load_dataset("cifar10", str(tmp_path))
    assert splits.num_classes == 10 and splits.input_shape == (3, 32, 32) and len(splits.train) == 30
    x, y = splits.test[2]
    images, labels = cifar10.read_cifar10(str(tmp_path), train=False)
    spec = splits.input_spec
    assert y == labels[2] and torch.equal(x, spec.normalize(images[2].transpose(2, 0, 1)[None].astype(np.float64))[0])
    torch.manual_seed(0)
    assert splits.train[0][0].shape == (3, 32, 32)
    assert spec.class_names == cifar10.CLASSES


def test_a_hostile_pickle_is_refused_without_running_anything(tmp_path):
    flat, labels = _batch(2, 0)
    marker = tmp_path / "created-by-the-pickle"
    # data = os.mkdir(marker) instead of numpy's _reconstruct: must not be called
    evil = b"\x80\x02}(" + _s(b"data") + b"cos\nmkdir\n" + _s(str(marker).encode()) + b"\x85R" + \
        _s(b"labels") + b"](" + _int(1) + _int(2) + b"eu."
    path = tmp_path / "evil_batch"
    path.write_bytes(evil)
    with pytest.raises(cifar10.CifarFormatError, match="not the uint8 numpy array"):
        cifar10.read_python_batch(str(path))
    assert not marker.exists()
    # the same structure as a real batch, but a different function in place of _reconstruct
    path.write_bytes(py2_batch_pickle(flat, labels, data_global=b"cos\nsystem\n"))
    with pytest.raises(cifar10.CifarFormatError, match="not the uint8 numpy array"):
        cifar10.read_python_batch(str(path))
    path.write_bytes(b"\x80\x02cos\nsystem\n(S'true'\ntR.")  # a protocol-0 STRING argument: still inert
    with pytest.raises(cifar10.CifarFormatError, match="not a CIFAR-10 batch"):
        cifar10.read_python_batch(str(path))
    path.write_bytes(b"\x80\x02c__builtin__\nobject\n)\x81}b.")  # NEWOBJ of a class, BUILD on it: inert
    with pytest.raises(cifar10.CifarFormatError, match="not a CIFAR-10 batch"):
        cifar10.read_python_batch(str(path))
    path.write_bytes(b"\x80\x02(i__main__\nX\no.")  # INST: not part of a batch
    with pytest.raises(cifar10.CifarFormatError, match="opcode INST"):
        cifar10.read_python_batch(str(path))
    path.write_bytes(py2_batch_pickle(flat, labels)[:-500])
    with pytest.raises(cifar10.CifarFormatError, match="malformed|without STOP"):
        cifar10.read_python_batch(str(path))


def test_binary_files_of_the_wrong_size_or_labels_are_refused(tmp_path):
    (tmp_path / "short.bin").write_bytes(b"\x00" * 3000)
    with pytest.raises(cifar10.CifarFormatError, match="3073-byte"):
        cifar10.read_binary_batch(str(tmp_path / "short.bin"))
    flat, _ = _batch(2, 0)
    _write_bin(tmp_path / "labels.bin", flat, [3, 12])
    with pytest.raises(cifar10.CifarFormatError, match="labels outside 0..9"):
        cifar10.read_binary_batch(str(tmp_path / "labels.bin"))
    with pytest.raises(FileNotFoundError, match="pass --download"):
        cifar10.read_cifar10(str(tmp_path), train=True)


def _archive(tmp_path, extra_members=()):
    src = tmp_path / "src"
    _binary_layout(src)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src / cifar10.BINARY_DIR, arcname=cifar10.BINARY_DIR)
        for name, payload in extra_members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


class _Response(io.BytesIO):
    def __init__(self, payload):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def test_download_checks_the_md5_and_extracts_only_the_batches(tmp_path, monkeypatch):
    payload = _archive(tmp_path, extra_members=[("../escaped.txt", b"x"), (f"{cifar10.BINARY_DIR}/run.sh", b"x")])
    md5 = hashlib.md5(payload).hexdigest()
    urls = []
    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: urls.append(url) or _Response(payload))
    root = tmp_path / "data"
    with pytest.raises(cifar10.CifarFormatError, match="is not the published"):
        cifar10.download_cifar10(str(root), md5="0" * 32, progress=False)
    assert not (root / cifar10.ARCHIVE_NAME).exists() and not (root / cifar10.BINARY_DIR).exists()
    directory = cifar10.download_cifar10(str(root), md5=md5, progress=False)
    assert urls == [cifar10.ARCHIVE_URL] * 2
    assert sorted(os.listdir(directory)) == sorted(["batches.meta.txt", *(f"{n}.bin" for n in cifar10.TRAIN_BATCHES),
                                                    f"{cifar10.TEST_BATCH}.bin"])
    assert not (tmp_path / "escaped.txt").exists() and not (root.parent / "escaped.txt").exists()
    assert cifar10.read_cifar10(str(root), train=False)[0].shape == (6, 32, 32, 3)
    cifar10.download_cifar10(str(root), md5=md5, progress=False)  # the archive is there: not fetched again
    assert len(urls) == 2
