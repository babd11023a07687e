#!/usr/bin/env python3
"""Pools the held-out results of several folds (evaluate.py outputs) into one out-of-fold
estimate, and says which threshold and series rule those pooled scores would give.

Each fold is a training run that never saw its held-out patients, evaluated through the
appliance by `evaluate.py --held-out ...` (its `eval-*-held_out/scores.csv`: every held-out slice
with the probability `ctsentry eval` gave it, 0 for slices skipped for lack of lung, and its
label; its `report.json`: the run, the held-out patients and the `ctsentry score` probabilities
of every held-out series). Pooling takes every slice from the one fold that held its patient
out, so no slice is scored by a model that trained on its patient. A patient held out by two
folds, a run given twice and a fold that holds out nothing are refused.

    python3 models/training/crossval.py --fold /tmp/eval-cam --fold /tmp/eval-foldB \
        --threshold 0.194941 --out /tmp/crossval.json

Reports, pooled and for each fold alone:
- the reference protocol (P001's labelled infected slices against every normal001 slice), the
  full protocol (every COVID-CT-MD slice, CAP as negatives), lung-pet-ct-dx (all negatives) and
  every real CT slice (full + lung-pet-ct-dx; the reference protocol is a subset of full): AUC,
  accuracy, sensitivity, specificity and log loss at the threshold;
- the threshold: --threshold, or the largest with sensitivity >= --sensitivity on the pooled
  real CT slices, rounded down to 6 decimals below the 6-decimal probabilities of scores.csv
  (so the slice that sets it stays at or above it in full precision);
- series level: each held-out series' positive-slice count at that threshold (`ctsentry score`
  probabilities; a series alerts when its count is >= min_positive_slices), and the
  `min_positive_slices` that separates the COVID-19 series (--covid-series) from the others
  (their midpoint, rounded up), if one does.
Pooled numbers assume the folds share one probability scale; compare the per-fold rows before
trusting them (models/README.md: with this recipe they do not).
"""
import argparse
import csv
import glob
import json
import math
import os

import numpy as np

from folds import auc, patient, threshold_for_sensitivity


