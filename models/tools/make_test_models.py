#!/usr/bin/env python3
"""Builds the tiny ONNX models the tests use to cover layouts the zoo does not (a few hundred bytes each).

Run from the repository root: `python3 models/tools/make_test_models.py` (needs the `onnx` package). The outputs are
committed under tests/fixtures/models/, so tests never need Python.

- dynamic-cls.onnx: an Ultralytics-style classifier exported with dynamic=True: input [batch, 3, height, width],
  metadata task=classify, imgsz=[96, 128], four named classes. Global average pool -> linear -> logits.
- dynamic-nometa.onnx: the same graph without any metadata: only its shapes say what it is.
- bad-layout.onnx: an image-to-image model ([1,3,32,32] -> [1,3,32,32]), an output layout Outpost must refuse.
- defect-nan.onnx, defect-lowconf.onnx, defect-640.onnx: stand-ins for bad versions of the zoo's defect detector,
  with its metadata (task=detect, three classes) and its output layout [1, 7, candidates]. `nan` outputs NaN
  everywhere (a broken export); `lowconf` finds one box at score 0.3 on every frame (a model that installs fine but
  is far less confident); `640` expects 640x640 input, so it does not match a manifest that says 320.
"""

import pathlib

import onnx
from onnx import TensorProto, helper

OUT = pathlib.Path("tests/fixtures/models")


def classifier(metadata):
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 4])
    weights = helper.make_tensor("w", TensorProto.FLOAT, [3, 4], [4.0, -2.0, 0.5, 0.0, -1.0, 3.0, 0.5, 0.0, -1.0, -1.0, 0.5, 2.0])
    bias = helper.make_tensor("b", TensorProto.FLOAT, [4], [0.0, 0.0, 0.0, -1.0])
    nodes = [
        helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w", "b"], ["output0"]),
    ]
    graph = helper.make_graph(nodes, "tiny-classifier", [x], [y], [weights, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="outpost-tests")
    model.ir_version = 8
    for k, v in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    return model


def bad_layout():
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 3, 32, 32])
    graph = helper.make_graph([helper.make_node("Relu", ["images"], ["mask"])], "image-to-image", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="outpost-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


DEFECT_META = {
    "task": "detect",
    "stride": "32",
    "names": "{0: 'scratch', 1: 'dent', 2: 'stain'}",
    "end2end": "False",
}


def fake_detector(name, size, scores, nan=False):
    """[1,3,size,size] -> [1,7,candidates]: every candidate the same centred box with class scores `scores`; with
    `nan`, every output is NaN. The output depends on the input (through a zeroed mean) so nothing is folded away."""
    candidates = sum((size // s) ** 2 for s in (8, 16, 32))
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 7, candidates])
    c = size / 2
    rows = [c, c, size * 0.2, size * 0.2] + list(scores)
    const = helper.make_tensor("const", TensorProto.FLOAT, [1, 7, candidates], [v for v in rows for _ in range(candidates)])
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["zeroed"]),
    ]
    if nan:
        nodes.append(helper.make_node("Div", ["zeroed", "zero"], ["offset"]))
    else:
        nodes.append(helper.make_node("Identity", ["zeroed"], ["offset"]))
    nodes.append(helper.make_node("Add", ["const", "offset"], ["output0"]))
    graph = helper.make_graph(nodes, name, [x], [y], [const, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="outpost-tests")
    model.ir_version = 8
    for k, v in dict(DEFECT_META, imgsz=f"[{size}, {size}]").items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    return model


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {
        "task": "classify",
        "imgsz": "[96, 128]",
        "stride": "1",
        "names": "{0: 'ok', 1: 'scratch', 2: 'dent', 3: 'stain'}",
        "end2end": "False",
    }
    onnx.save(classifier(meta), OUT / "dynamic-cls.onnx")
    onnx.save(classifier({}), OUT / "dynamic-nometa.onnx")
    onnx.save(bad_layout(), OUT / "bad-layout.onnx")
    onnx.save(fake_detector("defect-nan", 320, [0.9, 0.0, 0.0], nan=True), OUT / "defect-nan.onnx")
    onnx.save(fake_detector("defect-lowconf", 320, [0.3, 0.0, 0.0]), OUT / "defect-lowconf.onnx")
    onnx.save(fake_detector("defect-640", 640, [0.9, 0.0, 0.0]), OUT / "defect-640.onnx")


if __name__ == "__main__":
    main()
