#!/usr/bin/env python3
"""onnxruntime from Python on an ONNX model: images/s at a batch size, all cores, the same
random-input protocol as `ctsentry bench --engine` (one warm-up call, then ~SECONDS of calls).
With `--ctsentry BIN`, in the same run and first: `ctsentry bench --engine all` on the same
bundle (every engine and precision this machine runs, the int8 variant's row with its parity);
and where the bundle's manifest names an int8 variant (`[int8] file`), onnxruntime on it too.

    python3 scripts/bench_ort_python.py models/densenet121-covid.onnx --batch 8
    python3 scripts/bench_ort_python.py models/densenet121-covid.onnx --batch 4 --seconds 5 --ctsentry target/release/ctsentry
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
import tomllib

import numpy as np
import onnxruntime as ort


def images_per_s(model, batch, seconds):
    so = ort.SessionOptions()
    so.intra_op_num_threads = os.cpu_count()
    s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(7).uniform(-1, 1, (batch, 3, 224, 224)).astype(np.float32)
    s.run(None, {"input": x})
    t, n = time.perf_counter(), 0
    while time.perf_counter() - t < seconds or n == 0:
        s.run(None, {"input": x})
        n += batch
    return n / (time.perf_counter() - t)


ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("model")
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--seconds", type=float, default=10.0)
ap.add_argument("--ctsentry", help="also run `ctsentry bench --engine all` on the same bundle, first")
a = ap.parse_args()
models = [("f32", a.model)]
manifest = os.path.splitext(a.model)[0] + ".toml"
if os.path.exists(manifest):
    int8 = tomllib.load(open(manifest, "rb")).get("int8")
    if int8:
        models.append(("int8", os.path.join(os.path.dirname(os.path.abspath(a.model)), int8["file"])))
if a.ctsentry:
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as cfg:
        cfg.write(f'[model]\npath = "{os.path.abspath(a.model)}"\n')
        cfg.flush()
        out = subprocess.run([a.ctsentry, "--config", cfg.name, "bench", "--engine", "all", "--batch", str(a.batch), "--seconds", str(a.seconds)],
                             capture_output=True, text=True)
        print(out.stdout, end="")
        if out.returncode != 0:
            sys.exit(f"ctsentry bench failed: {out.stderr[-2000:]}")
for precision, path in models:
    print(f"{'onnxruntime':<12} {precision:<5} {'(python ' + ort.__version__ + ')':<28} batch {a.batch:>3}  {images_per_s(path, a.batch, a.seconds):>8.1f} images/s")
