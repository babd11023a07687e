#!/usr/bin/env python3
"""Pointing game: does the class activation map point at the lesion?

For each simulated slice of the given (held-out) patients: the model's CAM, upsampled to the
image as the appliance's heat maps do (`src/report.rs`: bilinear, cell centres at block centres,
confined to the lung mask serving computes), has its maximum at a pixel; a hit when that pixel
lies within the simulated lesion mask grown by a tolerance of 15 pixels per 512 (the pointing
game of Zhang J et al., "Top-down neural attention by excitation backprop", ECCV 2016, with its
15-pixel tolerance). Reports the hit rate over all lesioned slices and over those the model calls
positive at `--threshold`.

It also reports the **reach**: the share of slices on which one of the 49 maps with a single hot
cell, upsampled and confined to the lung the same way, would hit. Away from the lung's edge a
bilinear map's maximum lies at a cell centre, so a lesion far from every centre is out of reach
of such a map; near the edge, maps mixing neighbouring cells can peak on the lung boundary
between centres. The reach is therefore a lower bound of what any map of this grid can score:
when it is high, the grid is not what limits the pointing game.

Scores a training run (`--run`, train.py's model.pt, PyTorch f32) or a model bundle (`--onnx`,
e.g. the shipped models/densenet121-covid.onnx, onnxruntime f32).

    ctsentry prep --hu --out /tmp/prep/sim --labels /tmp/sim/labels.csv /tmp/sim/dicom
    python3 models/training/pointing.py --run /tmp/run-val --prep /tmp/prep/sim \
        --masks /tmp/sim/masks --patients normal001,A0001 --threshold 0.5

The geometry (`upsample`, `peak`, `hit`, `reach_hit`) needs numpy and scipy only:
`tests/training.rs` checks it without torch.
"""
import argparse
import csv
import json
import os
import sys

import numpy as np
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from folds import TOLERANCE_PER_512, load_prep, patient  # noqa: E402


def bilinear_weights(n_in, n_out):
    """[n_out, n_in] weights of a bilinear upsampling from `n_in` to `n_out` samples with cell
    centres at block centres (PyTorch's `align_corners=False`, edges clamped; the same formula
    as the appliance's heat maps)."""
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    t = src - i0
    w = np.zeros((n_out, n_in))
    np.add.at(w, (np.arange(n_out), i0), 1 - t)
    np.add.at(w, (np.arange(n_out), i1), t)
    return w


def upsample(cam, h, w):
    """The `[side, side]` map bilinearly upsampled to `h x w`."""
    cam = np.asarray(cam, dtype=np.float64)
    return bilinear_weights(cam.shape[0], h) @ cam @ bilinear_weights(cam.shape[1], w).T


def peak(up, lung):
    """(row, col) of the upsampled map's maximum inside the lung mask (the whole image when the
    mask is empty); the first one in row order on a tie."""
    up = np.where(lung, up, -np.inf) if lung.any() else up
    return np.unravel_index(int(np.argmax(up)), up.shape)


def lesion_distance(lesion):
    """Distance (pixels) of every pixel from the lesion mask (inf everywhere when it is empty)."""
    return ndimage.distance_transform_edt(~lesion) if lesion.any() else np.full(lesion.shape, np.inf)


def hit(p, distance):
    """Whether peak `p` lies within the tolerance (15 px per 512 of width) of the lesion."""
    return bool(distance[p] <= TOLERANCE_PER_512 * distance.shape[1] / 512.0)


def reach_hit(lung, distance, side=7):
    """Whether some `side x side` map with one hot cell would hit on this slice."""
    h, w = lung.shape
    wy, wx = bilinear_weights(side, h), bilinear_weights(side, w)
    return any(hit(peak(np.outer(wy[:, i], wx[:, j]), lung), distance) for i in range(side) for j in range(side))


def scorer(a):
    """A function from a batch of prep tensors to (prob [B], cam [B, side, side]) numpy arrays."""
    if a.onnx:
        import onnxruntime as ort

        sess = ort.InferenceSession(a.onnx, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def run(xb):
            prob, cam = sess.run(["prob", "cam"], {name: xb})
            return prob[:, 0], cam

        return run
    import torch

    from train import Net

    net = Net()
    net.load_state_dict(torch.load(os.path.join(a.run, "model.pt"), map_location="cpu"))
    net.eval()

    def score(xb):
        with torch.no_grad():
            logit, cam = net(torch.from_numpy(xb))
        return torch.sigmoid(logit).numpy(), cam.numpy()

    return score


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = ap.add_mutually_exclusive_group(required=True)
    model.add_argument("--run", help="a train.py output folder (its model.pt)")
    model.add_argument("--onnx", help="a model bundle's ONNX file (outputs prob and cam)")
    ap.add_argument("--prep", required=True, help="`ctsentry prep --hu` of the simulated DICOM")
    ap.add_argument("--masks", required=True, help="lesions.py's masks/ folder")
    ap.add_argument("--patients", required=True, help="comma list of patients to score (held out by the run)")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--out", help="write per-slice results (CSV) here")
    a = ap.parse_args()
    want = set(a.patients.split(","))
    score = scorer(a)
    x, rows, _ = load_prep(a.prep)
    pick = [i for i, r in enumerate(rows) if patient(r["file"]) in want]
    if not pick:
        raise SystemExit(f"{a.prep}: no slice of {', '.join(sorted(want))}")
    results = []
    for s in range(0, len(pick), 16):
        b = pick[s : s + 16]
        prob, cam = score(np.ascontiguousarray(x[b]).astype(np.float32))
        for k, i in enumerate(b):
            lung = np.load(os.path.join(a.prep, "hu", f"{i:06}.mask.npy")) > 0
            mask = os.path.join(a.masks, os.path.splitext(rows[i]["file"])[0] + ".npy")
            if not os.path.exists(mask):
                raise SystemExit(f"{rows[i]['file']}: no lesion mask at {mask}")
            lesion = np.load(mask) > 0
            if lesion.shape != lung.shape:
                raise SystemExit(f"{mask}: lesion mask {lesion.shape} is not the slice's shape {lung.shape}")
            distance = lesion_distance(lesion)
            p = peak(upsample(cam[k], *lung.shape), lung)
            results.append((rows[i]["file"], float(prob[k]), int(p[0]), int(p[1]), int(hit(p, distance)), int(reach_hit(lung, distance, cam.shape[1]))))
    n = len(results)
    called = [r for r in results if r[1] >= a.threshold]
    summary = {
        "slices": n,
        "pointing_game": sum(r[4] for r in results) / n,
        "called_positive": len(called),
        "pointing_game_called_positive": sum(r[4] for r in called) / max(len(called), 1),
        "reach": sum(r[5] for r in results) / n,
        "threshold": a.threshold,
        "patients": sorted(want),
        "model": a.onnx or a.run,
    }
    if a.out:
        with open(a.out, "w") as f:
            wr = csv.writer(f)
            wr.writerow(["file", "prob", "peak_row", "peak_col", "hit", "reach_hit"])
            wr.writerows(results)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
