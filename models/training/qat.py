#!/usr/bin/env python3
"""Quantization-aware fine-tuning of an int8 graph (`quantize.py`'s QDQ ONNX) towards its own f32
model: a way at post-training quantization's probability shifts (up to 0.45 on 3.1.1; see
models/README.md, "int8", for how far it gets).

The QDQ graph is run as a PyTorch module built from its own nodes: every DequantizeLinear of an
int8 weight becomes the float weight of the f32 model, fake-quantized with the graph's own
per-channel scales; every QuantizeLinear/DequantizeLinear pair of an activation fake-quantizes
with the graph's scale and zero point (straight-through rounding); batch-norm statistics stay.
The loss is self-distillation: the squared difference of the int8 graph's logit from the f32
model's (with `--threshold`, of its probability instead, 4x on the slices within 0.1 of that
threshold, where decisions flip), and, at `--cam-weight`, of its class activation map, on the
real preprocessed slices of `--prep`. The trained weights are quantized with the same scales and
written back into the same QDQ graph, so OpenVINO runs what was trained (within the rounding
differences of two runtimes: `qat.py` checks the module against the graph before training).

    python3 models/training/qat.py --f32 models/densenet121-covid.onnx --int8 /tmp/int8/densenet121-covid.int8.onnx \
        --prep /tmp/prep/ct ... --out /tmp/qat/densenet121-covid.int8.onnx

Rows with an even index in their prep folder are trained on, so that quantize.py's parity can be
read on the odd ones (`--odd-rows`), never trained on here; they are the neighbouring slices of
the same series, so this is a check against memorising rows, not against a new patient.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import graphops  # noqa: E402
from folds import load_prep  # noqa: E402

HEAD_INPUT = "/net/Relu_output_0"
GEMM_W, GEMM_B = "net.backbone.classifier.weight", "net.backbone.classifier.bias"


def round_ste(x):
    return x + (torch.round(x) - x).detach()


class QdqGraph(nn.Module):
    def __init__(self, qdq, f32):
        from onnx import numpy_helper

        super().__init__()
        self.inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
        floats = {i.name: numpy_helper.to_array(i) for i in f32.graph.initializer}
        self.nodes, self.pooled_input = [], HEAD_INPUT
        rest = iter(qdq.graph.node)
        for n in rest:
            self.nodes.append(n)
            if HEAD_INPUT in n.output:
                break
        # The features' own quantizer, where NNCF put one before the pooling (the map's Einsum
        # reads them unquantized).
        for n in rest:
            if n.op_type == "QuantizeLinear" and n.input[0] == HEAD_INPUT:
                self.nodes.append(n)
                dq = [m for m in qdq.graph.node if m.op_type == "DequantizeLinear" and m.input[0] == n.output[0]]
                self.nodes.extend(dq)
                self.pooled_input = dq[0].output[0]
        self.params = nn.ParameterDict()
        self.names = {}  # initialiser -> parameter key (float weights, BN affine, biases)
        self.weight_of = {}  # int8 weight initialiser -> float weight name
        self.weight_bounds = {}  # int8 weight initialiser -> its levels (lo, hi)
        self.weight_scale = {}  # int8 weight initialiser -> its scale initialiser
        for n in self.nodes:
            if n.op_type == "DequantizeLinear" and n.input[0] in self.inits and self.inits[n.input[0]].dtype == np.int8:
                q = n.input[0]
                name = q[len("q_output_") : -len("_1")]
                if name not in floats:
                    raise SystemExit(f"{q}: no float weight {name} in the f32 model")
                axis = {at.name: at.i for at in n.attribute}.get("axis", 1)
                if axis != 0 or np.any(self.inits[n.input[2]] != 0):
                    raise SystemExit(f"{q}: expected per-output-channel scales (axis 0) and zero points 0")
                self.weight_of[q] = name
                # NNCF's levels for this tensor: [-127, 127], or [-64, 64] where it guards
                # against overflow on CPUs without VNNI (the first convolution).
                edge = float(np.abs(self.inits[q]).max())
                self.weight_bounds[q] = (-edge, edge)
                self.weight_scale[q] = n.input[1]
                self._param(name, floats[name])
            elif n.op_type in ("Conv", "BatchNormalization"):
                for k, i in enumerate(n.input[1:], start=1):
                    if i in self.inits and not (n.op_type == "BatchNormalization" and k >= 3):
                        self._param(i, self.inits[i])
        self.head_w = nn.Parameter(torch.from_numpy(floats[GEMM_W].copy()), requires_grad=False)
        self.head_b = nn.Parameter(torch.from_numpy(floats[GEMM_B].copy()), requires_grad=False)
        self.const = {k: torch.from_numpy(np.asarray(v).astype(np.float32)) for k, v in self.inits.items()}

    def _param(self, name, value):
        if name not in self.names:
            key = f"p{len(self.params)}"
            self.names[name] = key
            self.params[key] = nn.Parameter(torch.from_numpy(np.asarray(value, np.float32).copy()))

    def value(self, name, env):
        return graphops.lookup(name, env, self.names, self.params, self.const)

    @staticmethod
    def bounds(zp_init):
        return (0.0, 255.0) if zp_init.dtype == np.uint8 else (-128.0, 127.0)

    def forward(self, x):
        env = {"input": x}
        for n in self.nodes:
            t = n.op_type
            if t == "DequantizeLinear" and n.input[0] in self.weight_of:
                w = self.params[self.names[self.weight_of[n.input[0]]]]
                s = self.const[n.input[1]].view(-1, *([1] * (w.dim() - 1)))
                lo, hi = self.weight_bounds[n.input[0]]
                out = torch.clamp(round_ste(w / s), lo, hi) * s
            elif t == "QuantizeLinear":
                s, zp = self.const[n.input[1]], self.const[n.input[2]]
                lo, hi = self.bounds(self.inits[n.input[2]])
                out = torch.clamp(round_ste(self.value(n.input[0], env) / s) + zp, lo, hi)
            elif t == "DequantizeLinear":
                s, zp = self.const[n.input[1]], self.const[n.input[2]]
                out = (self.value(n.input[0], env) - zp) * s
            else:
                out = graphops.apply(n, [self.value(i, env) for i in n.input])
            env[n.output[0]] = out
        pooled = env[self.pooled_input].mean(dim=(2, 3))
        return pooled @ self.head_w[0] + self.head_b[0], torch.einsum("nkhw,k->nhw", env[HEAD_INPUT], self.head_w[0])

    def export(self, qdq, path):
        import onnx
        from onnx import numpy_helper

        new = {}
        for q, name in self.weight_of.items():
            w = self.params[self.names[name]].detach().numpy()
            s = self.inits[self.weight_scale[q]].reshape(-1, *([1] * (w.ndim - 1)))
            lo, hi = self.weight_bounds[q]
            new[q] = np.clip(np.round(w / s), lo, hi).astype(np.int8)
        for name, key in self.names.items():
            if name in self.inits:
                new[name] = self.params[key].detach().numpy().astype(np.float32)
        m = onnx.ModelProto()
        m.CopyFrom(qdq)
        for init in m.graph.initializer:
            if init.name in new:
                init.CopyFrom(numpy_helper.from_array(new[init.name], init.name))
        onnx.save(m, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--f32", required=True)
    ap.add_argument("--int8", required=True)
    ap.add_argument("--prep", action="append", required=True)
    ap.add_argument("--min-lung", type=float, default=0.02)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--cam-weight", type=float, default=0.1)
    ap.add_argument("--threshold", type=float, help="fit probabilities instead of logits, 4x on slices within 0.1 of this threshold")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    import onnx
    import onnxruntime as ort

    torch.manual_seed(a.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    f32, qdq = onnx.load(a.f32), onnx.load(a.int8)
    ref = ort.InferenceSession(a.f32, providers=["CPUExecutionProvider"])
    xs = []
    for p in a.prep:
        x, rows, _ = load_prep(p)
        xs.extend(x[i] for i, r in enumerate(rows) if i % 2 == 0 and float(r.get("lung_fraction", 1)) >= a.min_lung)
    print(f"{len(xs)} training rows (even indices)", flush=True)
    model = QdqGraph(qdq, f32)
    # The module reproduces the QDQ graph before training (onnxruntime runs it as the reference).
    q_ref = ort.InferenceSession(a.int8, providers=["CPUExecutionProvider"])
    probe = np.stack(xs[:: max(1, len(xs) // 32)][:32]).astype(np.float32)
    with torch.no_grad():
        lz, _ = model(torch.from_numpy(probe))
    gap = float(np.abs(torch.sigmoid(lz).numpy() - q_ref.run(["prob"], {"input": probe})[0][:, 0]).max())
    print(f"module vs QDQ graph (onnxruntime), {len(probe)} rows: max |dprob| {gap:.2e}", flush=True)
    if gap > 0.01:
        raise SystemExit(f"{a.int8}: the module does not reproduce the graph (max |dprob| {gap:.3f} > 0.01)")
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    t0 = time.time()
    for ep in range(a.epochs):
        order = np.random.default_rng(a.seed + ep).permutation(len(xs))
        tot = 0.0
        for s in range(0, len(order), a.batch):
            xb = np.stack([xs[i] for i in order[s : s + a.batch]]).astype(np.float32)
            tl, tc = ref.run(["prob", "cam"], {"input": xb})
            tz = torch.from_numpy(np.log(np.clip(tl[:, 0], 1e-7, 1 - 1e-7) / np.clip(1 - tl[:, 0], 1e-7, 1)))
            tc = torch.from_numpy(tc)
            z, cam = model(torch.from_numpy(xb))
            if a.threshold is None:
                fit = F.mse_loss(z, tz)
            else:
                # In probability, where decisions flip, and 4x on slices within 0.1 of the threshold.
                tp = torch.sigmoid(tz)
                w = 1.0 + 3.0 * ((tp - a.threshold).abs() < 0.1).float()
                fit = (w * (torch.sigmoid(z) - tp) ** 2).mean() * 100.0
            loss = fit + a.cam_weight * F.mse_loss(cam, tc) / (tc.var() + 1e-6)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += loss.item() * len(xb)
        print(f"epoch {ep + 1}: loss {tot / len(xs):.4f}, {time.time() - t0:.0f} s", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    model.export(qdq, a.out)
    print(f"-> {a.out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
