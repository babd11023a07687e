#!/usr/bin/env python3
"""Pointing game: does the class activation map point at the lesion?

For each simulated slice of the given (held-out) patients: the model's CAM, upsampled to the
image as the appliance's heat maps do (bilinear, cell centres at block centres, confined to the
lung mask serving computes), has its maximum at a pixel; a hit when that pixel lies within the
simulated lesion mask grown by a tolerance of 15 pixels per 512 (the pointing game of Zhang J
et al., "Top-down neural attention by excitation backprop", ECCV 2016, with its 15-pixel
tolerance). Reports the hit rate over all lesioned slices and over those the model calls
positive at `--threshold`.

    ctsentry prep --hu --out /tmp/prep/sim --labels /tmp/sim/labels.csv /tmp/sim/dicom
    python3 models/training/pointing.py --run /tmp/run-val --prep /tmp/prep/sim \
        --masks /tmp/sim/masks --patients normal001,A0001 --threshold 0.5
"""
import argparse
import csv
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from folds import patient  # noqa: E402
from train import Net, load_prep  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--prep", required=True, help="`ctsentry prep --hu` of the simulated DICOM")
    ap.add_argument("--masks", required=True, help="lesions.py's masks/ folder")
    ap.add_argument("--patients", required=True, help="comma list of patients to score (held out by the run)")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--out", help="write per-slice results (CSV) here")
    a = ap.parse_args()
    want = set(a.patients.split(","))
    net = Net()
    net.load_state_dict(torch.load(os.path.join(a.run, "model.pt"), map_location="cpu"))
    net.eval()
    x, rows, _ = load_prep(a.prep)
    pick = [i for i, r in enumerate(rows) if patient(r["file"]) in want]
    hits, hits_pos, n_pos, results = 0, 0, 0, []
    for s in range(0, len(pick), 16):
        b = pick[s : s + 16]
        with torch.no_grad():
            logit, cam = net(torch.from_numpy(np.ascontiguousarray(x[b])).float())
        prob = torch.sigmoid(logit).numpy()
        for k, i in enumerate(b):
            lung = np.load(os.path.join(a.prep, "hu", f"{i:06}.mask.npy")) > 0
            lesion = np.load(os.path.join(a.masks, os.path.splitext(rows[i]["file"])[0] + ".npy")) > 0
            h, w = lung.shape
            up = F.interpolate(cam[k][None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
            up = np.where(lung, up, -np.inf) if lung.any() else up
            peak = np.unravel_index(int(np.argmax(up)), up.shape)
            tol = 15.0 * w / 512.0
            near = ndimage.distance_transform_edt(~lesion)[peak] <= tol if lesion.any() else False
            hits += int(near)
            positive = prob[k] >= a.threshold
            n_pos += int(positive)
            hits_pos += int(near and positive)
            results.append((rows[i]["file"], float(prob[k]), peak[0], peak[1], int(near)))
    n = len(results)
    summary = {"slices": n, "pointing_game": hits / max(n, 1), "called_positive": n_pos, "pointing_game_called_positive": hits_pos / max(n_pos, 1), "threshold": a.threshold, "patients": sorted(want)}
    if a.out:
        with open(a.out, "w") as f:
            wr = csv.writer(f)
            wr.writerow(["file", "prob", "peak_row", "peak_col", "hit"])
            wr.writerows(results)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
