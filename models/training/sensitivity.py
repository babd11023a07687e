#!/usr/bin/env python3
"""Which activation quantizers of an int8 QDQ graph cost the most, and the graph with the worst
of them taken out (their input left in float).

    python3 models/training/sensitivity.py --onnx models/densenet121-covid.onnx \
        --int8 models/densenet121-covid.int8.onnx --prep /tmp/prep/ucsd ... --every 6 --out /tmp/sens
    python3 models/training/sensitivity.py ... --ranking /tmp/sens/ranking.json --top 8 --out /tmp/top8
    python3 models/training/sensitivity.py ... --prep (quantize.py's, in its order) --rescale --calib 600 --out /tmp/wide

- Ranking: every activation quantizer (a QuantizeLinear whose input is not a constant, with its
  DequantizeLinear readers) is taken out of the graph alone, and the graph run by OpenVINO's CPU
  plugin (rest f32, as quantize.py measures parity) on every `--every`-th row of the prep folders
  given (rows the appliance scores: lung fraction >= 0.02); its cost is how much the mean squared
  logit difference against the float model falls without it. Written to OUT/ranking.json, most
  costly first. Measure it on development rows only, never on the slices a variant is judged on.
- With `--ranking` and `--top K`: the int8 graph with the K most costly quantizers taken out,
  written to OUT/NAME.int8.onnx (the same graph otherwise: weights and every other quantizer's
  scale unchanged).
- With `--rescale`: the int8 graph with the quantizers of convolution and pooling outputs (the
  features entering DenseNet's concatenations and pools) given wider scales, the geometric mean
  of their own and, where larger, the scale that covers the largest |value| over every 4th
  calibration row (`--prep` in quantize.py's order, `--calib`, `--seed`: its rows); written to
  OUT/NAME.int8.onnx with OUT/rescaled.json. Only scales change, so the graph runs as fast.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quantize import calibration, compiled, rows_of, run  # noqa: E402


def activation_quantizers(model):
    """Names of the QuantizeLinear nodes of `model` that quantize an activation (their input is
    not an initialiser), in graph order."""
    consts = {t.name for t in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in consts]


def bypass(model, names):
    """A copy of `model` without the activation quantizers `names` (see
    [`activation_quantizers`]) and their DequantizeLinear readers: whatever read a reader's
    output reads the quantizer's input instead. Stops on a name that is not an activation
    quantizer, a quantizer read by anything but DequantizeLinear, or one that feeds a graph
    output."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    known = set(activation_quantizers(m))
    if not set(names) <= known:
        raise SystemExit(f"not activation quantizers of the graph: {sorted(set(names) - known)}")
    quant = {n.output[0]: n for n in g.node if n.name in names}
    rename, drop = {}, set()
    for i, n in enumerate(g.node):
        if any(x in quant for x in n.input):
            if n.op_type != "DequantizeLinear":
                raise SystemExit(f"{n.name or n.op_type} reads a quantizer to take out but is not a DequantizeLinear")
            rename[n.output[0]] = quant[n.input[0]].input[0]
            drop.add(i)
    drop |= {i for i, n in enumerate(g.node) if n.output[0] in quant}
    if set(rename) & {o.name for o in g.output}:
        raise SystemExit("a quantizer to take out feeds a graph output")
    keep = [n for i, n in enumerate(g.node) if i not in drop]
    for n in keep:
        for i, x in enumerate(n.input):
            # A chain of quantizers taken out together resolves to the first one's input.
            while x in rename:
                x = rename[x]
            n.input[i] = x
    del g.node[:]
    g.node.extend(keep)
    return m


