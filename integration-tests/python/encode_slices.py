"""Re-encodes DICOM files losslessly (pydicom 3 with pylibjpeg-openjpeg for
JPEG 2000 and pyjpegls, CharLS, for JPEG-LS), and times pydicom's decode of
what it wrote: the peer inference's decode is measured beside.

Usage: encode_slices.py {jpeg2000|jpeg-ls} OUT_DIR IN.dcm...
Writes OUT_DIR/<name of IN> and prints JSON: {"files": [...], "pixel_bytes":
N, "decode_s": best of three passes over every file}.
"""

import json
import os
import sys
import time

import pydicom
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

syntax = {"jpeg2000": JPEG2000Lossless, "jpeg-ls": JPEGLSLossless}[sys.argv[1]]
out = sys.argv[2]
written, pixel_bytes = [], 0
for path in sys.argv[3:]:
    ds = pydicom.dcmread(path)
    pixel_bytes += len(ds.PixelData)
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
