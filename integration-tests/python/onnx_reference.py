"""Runs an ONNX model with onnxruntime (the reference runtime) on inputs
seeded for reproducibility, for tract's output to be checked against.

Usage: onnx_reference.py MODEL.onnx OUT.json
Writes {"shape": [N, 1, H, W], "inputs": [...], "outputs": {name: [...]}}:
six slices of 64x64 in [0, 1], five uniform noise below 0.5 and one dark with a
bright block.
"""

import json
import sys

import numpy as np
import onnxruntime

model, out = sys.argv[1], sys.argv[2]
rng = np.random.RandomState(7)
slices = rng.uniform(0.0, 1.0, size=(6, 1, 64, 64)).astype(np.float32) * 0.5
slices[5] = 0.0
slices[5, 0, 20:32, 20:32] = 0.625
session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
names = [o.name for o in session.get_outputs()]
results = session.run(names, {session.get_inputs()[0].name: slices})
with open(out, "w") as f:
    json.dump({
        "shape": list(slices.shape),
        "inputs": slices.reshape(-1).tolist(),
        "outputs": {n: r.reshape(-1).tolist() for n, r in zip(names, results)},
    }, f)