def rescale(model, rows):
    """A copy of `model` whose activation quantizers of Conv and AveragePool outputs get the scale
    sqrt(s * max(s, m / levels)): s their own, m the largest |input| over `rows` (run in
    onnxruntime), levels 127 (int8) or 255 (uint8); and what changed, per quantizer."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper as nh

    g = model.graph
    made_by = {o: n.op_type for n in g.node for o in n.output}
    consts = {t.name: nh.to_array(t) for t in g.initializer}
    acts = set(activation_quantizers(model))
    quant = {n.name: n for n in g.node if n.name in acts and made_by.get(n.input[0]) in ("Conv", "AveragePool")}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for q in quant.values():
        probe.graph.output.append(onnx.helper.make_tensor_value_info(q.input[0], onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = list(quant)
    largest = np.zeros(len(names))
    for r in rows:
        out = sess.run([quant[n].input[0] for n in names], {g.input[0].name: r})
        largest = np.maximum(largest, [float(np.abs(v).max()) for v in out])
    m = onnx.ModelProto()
    m.CopyFrom(model)
    init = {t.name: t for t in m.graph.initializer}
    changed = {}
    for n, big in zip(names, largest):
        q = quant[n]
        # The DequantizeLinear readers share these initialisers (NNCF's graphs): one change serves both.
        readers = [d for d in m.graph.node if d.op_type == "DequantizeLinear" and q.output[0] in d.input]
        if any(d.input[1] != q.input[1] for d in readers) or sum(q.input[1] in x.input for x in m.graph.node) != 1 + len(readers):
            raise SystemExit(f"{n}: its scale is not shared by exactly its own quantize/dequantize pair")
        zp = consts[q.input[2]]
        if np.any(zp != 0) or zp.dtype not in (np.int8, np.uint8):
            raise SystemExit(f"{n}: not a symmetric int8 or uint8 quantizer (zero point {zp})")
        levels = 127.0 if zp.dtype == np.int8 else 255.0
        s = float(nh.to_array(init[q.input[1]]))
        new = float(np.sqrt(s * max(s, big / levels)))
        init[q.input[1]].CopyFrom(nh.from_array(np.array(new, np.float32), q.input[1]))
        changed[n] = {"scale": s, "largest": float(big), "new": new}
    return m, changed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", required=True, help="the float model")
    ap.add_argument("--int8", required=True, help="its int8 QDQ graph")
    ap.add_argument("--prep", action="append", default=[], help="development prep folders (ranking)")
    ap.add_argument("--every", type=int, default=6)
    ap.add_argument("--min-lung", type=float, default=0.02)
    ap.add_argument("--ranking", help="a ranking.json of this graph: write the graph without its --top most costly quantizers")
    ap.add_argument("--top", type=int, default=0)
    ap.add_argument("--rescale", action="store_true", help="widen the scales of the quantizers of convolution and pooling outputs (see above)")
    ap.add_argument("--calib", type=int, help="with --rescale: quantize.py's --calib for the graph (600 for the shipped one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.ranking and a.rescale:
        ap.error("--ranking (take quantizers out) or --rescale, not both")
    if a.rescale and a.calib is None:
        ap.error("--rescale needs --calib: quantize.py's, so that the rows are its calibration rows")
    import hashlib

    import onnx

    os.makedirs(a.out, exist_ok=True)
    model = onnx.load(a.int8)
    sha = hashlib.sha256(open(a.int8, "rb").read()).hexdigest()
    if a.ranking:
        r = json.load(open(a.ranking))
        if r.get("sha256") != sha:
            raise SystemExit(f"{a.ranking} ranks another graph than {a.int8}")
        names = [q["name"] for q in r["ranking"][: a.top]]
        out = os.path.join(a.out, os.path.basename(a.int8))
        onnx.save(bypass(model, names), out)
        print(json.dumps({"out": out, "taken_out": names}))
        return
    if not a.prep:
        ap.error("--prep is needed: development rows to rank, or the calibration folders to --rescale")
    if a.rescale:
        rows = [c["input"] for c in calibration(rows_of(a.prep, a.min_lung), a.calib, a.seed)][::4]
        m, changed = rescale(model, rows)
        out = os.path.join(a.out, os.path.basename(a.int8))
        onnx.save(m, out)
        import onnxruntime

        json.dump({"int8": a.int8, "sha256": sha, "prep": a.prep, "calib": a.calib, "seed": a.seed, "rows": len(rows),
                   "onnxruntime": onnxruntime.__version__, "quantizers": changed},
                  open(os.path.join(a.out, "rescaled.json"), "w"), indent=1)
        print(json.dumps({"out": out, "rescaled": len(changed), "rows": len(rows)}))
        return
    import openvino as ov

    core = ov.Core()
    folders = rows_of(a.prep, a.min_lung)
    x = np.concatenate([np.asarray(xs[keep[:: a.every]], np.float32) for _, xs, _, keep in folders])
    idx = list(range(len(x)))
    logit = lambda p: np.log(np.clip(p, 1e-7, 1 - 1e-7) / np.clip(1 - p, 1e-7, 1))
    # Compiled as quantize.py's parity compiles: the rest in f32.
    ref = logit(run(compiled(core, a.onnx, "f32"), x, idx)[0].astype(np.float64))

    def cost(m):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m.onnx")
            onnx.save(m, path)
            p = run(compiled(core, path, "f32"), x, idx)[0]
        d = logit(p.astype(np.float64)) - ref
        return float(np.mean(d * d)), float(np.abs(p - 1 / (1 + np.exp(-ref))).max())

    t0 = time.time()
    base, base_max = cost(model)
    print(f"{len(x)} rows; the whole graph: mean squared logit difference {base:.6f}, max |dprob| {base_max:.4f}", flush=True)
    ranking = []
    names = activation_quantizers(model)
    for i, name in enumerate(names):
        mse, mx = cost(bypass(model, [name]))
        ranking.append({"name": name, "mse_without": mse, "gain": base - mse, "max_dprob_without": mx})
        print(f"{i + 1}/{len(names)} {name}: {base - mse:+.6f}", flush=True)
    ranking.sort(key=lambda r: -r["gain"])
    json.dump({"int8": a.int8, "sha256": sha, "onnx": a.onnx, "prep": a.prep, "every": a.every, "rows": len(x), "quantizers": len(names),
               "mse": base, "max_dprob": base_max, "seconds": round(time.time() - t0), "ranking": ranking},
              open(os.path.join(a.out, "ranking.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
