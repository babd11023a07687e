#!/usr/bin/env python3
"""Features of a model bundle on `ctsentry prep` folders: what the head-fitting recipe
(`headfit.py`) trains and evaluates on, without PyTorch.

For every row of each prep folder, runs the bundle's ONNX graph (onnxruntime, f32) with one more
output, the input of its linear head: the global-average-pooled last dense block
(`[N,1024]`, after norm5 + ReLU). With `--maps`, also keeps the 7x7 feature maps (float16,
`[N,1024,7,7]`) of the rows whose folder is named, so that the class activation map of any new
head (sum_k w_k F_k, as the bundle computes it) can be scored by the pointing game.

    python3 models/training/features.py --onnx models/densenet121-covid.onnx \
        --prep /tmp/prep/ct --prep /tmp/prep/ma --maps /tmp/prep/ma --out /tmp/feat

Output folder: one `<prep folder name>.npz` per prep folder with `pooled` [N,1024] float32,
`prob` [N] (the bundle's own probability), `logit` [N], with `--maps` `maps`, and with `--block4` `block4`.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from folds import load_prep  # noqa: E402

POOLED = "/net/ReduceMean_output_0"
MAPS = "/net/Relu_output_0"
# The input of the last dense block (after transition 3): what blockfit.py fine-tunes from.
BLOCK4_INPUT = "/net/features/transition3/pool/AveragePool_output_0"


def session(onnx_path, with_maps, with_block4=False):
    """An onnxruntime session of the bundle that also returns the head's input (and the maps,
    and the last dense block's input)."""
    import onnx
    import onnxruntime as ort

    m = onnx.load(onnx_path)
    names = {o for n in m.graph.node for o in n.output}
    extra = [POOLED] + ([MAPS] if with_maps else []) + ([BLOCK4_INPUT] if with_block4 else [])
    for e in extra:
        if e not in names:
            raise SystemExit(f"{onnx_path}: no tensor {e}: not a bundle exported by models/training/export.py")
        m.graph.output.append(onnx.helper.make_tensor_value_info(e, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.intra_op_num_threads = os.cpu_count() or 1
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]), ["prob"] + extra


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--prep", action="append", required=True, help="a ctsentry prep folder (repeatable)")
    ap.add_argument("--maps", action="append", default=[], help="a prep folder (also given as --prep) whose 7x7 maps are kept")
    ap.add_argument("--block4", action="store_true", help="also keep the last dense block's input (float16 [N,512,7,7]) of every row, as `block4`")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    maps_for = {os.path.abspath(p) for p in a.maps}
    for prep in a.prep:
        keep = os.path.abspath(prep) in maps_for
        sess, outs = session(a.onnx, keep, a.block4)
        x, rows, _ = load_prep(prep)
        n = x.shape[0]
        pooled = np.zeros((n, 1024), np.float32)
        prob = np.zeros(n, np.float32)
        maps = np.zeros((n, 1024, 7, 7), np.float16) if keep else None
        block4 = np.zeros((n, 512, 7, 7), np.float16) if a.block4 else None
        for s in range(0, n, a.batch):
            r = sess.run(outs, {"input": np.ascontiguousarray(x[s : s + a.batch]).astype(np.float32)})
            prob[s : s + a.batch] = r[0][:, 0]
            pooled[s : s + a.batch] = r[1]
            if keep:
                maps[s : s + a.batch] = r[2].astype(np.float16)
            if a.block4:
                block4[s : s + a.batch] = r[-1].astype(np.float16)
        p = np.clip(prob.astype(np.float64), 1e-7, 1 - 1e-7)
        out = os.path.join(a.out, os.path.basename(os.path.normpath(prep)) + ".npz")
        arrays = {"pooled": pooled, "prob": prob, "logit": np.log(p / (1 - p)).astype(np.float32)}
        if keep:
            arrays["maps"] = maps
        if a.block4:
            arrays["block4"] = block4
        np.savez(out, **arrays)
        print(f"{prep}: {n} rows -> {out}", flush=True)


if __name__ == "__main__":
    main()
