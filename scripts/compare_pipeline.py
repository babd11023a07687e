#!/usr/bin/env python3
"""End-to-end throughput, side by side on the same machine and files: ctsentry (`score`, the
daemon's decode -> preprocess -> infer path) against a Python pipeline doing the same steps with
pydicom + pylibjpeg + numpy + onnxruntime on the same ONNX model.

    python3 scripts/compare_pipeline.py --ctsentry target/release/ctsentry \
        --config config/ctsentry.toml ../shared/data/covid-ct-md/P001

The Python side does LESS work than ctsentry: no lung segmentation (window, resize, normalise
only), which favours it. Both are timed as whole processes (interpreter start, imports and
model loading included, as a user meets them), in alternating order, --runs times each; the
median counts.
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np


def python_pipeline(files, model, batch, mean, std, center, width):
    import onnxruntime as ort
    import pydicom
    from PIL import Image

    t = time.perf_counter()
    so = ort.SessionOptions()
    so.intra_op_num_threads = os.cpu_count()
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    probs, buf = [], []

    def flush():
        x = np.stack(buf).astype(np.float32)
        probs.extend(sess.run(["prob"], {"input": x})[0][:, 0].tolist())
        buf.clear()

    lo = center - width / 2
    for f in files:
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
        w = np.clip((hu - lo) / width, 0, 1)
        r = np.asarray(Image.fromarray(w).resize((224, 224), Image.BOX), dtype=np.float32)
        buf.append(np.stack([(r - m) / s for m, s in zip(mean, std)]))
        if len(buf) == batch:
            flush()
    if buf:
        flush()
    return time.perf_counter() - t, probs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ctsentry", default="target/release/ctsentry")
    ap.add_argument("--config", default="config/ctsentry.toml")
    ap.add_argument("--model", default="models/densenet121-covid.onnx")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--python-only", action="store_true", help="run the Python pipeline once and print its slice count (what the comparison times)")
    ap.add_argument("series")
    a = ap.parse_args()
    files = sorted(f for f in glob.glob(os.path.join(a.series, "**", "*"), recursive=True) if os.path.isfile(f) and not f.endswith(".csv"))
    n = len(files)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    if a.python_only:
        _, probs = python_pipeline(files, a.model, a.batch, mean, std, -600.0, 1500.0)
        print(len(probs))
        return
    py, cts = [], []
    engine = "?"
    for k in range(a.runs):
        def run_python():
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--python-only", "--model", a.model, "--batch", str(a.batch), a.series], capture_output=True, text=True)
            py.append(time.perf_counter() - t0)
            assert out.returncode == 0 and out.stdout.strip() == str(n), f"python pipeline: {out.stdout}{out.stderr[-2000:]}"

        def run_ctsentry():
            nonlocal engine
            t0 = time.perf_counter()
            out = subprocess.run([a.ctsentry, "--config", a.config, "score", "--json", a.series], capture_output=True, text=True)
            cts.append(time.perf_counter() - t0)
            scored = sum(1 for l in out.stdout.splitlines() if '"type":"slice"' in l)
            assert scored == n, f"ctsentry scored {scored} of {n}: {out.stderr[-2000:]}"
            series = [l for l in out.stdout.splitlines() if '"type":"series"' in l]
            engine = " ".join(json.loads(series[0])[key] for key in ("engine", "precision")) if series else "?"

        for step in (run_python, run_ctsentry) if k % 2 == 0 else (run_ctsentry, run_python):
            step()
    bp, bc = statistics.median(py), statistics.median(cts)
    print(f"{n} slices of {a.series}, {os.cpu_count()} cores")
    print(f"python (pydicom+pylibjpeg+numpy+onnxruntime, no lung mask): {bp:6.2f} s  {n / bp:7.1f} slices/s")
    print(f"ctsentry score, engine {engine} (decode+lung mask+preprocess+infer): {bc:6.2f} s  {n / bc:7.1f} slices/s")
    print(f"runs (s): python {[round(t, 2) for t in py]}, ctsentry {[round(t, 2) for t in cts]}; medians compared")
    print(f"ctsentry / python: {bp / bc:.2f}x")


if __name__ == "__main__":
    main()