def table(rows, t):
    """AUC, accuracy, sensitivity, specificity and log loss of (prob, label) rows at threshold t;
    None for no rows."""
    if not rows:
        return None
    p = np.array([r[0] for r in rows])
    y = np.array([r[1] for r in rows])
    pos, neg = p[y == 1], p[y == 0]
    q = np.clip(p, 1e-7, 1 - 1e-7)
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
    """(run, held-out patients, {protocol: [(file, prob, label)]}, {series: report entry}) of one
    evaluate.py output folder; exits naming the file and the reason when it is not one."""
    path = os.path.join(folder, "report.json")
    try:
        report = json.load(open(path))
        run, held, series = report["run"], set(report["held_out"]), report["series"]
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"{path}: not an evaluate.py report ({e})")
    slices = {}
    for scores in sorted(glob.glob(os.path.join(folder, "eval-*-held_out", "scores.csv"))):
        name = os.path.basename(os.path.dirname(scores))[len("eval-") : -len("-held_out")]
        rows = []
        for r in csv.DictReader(open(scores)):
            if r["label"] == "":
                continue
            if patient(r["file"]) not in held:
                raise SystemExit(f"{scores}: {r['file']} is not held out by this fold (held out: {', '.join(sorted(held))})")
            rows.append((r["file"], float(r["prob"]), int(r["label"])))
        slices[name] = rows
    if not held or not any(slices.values()):
        raise SystemExit(f"{folder}: the fold holds out no patient with scored slices (no eval-*-held_out/scores.csv rows)")
    return run, held, slices, {k: v for k, v in series.items() if v["held_out"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fold", action="append", required=True, help="an evaluate.py output folder (repeatable)")
    ap.add_argument("--sensitivity", type=float, default=0.90)
    ap.add_argument("--threshold", type=float, help="evaluate this threshold instead of choosing one")
    ap.add_argument("--covid-series", default="P001", help="comma list of the COVID-19 series (evaluate.py's series names)")
    ap.add_argument("--out", help="write the pooled report (JSON) here")
    a = ap.parse_args()
    covid = set(a.covid_series.split(","))

    folds, held_by, runs = {}, {}, {}
    for f in a.fold:
        name = os.path.basename(os.path.normpath(f))
        run, held, slices, series = load_fold(f)
        if run in runs:
            raise SystemExit(f"{f}: evaluates the same run ({run}) as {runs[run]}: a run is one fold")
        runs[run] = f
        for p in held:
            if p in held_by:
                raise SystemExit(f"{p} is held out by both {held_by[p]} and {f}: pooled results must be out-of-fold once")
            held_by[p] = f
        folds[name] = (slices, series)

    pooled = {}
    for name, (slices, _) in folds.items():
        for protocol, rows in slices.items():
            pooled.setdefault(protocol, []).extend((name, *r) for r in rows)
    pooled["all real CT"] = pooled.get("full", []) + pooled.get("lung-pet-ct-dx", [])
    if a.threshold is not None:
        t, method = a.threshold, "given"
    else:
        pos = [r[2] for r in pooled["all real CT"] if r[3] == 1]
        if not pos:
            raise SystemExit("no held-out positive slice to choose a threshold on")
        t = math.floor((threshold_for_sensitivity(pos, a.sensitivity) - 5e-7) * 1e6) / 1e6
        method = f"largest with sensitivity >= {a.sensitivity} on {len(pooled['all real CT'])} pooled out-of-fold real CT slices"

    report = {"threshold": t, "threshold_method": method, "folds": {f: sorted(p for p, g in held_by.items() if g == f) for f in a.fold}, "pooled": {}, "per_fold": {}, "series": {}}
    for protocol, rows in sorted(pooled.items()):
        tab = table([(r[2], r[3]) for r in rows], t)
        if tab:
            report["pooled"][protocol] = tab
        for name in folds:
            tab = table([(r[2], r[3]) for r in rows if r[0] == name], t)
            if tab:
                report["per_fold"][f"{protocol} ({name})"] = tab
    for name, (_, series) in folds.items():
        for k, v in series.items():
            report["series"][k] = {"fold": name, "slices": v["slices"], "positives_at_threshold": int(sum(p >= t for p in v["probs"])), "covid": k in covid}
    pos_counts = [v["positives_at_threshold"] for v in report["series"].values() if v["covid"]]
    neg_counts = [v["positives_at_threshold"] for v in report["series"].values() if not v["covid"]]
    if pos_counts and neg_counts:
        lo, hi = min(pos_counts), max(neg_counts)
        report["min_positive_slices"] = (lo + hi + 1) // 2 if lo > hi else None
        report["series_margin"] = lo - hi

    print(f"threshold {t:.6f} ({method})")
    for scope in ("pooled", "per_fold"):
        for name, tab in report[scope].items():
            print(f"{scope:8} {name:34} n={tab['slices']:4} pos={tab['positives']:3} AUC {tab['auc']:.3f} acc {tab['accuracy']:.3f} sens {tab['sensitivity']:.3f} spec {tab['specificity']:.3f} loss {tab['loss']:.3f}")
    for k, v in report["series"].items():
        print(f"series {k:11} {v['positives_at_threshold']:4} of {v['slices']:4} ({'COVID-19' if v['covid'] else 'non-COVID'}, {v['fold']})")
    if "series_margin" in report:
        print(f"min_positive_slices {report['min_positive_slices']} (margin {report['series_margin']} slices)")
    if a.out:
        # NaN (a set without positives or negatives) is not JSON: written as null.
        clean = lambda v: None if isinstance(v, float) and math.isnan(v) else {k: clean(x) for k, x in v.items()} if isinstance(v, dict) else v
        json.dump(clean(report), open(a.out, "w"), indent=1, allow_nan=False)


if __name__ == "__main__":
    main()
