#!/usr/bin/env python3
"""onnxruntime from Python on an ONNX model: images/s at a batch size, all cores, the same
random-input protocol as `ctsentry bench --engine` (one warm-up call, then ~SECONDS of calls).

    python3 scripts/bench_ort_python.py models/densenet121-covid.onnx --batch 8
"""
import argparse
import os
import time

import numpy as np
import onnxruntime as ort

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--seconds", type=float, default=10.0)
a = ap.parse_args()
so = ort.SessionOptions()
so.intra_op_num_threads = os.cpu_count()
s = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
x = np.random.default_rng(7).uniform(-1, 1, (a.batch, 3, 224, 224)).astype(np.float32)
s.run(None, {"input": x})
t, n = time.perf_counter(), 0
while time.perf_counter() - t < a.seconds or n == 0:
    s.run(None, {"input": x})
    n += a.batch
print(f"onnxruntime {ort.__version__} (python), batch {a.batch}: {n / (time.perf_counter() - t):.1f} images/s")
