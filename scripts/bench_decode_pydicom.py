#!/usr/bin/env python3
"""Decode throughput of pydicom + pylibjpeg on the same files as `cargo bench --bench decode`:
bytes in memory -> pixel array -> Hounsfield units (float32), one thread, best of three runs.

    pip install pydicom pylibjpeg pylibjpeg-libjpeg numpy
    python3 scripts/bench_decode_pydicom.py [FOLDER]
"""
import io
import os
import sys
import time

import numpy as np
import pydicom

folder = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "../../shared/data/covid-ct-md/P001")
files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
blobs = [open(f, "rb").read() for f in files]
best = float("inf")
for _ in range(3):
    t = time.perf_counter()
    for b in blobs:
        ds = pydicom.dcmread(io.BytesIO(b))
        hu = ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
    best = min(best, (time.perf_counter() - t) / len(blobs))
print(f"pydicom+pylibjpeg decode ({len(blobs)} files, 1 thread, from memory): {1 / best:.1f} slices/s ({best * 1e3:.2f} ms/slice)")
