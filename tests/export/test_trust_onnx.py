"""The ONNX graph of an export attacked as a class (issue 18, section 6): no external data
anywhere in it (the runtime would read an unlisted file), a corrupt or unknown-op graph is one
line, and the onnxruntime and trained runtimes check the whole manifest first."""

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bnnkit.artifacts import ArtifactError

from hostile import cli, edit_json, one_line, reseal_export


@pytest.fixture
def export_dir(tmp_path, digits_artifact):
    out = tmp_path / "export"
    shutil.copytree(digits_artifact, out)
    return out


def _external(name: str, dims: list[int], location: str = "secret.bin") -> TensorProto:
    """A float tensor whose data lives in another file of the directory."""
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims)
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * int(np.prod(dims))))):
        t.external_data.add(key=key, value=value)
    return t


def _model_with(where: str) -> onnx.ModelProto:
    """``Y = X + W`` for X of shape (N, 10), where W is external data placed ``where``: in an
    If branch's initializer, a Constant node's attribute inside the branch, a sparse
    initializer, or a function body."""
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 10])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 10])
    w_out = helper.make_tensor_value_info("W", TensorProto.FLOAT, [10])
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    zeros = helper.make_tensor("zeros", TensorProto.FLOAT, [10], [0.0] * 10)
    else_branch = helper.make_graph([helper.make_node("Identity", ["zeros"], ["W"])], "else", [], [w_out], [zeros])
    functions, initializers, sparse, nodes = [], [cond], [], []
    if where == "if initializer":
        then = helper.make_graph([helper.make_node("Identity", ["secret"], ["W"])], "then", [], [w_out],
                                 [_external("secret", [10])])
    elif where == "if constant attribute":
        then = helper.make_graph([helper.make_node("Constant", [], ["W"], value=_external("value", [10]))], "then", [],
                                 [w_out])
    if where.startswith("if"):
        nodes = [helper.make_node("If", ["cond"], ["W"], then_branch=then, else_branch=else_branch),
                 helper.make_node("Add", ["X", "W"], ["Y"])]
    elif where == "sparse initializer":
        values = _external("W_values", [10])
        indices = helper.make_tensor("W_indices", TensorProto.INT64, [10], list(range(10)))
        sparse = [helper.make_sparse_tensor(values, indices, [10])]
        sparse[0].values.name = "W"
        nodes = [helper.make_node("Add", ["X", "W"], ["Y"])]
    else:  # function body
        body = [helper.make_node("Constant", [], ["w"], value=_external("value", [10])),
                helper.make_node("Add", ["x", "w"], ["y"])]
        functions = [helper.make_function("bnnkit.test", "AddSecret", ["x"], ["y"], body,
                                          [helper.make_opsetid("", 17)])]
        nodes = [helper.make_node("AddSecret", ["X"], ["Y"], domain="bnnkit.test")]
    graph = helper.make_graph(nodes, "g", [x], [y], initializers, sparse_initializer=sparse)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("bnnkit.test", 1)],
                             functions=functions)


PLACES = ["if initializer", "if constant attribute", "sparse initializer", "function body"]


def test_the_external_data_payload_is_live(export_dir):
    """onnxruntime given the file by path reads the unlisted file and returns its bytes through
    the outputs: the attack the check must stop."""
    import onnxruntime as ort

    secret = np.arange(10, dtype=np.float32) + 100
    (export_dir / "secret.bin").write_bytes(secret.tobytes())
    onnx.save(_model_with("if initializer"), str(export_dir / "model.onnx"))
    session = ort.InferenceSession(str(export_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"X": np.zeros((1, 10), np.float32)})[0]
    assert np.array_equal(out[0], secret)


