"""Times a model under onnxruntime (one thread, as the bench gives tract
one core's worth): inferences/s and p99 per batch, for each batch size.

Usage: onnx_bench.py MODEL.onnx BATCH[,BATCH...] RUNS
Prints one JSON object: {"<batch>": {"per_s": ..., "p99_ms": ...}}.
"""

import json
import sys
import time

import numpy as np
import onnxruntime

model, batches, runs = sys.argv[1], [int(b) for b in sys.argv[2].split(",")], int(sys.argv[3])
options = onnxruntime.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
out = {}
for batch in batches:
    x = np.random.RandomState(3).uniform(0, 1, size=(batch, 1, 64, 64)).astype(np.float32)
    for _ in range(5):
        session.run(None, {name: x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - t)
    times.sort()
    out[str(batch)] = {"per_s": batch * runs / sum(times), "p99_ms": times[int(0.99 * (len(times) - 1))] * 1000}
print(json.dumps(out))
