#!/usr/bin/env python3
"""Writes tiny-densenet.onnx and its manifest: a model with the shipped model's contract (input
`input` [N,3,224,224] NCHW; outputs `prob` [N,1] and `cam` [N,7,7]) but a handful of weights, so
tests run real inference in milliseconds.

    pip install onnx && python3 models/testdata/make_tiny_model.py

Graph: AveragePool 32×32/32 -> [N,3,7,7]; 1×1 Conv (3->4) + ReLU = features; GlobalAveragePool,
Gemm (4->1), Sigmoid = prob; the class activation map = the Gemm weights applied as a 1×1 Conv
to the features (what a DenseNet head's CAM is), reshaped to [N,7,7].

Also tiny-densenet.int8.onnx, its int8 variant as NNCF writes one (models/training/quantize.py):
the convolution's input through QuantizeLinear/DequantizeLinear (int8, scale 3/127) and its
weights stored as int8 with a DequantizeLinear (scale 1/127), the head in float. Its sha256 is
printed; tests write the manifest's [int8] table themselves.
"""
import hashlib
import os

import onnx
from onnx import TensorProto, helper

W1 = [[0.9, 0.5, 0.1], [0.2, 0.8, -0.3], [-0.5, 0.4, 0.7], [0.3, -0.2, 0.6]]
B1 = [0.05, -0.1, 0.2, 0.0]
W2 = [1.5, -0.7, 0.9, 0.4]
B2 = [-0.25]

here = os.path.dirname(os.path.abspath(__file__))
t = lambda name, dims, vals: helper.make_tensor(name, TensorProto.FLOAT, dims, [float(v) for row in vals for v in (row if isinstance(row, list) else [row])])
nodes = [
    helper.make_node("AveragePool", ["input"], ["pooled"], kernel_shape=[32, 32], strides=[32, 32]),
    helper.make_node("Conv", ["pooled", "w1", "b1"], ["pre"]),
    helper.make_node("Relu", ["pre"], ["features"]),
    helper.make_node("GlobalAveragePool", ["features"], ["gap"]),
    helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
    helper.make_node("Gemm", ["flat", "w2", "b2"], ["logit"], transB=1),
    helper.make_node("Sigmoid", ["logit"], ["prob"]),
    helper.make_node("Conv", ["features", "w2c"], ["cam4"]),
    helper.make_node("Reshape", ["cam4", "cam_shape"], ["cam"]),
]
inits = [
    t("w1", [4, 3, 1, 1], W1),
    t("b1", [4], B1),
    t("w2", [1, 4], [W2]),
    t("b2", [1], B2),
    t("w2c", [1, 4, 1, 1], [W2]),
    helper.make_tensor("cam_shape", TensorProto.INT64, [3], [-1, 7, 7]),
]
graph = helper.make_graph(
    nodes,
    "tiny-densenet",
    [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
    [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1]), helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["N", 7, 7])],
    inits,
)


def save(graph, name):
    """Writes `graph` as models/testdata/NAME (opset 17, IR 8, checked); returns (path, bytes)."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="ctsentry-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = os.path.join(here, name)
    data = model.SerializeToString()
    open(path, "wb").write(data)
    return path, data


path, data = save(graph, "tiny-densenet.onnx")
sha = hashlib.sha256(data).hexdigest()
open(os.path.join(here, "tiny-densenet.toml"), "w").write(f'''# Test model (models/testdata/make_tiny_model.py): the shipped model's contract, a few weights.
[model]
name = "tiny-densenet"
version = "0.0.1-test"
sha256 = "{sha}"
description = "Test fixture, not a classifier"

[input]
name = "input"
layout = "NCHW"
size = 224
channels = 3

[preprocess]
window_center = -600.0
window_width = 1500.0
lung_mask = true
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]

[output]
prob = "prob"
cam = "cam"

[decision]
threshold = 0.5
method = "fixed for tests"
''')
print(path, len(data), "bytes, sha256", sha)

# The int8 variant: the same graph with the 1x1 convolution quantized.
W_SCALE, X_SCALE = 1 / 127, 3 / 127
qnodes = [
    helper.make_node("QuantizeLinear", ["pooled", "x_scale", "x_zero"], ["pooled_q"]),
    helper.make_node("DequantizeLinear", ["pooled_q", "x_scale", "x_zero"], ["pooled_dq"]),
    helper.make_node("DequantizeLinear", ["w1_q", "w_scale", "w_zero"], ["w1_dq"]),
]
conv = helper.make_node("Conv", ["pooled_dq", "w1_dq", "b1"], ["pre"])
inodes = [nodes[0]] + qnodes + [conv] + nodes[2:]
iinits = [
    helper.make_tensor("w1_q", TensorProto.INT8, [4, 3, 1, 1], [int(round(v / W_SCALE)) for row in W1 for v in row]),
    helper.make_tensor("w_scale", TensorProto.FLOAT, [], [W_SCALE]),
    helper.make_tensor("w_zero", TensorProto.INT8, [], [0]),
    helper.make_tensor("x_scale", TensorProto.FLOAT, [], [X_SCALE]),
    helper.make_tensor("x_zero", TensorProto.INT8, [], [0]),
] + inits[1:]
igraph = helper.make_graph(inodes, "tiny-densenet-int8", graph.input, graph.output, iinits)
ipath, idata = save(igraph, "tiny-densenet.int8.onnx")
print(ipath, len(idata), "bytes, sha256", hashlib.sha256(idata).hexdigest())
