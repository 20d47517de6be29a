"""Re-encodes DICOM files losslessly (pydicom 3 with pylibjpeg-openjpeg for
JPEG 2000 and pyjpegls, CharLS, for JPEG-LS), and times pydicom's decode of
what it wrote: the peer inference's decode is measured beside.

Usage: encode_slices.py {jpeg2000|jpeg-ls} OUT_DIR [--noise SIGMA] IN.dcm...
Writes OUT_DIR/<name of IN> and prints JSON: {"files": [...], "pixel_bytes":
N, "decode_s": best of three passes over every file}. --noise adds seeded
Gaussian noise of SIGMA stored values first, as a scanner's images carry
(synthetic slices are flat and compress far better than real ones).
"""

import json
import os
import sys
import time

import numpy as np
import pydicom
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

syntax = {"jpeg2000": JPEG2000Lossless, "jpeg-ls": JPEGLSLossless}[sys.argv[1]]
out = sys.argv[2]
paths, noise = sys.argv[3:], 0.0
if paths[:1] == ["--noise"]:
    noise, paths = float(paths[1]), paths[2:]
rng = np.random.RandomState(11)
written, pixel_bytes = [], 0
for path in paths:
    ds = pydicom.dcmread(path)
    pixel_bytes += len(ds.PixelData)
    if noise:
        pixels = ds.pixel_array.astype(np.int32) + rng.normal(0, noise, ds.pixel_array.shape).round().astype(np.int32)
        kind = ds.pixel_array.dtype
        ds.PixelData = np.clip(pixels, np.iinfo(kind).min, np.iinfo(kind).max).astype(kind).tobytes()
    ds.compress(syntax)
    target = os.path.join(out, os.path.basename(path))
    ds.save_as(target, enforce_file_format=True)
    written.append(target)

best = None
for _ in range(3):
    started = time.perf_counter()
    for path in written:
        pydicom.dcmread(path).pixel_array
    elapsed = time.perf_counter() - started
    best = elapsed if best is None else min(best, elapsed)
print(json.dumps({"files": written, "pixel_bytes": pixel_bytes, "decode_s": best}))
