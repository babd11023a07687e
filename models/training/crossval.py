#!/usr/bin/env python3
"""Pools the held-out results of several folds (evaluate.py outputs) into one cross-validated
estimate, and chooses the shipped settings from it.

Each fold is a training run that never saw its held-out patients, evaluated through the
appliance by `evaluate.py --held-out ...` (its `eval-*-held_out/scores.csv`: every held-out slice
with the probability `ctsentry eval` gave it, 0 for slices skipped for lack of lung, and its
label; its `report.json`: the `ctsentry score` probabilities of every held-out series). Pooling
takes every slice from the one fold that held its patient out, so every number below is
out-of-fold: no slice is scored by a model that trained on its patient. Folds must not hold out
the same patient twice.

    python3 models/training/crossval.py --fold /tmp/eval-cam --fold /tmp/eval-foldB \
        --sensitivity 0.90 --out /tmp/crossval.json

Reports, for the pooled slices and for each fold alone:
- the reference protocol (P001's labelled infected slices against every normal001 slice), the
  full protocol (every COVID-CT-MD slice, CAP as negatives) and lung-pet-ct-dx (all negatives):
  AUC, accuracy, sensitivity, specificity and log loss at the threshold;
- the threshold: the largest with sensitivity >= --sensitivity on the pooled real CT slices (or
  --threshold to evaluate a given one);
- series level: each held-out series' positive-slice count at that threshold (`ctsentry score`
  probabilities), and `min_positive_slices` as the midpoint between the smallest COVID-19 count
  and the largest non-COVID count when they separate.
"""
import argparse
import csv
import glob
import json
import math
import os

import numpy as np

COVID_SERIES = {"P001"}  # the COVID-19 series among evaluate.py's SERIES


def patient(file):
    return file.split("/")[0].split("-")[0]


def auc(pos, neg):
    pos, neg = np.asarray(pos), np.asarray(neg)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    gt = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(gt / (len(pos) * len(neg)))


def table(rows, t):
    """AUC, accuracy, sensitivity, specificity, log loss of (prob, label) rows at threshold t."""
    p = np.array([r[0] for r in rows])
    y = np.array([r[1] for r in rows])
    if len(p) == 0:
        return None
    pos, neg = p[y == 1], p[y == 0]
    eps = 1e-7
    q = np.clip(p, eps, 1 - eps)
    return {
        "slices": int(len(p)),
        "positives": int(len(pos)),
        "auc": auc(pos, neg),
        "accuracy": float(((p >= t) == (y == 1)).mean()),
        "sensitivity": float((pos >= t).mean()) if len(pos) else float("nan"),
        "specificity": float((neg < t).mean()) if len(neg) else float("nan"),
        "loss": float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))),
    }


def load_fold(folder):
    """{protocol: [(patient, file, prob, label)]} of a fold's held-out slices, its held-out
    patients and its held-out series probabilities."""
    report = json.load(open(os.path.join(folder, "report.json")))
    held = set(report["held_out"])
    slices = {}
    for path in sorted(glob.glob(os.path.join(folder, "eval-*-held_out", "scores.csv"))):
        name = os.path.basename(os.path.dirname(path))[len("eval-") : -len("-held_out")]
        rows = []
        for r in csv.DictReader(open(path)):
            if r["label"] == "":
                continue
            assert patient(r["file"]) in held, f"{path}: {r['file']} is not held out by this fold"
            rows.append((patient(r["file"]), r["file"], float(r["prob"]), int(r["label"])))
        slices[name] = rows
    series = {k: v for k, v in report["series"].items() if v["held_out"]}
    return held, slices, series


def pick_threshold(pos, target):
    pos = sorted(pos, reverse=True)
    return pos[int(math.ceil(target * len(pos))) - 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fold", action="append", required=True, help="an evaluate.py output folder (repeatable)")
    ap.add_argument("--sensitivity", type=float, default=0.90)
    ap.add_argument("--threshold", type=float, help="evaluate this threshold instead of choosing one")
    ap.add_argument("--out", help="write the pooled report (JSON) here")
    a = ap.parse_args()

    folds = {f: load_fold(f) for f in a.fold}
    seen = {}
    for f, (held, _, _) in folds.items():
        for p in held:
            if p in seen:
                raise SystemExit(f"{p} is held out by both {seen[p]} and {f}: pooled results must be out-of-fold once")
            seen[p] = f

    # Every real CT slice once (the full and lung-pet-ct-dx protocols hold every slice; the
    # reference protocol is a subset of full).
    pooled = {}
    for f, (_, slices, _) in folds.items():
        for name, rows in slices.items():
            pooled.setdefault(name, []).extend((f, *r) for r in rows)
    everything = pooled.get("full", []) + pooled.get("lung-pet-ct-dx", [])
    if a.threshold is not None:
        t = a.threshold
        method = "given"
    else:
        pos = [r[3] for r in everything if r[4] == 1]
        if not pos:
            raise SystemExit("no held-out positive slice to choose a threshold on")
        t = pick_threshold(pos, a.sensitivity)
        method = f"largest with sensitivity >= {a.sensitivity} on {len(everything)} pooled out-of-fold real CT slices"

    report = {"threshold": t, "threshold_method": method, "folds": {f: sorted(h) for f, (h, _, _) in folds.items()}, "pooled": {}, "per_fold": {}, "series": {}}
    for name, rows in sorted(pooled.items()):
        report["pooled"][name] = table([(r[3], r[4]) for r in rows], t)
        for f in folds:
            tab = table([(r[3], r[4]) for r in rows if r[0] == f], t)
            if tab:
                report["per_fold"][f"{name} ({os.path.basename(f)})"] = tab
    report["pooled"]["all real CT"] = table([(r[3], r[4]) for r in everything], t)
    # Each series' probabilities come from the fold that held its patient out.
    for f, (_, _, series) in folds.items():
        for k, v in series.items():
            report["series"][k] = {"fold": f, "slices": v["slices"], "positives_at_threshold": int(sum(p >= t for p in v["probs"])), "covid": k.split("-")[0] in COVID_SERIES}
    covid = [v["positives_at_threshold"] for v in report["series"].values() if v["covid"]]
    other = [v["positives_at_threshold"] for v in report["series"].values() if not v["covid"]]
    if covid and other:
        lo, hi = min(covid), max(other)
        report["min_positive_slices"] = (lo + hi + 1) // 2 if lo > hi else None
        report["series_margin"] = lo - hi

    print(f"threshold {t:.6f} ({method})")
    for scope in ("pooled", "per_fold"):
        for name, tab in report[scope].items():
            print(f"{scope:8} {name:40} n={tab['slices']:4} pos={tab['positives']:3} AUC {tab['auc']:.3f} acc {tab['accuracy']:.3f} sens {tab['sensitivity']:.3f} spec {tab['specificity']:.3f} loss {tab['loss']:.3f}")
    for k, v in report["series"].items():
        print(f"series {k:11} {v['positives_at_threshold']:4} of {v['slices']:4} ({'COVID-19' if v['covid'] else 'non-COVID'}, {os.path.basename(v['fold'])})")
    if "series_margin" in report:
        print(f"min_positive_slices {report['min_positive_slices']} (margin {report['series_margin']} slices)")
    if a.out:
        # NaN (no positive or no negative in a set) is not JSON: written as null.
        clean = lambda v: None if isinstance(v, float) and math.isnan(v) else {k: clean(x) for k, x in v.items()} if isinstance(v, dict) else v
        json.dump(clean(report), open(a.out, "w"), indent=1, allow_nan=False)


if __name__ == "__main__":
    main()
