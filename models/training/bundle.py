#!/usr/bin/env python3
"""Writes a model bundle from `--base` (its ONNX and manifest) with new weights and the decision
rule given: either `--graph`, the base graph with trained initialisers (blockfit.py's output),
shipped as it is, or `--head` (headfit.py's head.npz: weight [1024], bias), which replaces the
base's linear head. In both, the probability (`prob`, via the Gemm) and the class activation map
(`cam`, the Einsum over the last dense block's maps) use the same head weights, so the heat maps
show what the head weighs.

    python3 models/training/bundle.py --base models/densenet121-covid.onnx --head /tmp/head/head.npz \
        --version 4.0.0 --threshold 0.5 --min-extent-mm 15 --min-share 0.15 --out models/ \
        --method "..." --validation 'key = value' ...

Checked with onnxruntime: the new bundle's probability equals sigmoid(w . pooled + b) computed
from the base bundle's pooled features on real prep tensors (`--check-prep`), within 1e-5.
"""
import argparse
import hashlib
import json
import os
import sys
import tomllib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from folds import load_prep, manifest_head  # noqa: E402

GEMM_W = "net.backbone.classifier.weight"
GEMM_B = "net.backbone.classifier.bias"


def toml_str(s):
    return json.dumps(s, ensure_ascii=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the bundle whose backbone is kept (ONNX; manifest beside it)")
    new = ap.add_mutually_exclusive_group(required=True)
    new.add_argument("--head", help="headfit.py's head.npz")
    new.add_argument("--graph", help="the base graph with trained initialisers (blockfit.py)")
    ap.add_argument("--name", default="densenet121-covid")
    ap.add_argument("--version", required=True)
    ap.add_argument("--threshold", type=float, required=True)
    ap.add_argument("--method", default="fixed (an evaluation bundle, not calibrated)")
    ap.add_argument("--min-extent-mm", type=float)
    ap.add_argument("--min-share", type=float)
    ap.add_argument("--min-positive-slices", type=int)
    ap.add_argument("--series-rule-method")
    ap.add_argument("--training", action="append", default=[], help="KEY = VALUE lines added to [training] (repeatable)")
    ap.add_argument("--validation", action="append", default=[], help="KEY = VALUE lines for [validation] (repeatable)")
    ap.add_argument("--check-prep", help="a prep folder for the parity check")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import onnx
    from onnx import numpy_helper

    base = onnx.load(a.base)
    manifest = tomllib.load(open(os.path.splitext(a.base)[0] + ".toml", "rb"))
    os.makedirs(a.out, exist_ok=True)
    onnx_path = os.path.join(a.out, a.name + ".onnx")
    if a.graph:
        graph = onnx.load(a.graph)
        if [(n.op_type, list(n.input), list(n.output)) for n in graph.graph.node] != [(n.op_type, list(n.input), list(n.output)) for n in base.graph.node]:
            raise SystemExit(f"{a.graph}: not the graph of {a.base} (nodes differ)")
        onnx.save(graph, onnx_path)
    else:
        head = np.load(a.head)
        w, b = head["weight"].astype(np.float32).reshape(1024), np.float32(head["bias"])
        einsum = [n for n in base.graph.node if n.op_type == "Einsum" and "cam" in n.output]
        if len(einsum) != 1:
            raise SystemExit(f"{a.base}: no single Einsum producing cam")
        cam_w = einsum[0].input[1]
        found = set()
        for init in base.graph.initializer:
            if init.name == GEMM_W:
                init.CopyFrom(numpy_helper.from_array(w.reshape(1, 1024), GEMM_W))
            elif init.name == GEMM_B:
                init.CopyFrom(numpy_helper.from_array(np.array([b], np.float32), GEMM_B))
            elif init.name == cam_w:
                init.CopyFrom(numpy_helper.from_array(w, cam_w))
            else:
                continue
            found.add(init.name)
        if found != {GEMM_W, GEMM_B, cam_w}:
            raise SystemExit(f"{a.base}: head initialisers missing: {sorted({GEMM_W, GEMM_B, cam_w} - found)}")
        onnx.save(base, onnx_path)

    dp = None
    if a.check_prep and a.head:
        import onnxruntime as ort

        from features import session

        x, _, _ = load_prep(a.check_prep)
        idx = np.linspace(0, x.shape[0] - 1, 16).astype(int)
        batch = np.ascontiguousarray(x[idx]).astype(np.float32)
        old, outs = session(a.base, False)
        pooled = old.run(outs, {"input": batch})[1]
        head = np.load(a.head)
        want = 1 / (1 + np.exp(-(pooled @ head["weight"].reshape(1024) + head["bias"])))
        got = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).run(["prob"], {"input": batch})[0][:, 0]
        dp = float(np.abs(got - want).max())
        print(f"new bundle vs head on base features, {len(idx)} slices of {a.check_prep}: max |dprob| {dp:.2e}")
        if dp > 1e-5:
            raise SystemExit(f"parity failed: {dp}")

    sha = hashlib.sha256(open(onnx_path, "rb").read()).hexdigest()
    m, i, p = manifest["model"], manifest["input"], manifest["preprocess"]
    base_sha = m["sha256"]
    dec = [f"threshold = {a.threshold:.6f}", f"method = {toml_str(a.method)}"]
    if a.min_positive_slices:
        dec.append(f"min_positive_slices = {a.min_positive_slices}")
    if a.min_extent_mm is not None:
        dec.append(f"min_positive_extent_mm = {a.min_extent_mm}")
    if a.min_share is not None:
        dec.append(f"min_positive_share = {a.min_share}")
    if a.series_rule_method:
        dec.append(f"series_rule_method = {toml_str(a.series_rule_method)}")
    dec.append(f"min_lung_fraction = {manifest['decision'].get('min_lung_fraction', 0.0)}")
    how = "its last dense block, norm5 and head fine-tuned by models/training/blockfit.py" if a.graph else "its DenseNet121 features, unchanged; the head refitted by models/training/headfit.py"
    training = [
        'program = "models/training/blockfit.py or headfit.py (what changed), models/training/train.py (the base)"',
        "base = " + toml_str(f"{m['name']} {m['version']} (sha256 {base_sha}): {how}"),
        "# `ctsentry eval` warns on the real CT series the base was trained on (see [validation] for the rest).",
        f"series_uids = {json.dumps(manifest.get('training', {}).get('series_uids', []))}",
    ] + a.training
    if dp is not None:
        training.append(f"head_vs_base_features_max_prob_diff = {dp:.2e}")
    text = f"""# The shipped model: DenseNet121 (torchvision, trained from scratch: no pretrained DenseNet121
# weights can be had here), a sigmoid head, and its class activation map; weights derived from a
# base bundle (see [training]). Contract, training and evaluation: models/README.md.
{manifest_head(a.name, a.version, sha, i, p, manifest["output"])}
[decision]
{chr(10).join(dec)}

[training]
{chr(10).join(training)}

[validation]
{chr(10).join(a.validation)}
"""
    open(os.path.join(a.out, a.name + ".toml"), "w").write(text)
    tomllib.loads(text)  # a typo in a --training/--validation line fails here, not in the appliance
    print(f"wrote {onnx_path} (sha256 {sha}) and its manifest")


if __name__ == "__main__":
    main()
