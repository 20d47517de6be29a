"""Builds Meridian's demonstration triage model, ich-demo.onnx, with
onnx.helper (nothing downloaded; the same bytes on every run).

A DEMONSTRATION, NOT A CLINICAL MODEL. It flags a hyperdense region in a
head-CT-like slice: input `slices` [N, 1, 64, 64] float32, each slice's
Hounsfield units windowed by the caller to [0, 1] (centre 70, width 40);
the model averages 4x4 blocks, takes each slice's brightest block m, and
outputs `ich` [N] = sigmoid(20 (m - 0.5)): near 1 where a block of about
4 mm reads like fresh blood, near 0 for brain.

Usage: python scripts/make-demo-model.py deploy/examples/dev/models/ich-demo.onnx
(onnx 1.17; the committed file is its output, byte for byte)
"""

import sys

import onnx
from onnx import TensorProto, helper

slices = helper.make_tensor_value_info("slices", TensorProto.FLOAT, ["N", 1, 64, 64])
ich = helper.make_tensor_value_info("ich", TensorProto.FLOAT, ["N"])
half = helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])
gain = helper.make_tensor("gain", TensorProto.FLOAT, [], [20.0])
nodes = [
    helper.make_node("AveragePool", ["slices"], ["blocks"], kernel_shape=[4, 4], strides=[4, 4]),
    helper.make_node("ReduceMax", ["blocks"], ["brightest"], axes=[1, 2, 3], keepdims=0),
    helper.make_node("Sub", ["brightest", "half"], ["above"]),
    helper.make_node("Mul", ["above", "gain"], ["logit"]),
    helper.make_node("Sigmoid", ["logit"], ["ich"]),
]
graph = helper.make_graph(nodes, "ich-demo", [slices], [ich], initializer=[half, gain])
model = helper.make_model(
    graph,
    opset_imports=[helper.make_opsetid("", 13)],
    producer_name="meridian",
    producer_version="1",
    doc_string="Meridian demonstration model: flags a hyperdense region in a head-CT-like slice. Not a clinical model.",
)
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, sys.argv[1])
