#!/usr/bin/env python3
"""Exports a trained run (train.py's model.pt) to the model bundle: NAME.onnx + NAME.toml.

    python3 models/training/export.py --run /tmp/run-final --threshold-from /tmp/run-final \
        --name densenet121-covid --version 1.0.0 --out models/

- ONNX opset 17, input `input` [N,3,224,224] (dynamic N), outputs `prob` [N,1] (sigmoid) and
  `cam` [N,7,7]: the class activation map, sum_k w_k * F_k over the last dense block's features
  (after norm5 + ReLU) with the linear head's weights w (equal to Grad-CAM at that layer for a
  global-average-pool + linear head, up to a positive scale).
- Checked against PyTorch on real prep tensors with onnxruntime: max |prob difference| <= 1e-4.
- The decision threshold: the largest threshold whose sensitivity on the held-out scores of
  `--threshold-from` (held_out_scores.csv) is >= --sensitivity (0.95), counting only real CT
  rows (no UCSD picture, no simulated lesion): a triage threshold must hold on real scans.
- `[training] series_uids`: the Series Instance UIDs of the DICOM under each `--trained-on`
  folder (the real CT the model was trained on), so that `ctsentry eval` warns about them.
"""
import argparse
import csv
import hashlib
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from folds import manifest_head, threshold_for_sensitivity  # noqa: E402
from train import Net, load_prep  # noqa: E402


