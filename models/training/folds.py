"""What the training tools share and that needs no torch: reading a `ctsentry prep` folder,
which patient a slice belongs to, the AUC, and the sensitivity-targeted threshold. train.py,
export.py, evaluate.py, pointing.py and crossval.py import it, so a split, a metric and a
threshold mean the same thing in each."""
import csv
import json
import math
import os

import numpy as np

# The pointing game's tolerance: a peak within 15 pixels of a 512-pixel slice's lesion counts
# (scaled with the image). pointing.py scores it, train.py's pointing loss aims at it.
TOLERANCE_PER_512 = 15.0


def load_prep(folder):
    """A `ctsentry prep` folder: (tensors [N,3,224,224] memory-mapped, index.csv rows, params.json);
    exits naming the folder when index.csv and tensors.npy disagree."""
    x = np.load(os.path.join(folder, "tensors.npy"), mmap_mode="r")
    rows = list(csv.DictReader(open(os.path.join(folder, "index.csv"))))
    params = json.load(open(os.path.join(folder, "params.json")))
    if len(rows) != x.shape[0]:
        raise SystemExit(f"{folder}: index.csv has {len(rows)} rows, tensors.npy {x.shape[0]}")
    return x, rows, params


def patient(file):
    """The patient a CT slice belongs to: the folder holding the file, up to the first `-`
    (`P001`, `A0002` for both of A0002's reconstructions, `cap001` for `cap001-sim2`, the lesions
    simulated into cap001; `P001` for the full release's `COVID-19 Cases/P001/…`), so that no
    patient is ever on both sides of a split."""
    parts = file.split("/")
    return parts[-2 if len(parts) > 1 else 0].split("-")[0]


def auc(pos, neg):
    """Area under the ROC curve of positive against negative scores (ties count one half); NaN
    when either side is empty."""
    pos, neg = np.asarray(pos, dtype=float), np.asarray(neg, dtype=float)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    gt = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(gt / (len(pos) * len(neg)))


def threshold_for_sensitivity(pos, target):
    """The largest threshold that keeps at least `target` of the positive scores at or above it
    (a slice is positive when its probability is >= the threshold)."""
    if len(pos) == 0:
        raise ValueError("no positive scores to choose a threshold on")
    pos = sorted(pos, reverse=True)
    return pos[int(math.ceil(target * len(pos))) - 1]


def threshold_for_mean_sensitivity(groups, target):
    """The largest threshold at which the sensitivity averaged over `groups` (name -> positive
    scores; each group one vote, so that no source with many slices sets it alone) is >= `target`,
    rounded down to 6 decimals (the scores' precision in the CSVs), and the per-group thresholds
    of `threshold_for_sensitivity` (the spread)."""
    groups = {g: np.asarray(v, dtype=float) for g, v in groups.items() if len(v)}
    if not groups:
        raise ValueError("no positive scores to choose a threshold on")
    best = min(float(v.min()) for v in groups.values())
    for t in np.unique(np.concatenate(list(groups.values())))[::-1]:
        if np.mean([(v >= t).mean() for v in groups.values()]) >= target:
            best = float(t)
            break
    return math.floor(best * 1e6) / 1e6, {g: float(threshold_for_sensitivity(list(v), target)) for g, v in groups.items()}


def manifest_head(name, version, sha, inp, pre, out):
    """The model bundle manifest's [model], [input], [preprocess] and [output] tables (the
    contract in models/README.md), as export.py and bundle.py write them: `inp` has name,
    layout, size, channels; `pre` window_center, window_width, lung_mask, mean, std; `out` prob,
    cam."""
    return f"""[model]
name = "{name}"
version = "{version}"
sha256 = "{sha}"
description = "DenseNet121 COVID-19 pneumonia slice classifier (sigmoid) with class activation map"

[input]
name = "{inp['name']}"
layout = "{inp['layout']}"
size = {inp['size']}
channels = {inp['channels']}

[preprocess]
window_center = {pre['window_center']}
window_width = {pre['window_width']}
lung_mask = {str(pre['lung_mask']).lower()}
mean = {pre['mean']}
std = {pre['std']}

[output]
prob = "{out['prob']}"
cam = "{out['cam']}"
"""
