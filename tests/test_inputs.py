"""InputSpec: JSON round trip, validation naming the field, the datasets' specs."""

import json

import numpy as np
import pytest

from bnnkit import data
from bnnkit.artifacts import ArtifactError
from bnnkit.inputs import InputSpec


@pytest.mark.parametrize("name", ["digits", "cifar10", "synthetic"])
def test_dataset_specs_round_trip_through_json(name):
    spec = data.dataset_input_spec(name, input_shape=(3, 8, 8))
    again = InputSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert again == spec
    assert spec.to_text().startswith("input: float32 (N, ")


def test_the_datasets_record_their_preprocessing():
    digits = data.dataset_input_spec("digits")
    assert (digits.shape, digits.value_range, digits.scale, digits.offset) == ((1, 8, 8), (0, 16), 0.125, -1.0)
    assert digits.class_names == tuple("0123456789")
    cifar = data.dataset_input_spec("cifar10")
    assert cifar.mean == data.CIFAR10_MEAN and cifar.std == data.CIFAR10_STD and cifar.scale == 1 / 255
    assert cifar.class_names[:3] == ("airplane", "automobile", "bird")
    imagenet = data.dataset_input_spec("imagefolder")  # no data dir: no class names
    assert imagenet.shape == (3, data.IMAGENET_CROP, data.IMAGENET_CROP) and imagenet.resize == data.IMAGENET_RESIZE
    assert imagenet.mean == data.IMAGENET_MEAN and imagenet.class_names is None
    assert data.dataset_input_spec("synthetic", input_shape=(5, 5)) is None  # no layout for 2-D inputs
    assert data.dataset_input_spec("synthetic", input_shape=(16,)).layout == "NC"


def _spec_json():
    return data.dataset_input_spec("cifar10").to_json()


@pytest.mark.parametrize("edit, field", [
    (lambda j: j.update(version=2), "input_spec.version"),
    (lambda j: j.update(shape=[3, -1, 32]), "input_spec.shape"),
    (lambda j: j.update(shape="3x32x32"), "input_spec.shape"),
    (lambda j: j.update(dtype="float16"), "input_spec.dtype"),
    (lambda j: j.update(layout="NHWC"), "input_spec.layout"),
    (lambda j: j.update(layout=["N"]), "input_spec.layout"),
    (lambda j: j.update(layout="NC"), "input_spec.layout"),
    (lambda j: j["preprocessing"].update(mean=[0.5, 0.5]), "input_spec.preprocessing.mean"),
    (lambda j: j["preprocessing"].update(std=[0.2, 0.0, 0.2]), "input_spec.preprocessing.std"),
    (lambda j: j["preprocessing"].update(std=None), "input_spec.preprocessing.mean / preprocessing.std"),
    (lambda j: j["preprocessing"].update(scale=0), "input_spec.preprocessing.scale"),
    (lambda j: j["preprocessing"].update(scale="1/255"), "input_spec.preprocessing.scale"),
    (lambda j: j["preprocessing"].update(offset=float("nan")), "input_spec.preprocessing.offset"),
    (lambda j: j["preprocessing"].update(value_range=[255, 0]), "input_spec.preprocessing.value_range"),
    (lambda j: j["preprocessing"].update(resize=16), "input_spec.preprocessing.resize"),
    (lambda j: j["preprocessing"].update(resize=True), "input_spec.preprocessing.resize"),
    (lambda j: j["preprocessing"].pop("resize"), "input_spec.preprocessing"),
    (lambda j: j.update(class_names=["cat", "cat"]), "input_spec.class_names"),
    (lambda j: j.update(class_names=[1, 2]), "input_spec.class_names"),
    (lambda j: j.update(extra=1), "input_spec"),
    (lambda j: j.pop("class_names"), "input_spec"),
])
def test_a_malformed_spec_names_the_field(edit, field):
    obj = _spec_json()
    edit(obj)
    with pytest.raises(ArtifactError) as e:
        InputSpec.from_json(obj)
    assert str(e.value).startswith(field + ":"), str(e.value)


def test_from_json_names_where_the_spec_came_from():
    with pytest.raises(ArtifactError, match=r"^'x/manifest.json' input_spec: expected an object"):
        InputSpec.from_json([1, 2], where="'x/manifest.json' input_spec")


def test_normalize_and_range_checks():
    spec = data.dataset_input_spec("digits")
    raw = np.array([0, 8, 16], dtype=np.uint8).repeat(64 // 3 + 1)[:64].reshape(1, 1, 8, 8)
    x = spec.normalize(raw)
    assert set(x.unique().tolist()) == {-1.0, 0.0, 1.0}
    spec.check_range(raw, "ok")
    with pytest.raises(ValueError, match=r"a.npy: values span \[0, 255\]; this model's raw inputs are in \[0, 16\]"):
        spec.check_range(raw.astype(np.int64) * 255 // 16, "a.npy")
    with pytest.raises(ValueError, match="shape"):
        spec.normalize(np.zeros((1, 8, 8)))
    assert spec.pixels_to_raw(np.array([0, 255], np.uint8)).tolist() == [0.0, 16.0]


def test_the_format_documents_the_digits_spec_as_written():
    import os
    import re

    path = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "format.md")
    example = re.search(r"## input_spec.*?```json\n(.*?)```", open(path).read(), re.S).group(1)
    assert json.loads(example) == data.dataset_input_spec("digits").to_json()