@pytest.mark.parametrize("place", PLACES)
def test_external_data_anywhere_in_the_graph_is_refused(export_dir, tmp_path, capsys, place):
    (export_dir / "secret.bin").write_bytes(np.zeros(10, np.float32).tobytes())  # not listed
    onnx.save(_model_with(place), str(export_dir / "model.onnx"))
    reseal_export(export_dir, "model.onnx")  # as an attacker would: the graph is listed and sealed
    np.save(tmp_path / "x.npy", np.zeros((1, 8, 8)))
    code, _, err = cli(["predict", str(export_dir), str(tmp_path / "x.npy"), "--runtime", "onnxruntime"], capsys)
    assert code == 2 and "refers to external data" in one_line(err), err
    code, out, err = cli(["validate", str(export_dir), "--samples", "4", "--runtime", "onnxruntime-cpu"], capsys)
    assert code == 1 and "refers to external data" in err and "Traceback" not in out + err


@pytest.mark.parametrize("case", ["garbage", "truncated", "unknown op"])
def test_a_corrupt_or_unknown_op_graph_is_one_line(export_dir, tmp_path, capsys, case):
    path = export_dir / "model.onnx"
    if case == "garbage":
        path.write_bytes(b"\x08\x07garbage" * 100)
        match = "is not a readable ONNX model"
    elif case == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
        match = "is not a readable ONNX model|cannot be loaded by onnxruntime"
    else:
        model = onnx.load(str(path))
        model.graph.node[0].op_type = "NoSuchOp"
        onnx.save(model, str(path))
        match = "cannot be loaded by onnxruntime"
    reseal_export(export_dir, "model.onnx")
    np.save(tmp_path / "x.npy", np.zeros((1, 8, 8)))
    code, _, err = cli(["predict", str(export_dir), str(tmp_path / "x.npy"), "--runtime", "onnxruntime"], capsys)
    import re

    assert code == 2 and re.search(match, one_line(err)), err


@pytest.mark.parametrize("runtime", ["onnxruntime", "trained"])
@pytest.mark.parametrize("edit", ["unknown field", "layers garbage", "graph node", "format version"])
def test_every_runtime_checks_the_whole_manifest(export_dir, tmp_path, capsys, runtime, edit):
    """The packed model is not what these runtimes run, but its manifest describes the export:
    a malformed field refuses the export in one line, whichever runtime is asked for."""
    change = {"unknown field": lambda m: m.update(loader="x"),
              "layers garbage": lambda m: m.update(layers=[1]),
              "graph node": lambda m: m["graph"]["nodes"][1].update(op="call_function", target="builtins.eval"),
              "format version": lambda m: m.update(format_version=2)}[edit]
    edit_json(export_dir / "manifest.json", change)
    np.save(tmp_path / "x.npy", np.zeros((1, 8, 8)))
    code, _, err = cli(["predict", str(export_dir), str(tmp_path / "x.npy"), "--runtime", runtime], capsys)
    line = one_line(err)
    assert code == 2 and ("manifest of" in line or "format version 2" in line), err


@pytest.mark.parametrize("spec", ["[" * 100_000 + "]" * 100_000, json.dumps({"version": 1, "shape": [[[[[1]]]]]}),
                                  json.dumps({"version": 1, "shape": "abc"}), "{"])
def test_a_malformed_input_spec_in_onnx_metadata_is_one_line(export_dir, tmp_path, capsys, spec):
    model = onnx.load(str(export_dir / "model.onnx"))
    for prop in model.metadata_props:
        if prop.key == "bnnkit.input_spec":
            prop.value = spec
    onnx.save(model, str(export_dir / "model.onnx"))
    reseal_export(export_dir, "model.onnx")
    np.save(tmp_path / "x.npy", np.zeros((1, 8, 8)))
    code, _, err = cli(["predict", str(export_dir), str(tmp_path / "x.npy"), "--runtime", "onnxruntime"], capsys)
    assert code == 2 and "bnnkit.input_spec" in one_line(err), err


def test_the_checks_name_the_tensor(export_dir):
    from bnnkit.export.validation.runtimes import check_onnx_model

    data = _model_with("if constant attribute").SerializeToString()
    with pytest.raises(ArtifactError, match="node 'Constant' attribute 'value'"):
        check_onnx_model(data, "m.onnx")