class Exported(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        logit, cam = self.net(x)
        return torch.sigmoid(logit)[:, None], cam


def real_ct(row):
    """A held-out row from a real CT scan: not a UCSD picture, not a simulated lesion."""
    return not row["group"].startswith("ucsd") and "-sim" not in os.path.basename(os.path.dirname(row["file"]))


def series_uids(folders):
    import pydicom

    uids = set()
    for folder in folders:
        for dirpath, _, files in os.walk(folder):
            for f in files:
                try:
                    ds = pydicom.dcmread(os.path.join(dirpath, f), stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
                except Exception:
                    continue  # not DICOM (labels, notes)
                if "SeriesInstanceUID" in ds:
                    uids.add(str(ds.SeriesInstanceUID))
    return sorted(uids)


def pick_threshold(scores_csv, target):
    rows = [r for r in csv.DictReader(open(scores_csv)) if real_ct(r)]
    pos = [float(r["prob"]) for r in rows if r["label"] == "1"]
    neg = [float(r["prob"]) for r in rows if r["label"] == "0"]
    if not pos:
        raise SystemExit(f"{scores_csv}: no positives to choose a threshold on")
    t = threshold_for_sensitivity(pos, target)
    sens = sum(p >= t for p in pos) / len(pos)
    spec = sum(n < t for n in neg) / len(neg) if neg else float("nan")
    return t, sens, spec, len(pos), len(neg)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--threshold-from", help="a run folder with held_out_scores.csv")
    ap.add_argument("--threshold", type=float, help="a fixed threshold instead (for evaluation bundles, not for shipping)")
    ap.add_argument("--sensitivity", type=float, default=0.95)
    ap.add_argument("--name", default="densenet121-covid")
    ap.add_argument("--version", default="1.0.0")
    ap.add_argument("--out", default="models")
    ap.add_argument("--validation", action="append", default=[], help="KEY=VALUE lines for [validation] (repeatable)")
    ap.add_argument("--min-positive-slices", type=int, help="[decision] min_positive_slices, chosen from series-level results")
    ap.add_argument("--min-lung-fraction", type=float, default=0.0, help="[decision] min_lung_fraction: slices with less lung are not scored")
    ap.add_argument("--trained-on", action="append", default=[], help="a folder of the real DICOM trained on (repeatable): its series UIDs go into [training] series_uids")
    a = ap.parse_args()

    summary = json.load(open(os.path.join(a.run, "summary.json")))
    net = Net()
    net.load_state_dict(torch.load(os.path.join(a.run, "model.pt"), map_location="cpu"))
    net.eval()
    model = Exported(net).eval()
    os.makedirs(a.out, exist_ok=True)
    onnx_path = os.path.join(a.out, a.name + ".onnx")
    x = torch.zeros(2, 3, 224, 224)
    torch.onnx.export(
        model, (x,), onnx_path, input_names=["input"], output_names=["prob", "cam"], opset_version=17,
        dynamic_axes={"input": {0: "N"}, "prob": {0: "N"}, "cam": {0: "N"}}, dynamo=False,
    )
    # Parity on real tensors.
    import onnxruntime as ort

    prep = summary["args"]["prep"][0]
    xs, _, _ = load_prep(prep)
    idx = np.linspace(0, xs.shape[0] - 1, 16).astype(int)
    batch = np.ascontiguousarray(xs[idx]).astype(np.float32)
    with torch.no_grad():
        p_t, c_t = model(torch.from_numpy(batch))
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    p_o, c_o = sess.run(["prob", "cam"], {"input": batch})
    dp, dc = float(np.abs(p_o - p_t.numpy()).max()), float(np.abs(c_o - c_t.numpy()).max())
    print(f"onnx vs pytorch on {len(idx)} slices of {prep}: max |dprob| {dp:.2e}, max |dcam| {dc:.2e}")
    assert p_o.shape == (16, 1) and c_o.shape == (16, 7, 7)
    assert dp <= 1e-4, dp

    if a.threshold is not None:
        t, sens, spec, npos, nneg = a.threshold, float("nan"), float("nan"), 0, 0
        method = "fixed (an evaluation bundle, not calibrated)"
    else:
        t, sens, spec, npos, nneg = pick_threshold(os.path.join(a.threshold_from, "held_out_scores.csv"), a.sensitivity)
        method = f"largest threshold with sensitivity >= {a.sensitivity} on the held-out real CT slices of the validation run ({npos} positive, {nneg} negative; sensitivity {sens:.3f}, specificity {spec:.3f} there)"

    sha = hashlib.sha256(open(onnx_path, "rb").read()).hexdigest()
    p = summary["params"]
    args = summary["args"]
    hist = summary["history"][-1]
    val_lines = "\n".join(a.validation)
    text = f'''# The shipped model: DenseNet121 (torchvision, trained from scratch: no pretrained weights can
# be downloaded here), a 1-output sigmoid head, and its class activation map. Contract, training
# and evaluation: models/README.md.
{manifest_head(a.name, a.version, sha, {"name": "input", "layout": "NCHW", "size": p["size"], "channels": 3}, p, {"prob": "prob", "cam": "cam"})}
[decision]
threshold = {t:.6f}
method = "{method}"
{f"min_positive_slices = {a.min_positive_slices}" if a.min_positive_slices else ""}
min_lung_fraction = {a.min_lung_fraction}

[training]
program = "models/training/train.py"
# The real CT series trained on: `ctsentry eval` warns when it evaluates any of them.
series_uids = [{"".join(f'{chr(10)}    "{u}",' for u in series_uids(a.trained_on))}
]
precision = "{args.get("precision", "f32")}"
data = "{'; '.join(f'{k}: {v}' for k, v in summary['train'].items())}"
positives = {summary["train_positive"]}
epochs = {args["epochs"]}
batch = {args["batch"]}
learning_rate = {args["lr"]}
seed = {args["seed"]}
pointing_loss_weight = {args.get("cam_weight", 0.0)}
pointing_loss_target = "{args.get("cam_target", "share")}"
initial_weights = {json.dumps(f"{os.path.basename(args['init'])} (sha256 {summary.get('init_sha256')})" if args.get("init") else "none: trained from scratch")}
seconds = {summary["seconds"]}
torch = "{summary["torch"]}"
final_train_loss = {hist["train_loss"]:.4f}
onnx_vs_pytorch_max_prob_diff = {dp:.2e}

[validation]
{val_lines}
'''
    open(os.path.join(a.out, a.name + ".toml"), "w").write(text)
    print(f"wrote {onnx_path} (sha256 {sha}) and its manifest; threshold {t:.4f} (sensitivity {sens:.3f}, specificity {spec:.3f} on {npos}+{nneg} held-out slices)")


if __name__ == "__main__":
    main()
