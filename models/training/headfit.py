#!/usr/bin/env python3
"""Head refitting on every source, leave-one-source-out: the recipe of densenet121-covid 4.x.

The DenseNet121 backbone of the previous bundle stays as it is (its ranking transfers to unseen
patients and sites: AUC 0.94-0.98); its linear head — the decision — is fitted again on the
pooled features (`features.py`) of every source there is, with each source weighing the same,
so that no single hospital's scanner sets the operating point. Everything a site would see is
measured leave-one-source-out: each source's slices are scored by a head fitted without that
source (nor the lesions simulated into it).

The rule is fixed here, before any held-out number is looked at:
- head: L2 logistic regression on standardised features, C = `--c` (0.05), each (source, label)
  cell given equal total weight;
- calibration: Platt scaling (a*logit + b) fitted on the pooled out-of-fold logits (weighted as
  the head), folded into the head; the expected calibration error (ECE, 10 bins) is reported
  before and after;
- threshold: the largest with pooled out-of-fold sensitivity >= `--sensitivity` (0.92: a margin
  over the 0.90 goal) on the real COVID-19 slices (not simulated); its spread is the range of the
  same rule applied to each fold holding COVID-19 slices;
- series rule: `--min-extent-mm` (15: half of a 10-slice 3 mm series) and `--min-share` (0.15)
  of the lung, judged on held-out series (series.py: `ctsentry score --json` of the bundle).

    python3 models/training/headfit.py --features /tmp/feat --prep /tmp/prep --out /tmp/head

`--prep` is the folder holding the prep folders (their index.csv give labels and files). The
output folder gets `summary.json` (per-source results, calibration, threshold spread,
ablations), `oof.csv` (every slice's held-out probability) and `head.npz` (the final head,
fitted on everything and calibrated, for bundle.py).
"""
import argparse
import csv
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from folds import auc, threshold_for_sensitivity  # noqa: E402

# The prep folders this recipe reads, and the source of their rows.
MULTISITE_LABELS = "multisite.csv"


def sources_of(name, rows, patient_source):
    """(source, patient, simulated) of each row of the prep folder `name`."""
    out = []
    for r in rows:
        f = r["file"]
        parts = f.split("/")
        if name == "ct":
            out.append(("covid-ct-md", parts[0], False))
        elif name == "lpd":
            out.append(("lung-pet-ct-dx", parts[0].split("-")[0], False))
        elif name == "ms":
            out.append((parts[0], parts[1], False))
        elif name.startswith("sim"):
            bg = parts[0].rsplit("-sim", 1)[0]
            if bg not in patient_source:
                raise SystemExit(f"{name}/{f}: background series {bg} has no known source")
            src, pat = patient_source[bg]
            out.append((src, pat, True))
        elif name in ("ucsd", "ma", "medseg", "song"):
            src = {"ucsd": "ucsd-covid-ct", "ma": "ma-covid-seg", "medseg": "medseg", "song": "song-pneumonia"}[name]
            pat = parts[0] if name == "song" else src
            out.append((src, pat, False))
        else:
            raise SystemExit(f"{name}: unknown prep folder (expected ct, lpd, ms, ucsd, ma, medseg, song, sim*)")
    return out


def load(features, prep, names):
    """Stacked features, labels, lung fractions and (source, patient, simulated, folder, file)."""
    patient_source = {}
    xs, ys, lungs, meta = [], [], [], []
    order = sorted(names, key=lambda n: n.startswith("sim"))  # backgrounds first: sims name them
    for name in order:
        rows = list(csv.DictReader(open(os.path.join(prep, name, "index.csv"))))
        z = np.load(os.path.join(features, name + ".npz"))
        if z["pooled"].shape[0] != len(rows):
            raise SystemExit(f"{features}/{name}.npz: {z['pooled'].shape[0]} rows, {prep}/{name}/index.csv {len(rows)}")
        src = sources_of(name, rows, patient_source)
        for r, (s, p, sim) in zip(rows, src):
            if not sim:
                patient_source[os.path.basename(os.path.dirname(r["file"])) or r["file"]] = (s, p)
        keep = [i for i, r in enumerate(rows) if r["label"] in ("0", "1")]
        xs.append(z["pooled"][keep])
        ys.extend(int(rows[i]["label"]) for i in keep)
        lungs.extend(float(rows[i]["lung_fraction"]) for i in keep)
        meta.extend((*src[i], name, rows[i]["file"]) for i in keep)
    return np.concatenate(xs), np.array(ys), np.array(lungs), meta


def weights(y, src):
    """Each (source, label) cell the same total weight; mean weight 1."""
    cells = {}
    for s, l in zip(src, y):
        cells[(s, l)] = cells.get((s, l), 0) + 1
    w = np.array([1.0 / cells[(s, l)] for s, l in zip(src, y)])
    return w * len(w) / w.sum()


def fit(x, y, w, c):
    from sklearn.linear_model import LogisticRegression

    mu, sd = x.mean(0), x.std(0) + 1e-6
    m = LogisticRegression(C=c, max_iter=3000)
    m.fit((x - mu) / sd, y, sample_weight=w)
    # Back to the raw features: logit = w.x + b.
    coef = m.coef_[0] / sd
    return coef, float(m.intercept_[0] - (coef * mu).sum())


def platt(z, y, w):
    """a, b minimising the weighted log loss of sigmoid(a*z + b)."""
    from scipy.optimize import minimize

    def loss(p):
        t = p[0] * z + p[1]
        return float((w * (np.logaddexp(0, t) - y * t)).sum() / w.sum())

    return minimize(loss, [1.0, 0.0], method="Nelder-Mead").x


def ece(p, y, bins=10):
    """Expected calibration error: mean |accuracy - confidence| over equal-width bins, weighted by count."""
    e, n = 0.0, len(p)
    for b in range(bins):
        m = (p >= b / bins) & ((p < (b + 1) / bins) if b < bins - 1 else (p <= 1))
        if m.any():
            e += m.sum() / n * abs(y[m].mean() - p[m].mean())
    return float(e)


def sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def loso(x, y, meta, c, exclude=lambda m: False):
    """Out-of-fold logits, each source scored by a head fitted on the other sources (rows for
    which `exclude` is true are never trained on, but are scored)."""
    src = np.array([m[0] for m in meta])
    train_ok = np.array([not exclude(m) for m in meta])
    z = np.full(len(y), np.nan)
    heads = {}
    for s in sorted(set(src)):
        tr = (src != s) & train_ok
        if len(set(y[tr])) < 2:
            raise SystemExit(f"fold {s}: training side has one class only")
        wt = weights(y[tr], src[tr])
        coef, b = fit(x[tr], y[tr], wt, c)
        te = src == s
        z[te] = x[te] @ coef + b
        heads[s] = (coef, b)
    return z, heads


def per_source(p, y, meta, t):
    out = {}
    for s in sorted({m[0] for m in meta}):
        m = np.array([mm[0] == s for mm in meta])
        real = m & np.array([not mm[2] for mm in meta])
        sim = m & np.array([mm[2] for mm in meta])
        r = {"slices": int(real.sum())}
        pos, neg = p[real & (y == 1)], p[real & (y == 0)]
        if len(pos):
            r["sensitivity"] = float((pos >= t).mean())
            r["positives"] = int(len(pos))
        if len(neg):
            r["specificity"] = float((neg < t).mean())
            r["negatives"] = int(len(neg))
            r["negative_median_prob"] = float(np.median(neg))
        if len(pos) and len(neg):
            r["auc"] = auc(pos, neg)
        if sim.any():
            r["simulated_sensitivity"] = float((p[sim] >= t).mean())
            r["simulated"] = int(sim.sum())
        out[s] = r
    return out


def reference_protocol(p, y, meta, t):
    """P001's labelled positives against normal001's slices (the reference work's protocol)."""
    pos = [p[i] for i, m in enumerate(meta) if m[1] == "P001" and y[i] == 1 and not m[2]]
    neg = [p[i] for i, m in enumerate(meta) if m[1] == "normal001" and not m[2]]
    tp, tn = sum(q >= t for q in pos), sum(q < t for q in neg)
    cap = [p[i] for i, m in enumerate(meta) if m[1] == "cap001" and not m[2]]
    return {
        "auc": auc(pos, neg),
        "accuracy": (tp + tn) / (len(pos) + len(neg)),
        "sensitivity": tp / len(pos),
        "specificity": tn / len(neg),
        "cap001_specificity": float(np.mean([q < t for q in cap])),
        "all_covid_ct_md_auc": auc(pos, neg + cap),
    }


def evaluate(x, y, meta, a, exclude=lambda m: False):
    """The whole rule on one data selection: out-of-fold logits, calibration, threshold, results."""
    src = np.array([m[0] for m in meta])
    used = np.array([not exclude(m) for m in meta])
    z, heads = loso(x, y, meta, a.c, exclude)
    w = weights(y, src)
    ab = platt(z[used], y[used], w[used])
    p = sig(ab[0] * z + ab[1])
    real_pos = np.array([(not m[2]) for m in meta]) & (y == 1) & used
    t = float(threshold_for_sensitivity(list(p[real_pos]), a.sensitivity))
    t = float(np.floor(t * 1e6) / 1e6)
    spread = {}
    for s in sorted(set(src[real_pos])):
        q = p[real_pos & (src == s)]
        spread[s] = float(threshold_for_sensitivity(list(q), a.sensitivity))
    return {
        "z": z,
        "p": p,
        "heads": heads,
        "platt": [float(ab[0]), float(ab[1])],
        "ece_before": ece(sig(z[used]), y[used]),
        "ece_after": ece(p[used], y[used]),
        "threshold": t,
        "threshold_per_fold": spread,
        "per_source": per_source(p, y, meta, t),
        "reference_protocol": reference_protocol(p, y, meta, t),
    }


def pointing(features, prep, names, heads, extra):
    """Pointing game on the real lesion masks (ma-covid-seg, medseg): each slice's CAM from the
    head its source was held out of (`heads`: source -> weights, or one array for every source)."""
    from pointing import hit, lesion_distance, peak, upsample

    sources = {"ma": "ma-covid-seg", "medseg": "medseg"}
    res = {}
    for name in names:
        if name not in sources:
            continue
        z = np.load(os.path.join(features, name + ".npz"))
        if "maps" not in z:
            continue
        maps = z["maps"]
        rows = list(csv.DictReader(open(os.path.join(prep, name, "index.csv"))))
        src = sources[name]
        w = heads[src][0] if isinstance(heads, dict) else heads
        hits = []
        for i, r in enumerate(rows):
            lung = np.load(os.path.join(prep, name, "hu", f"{i:06}.mask.npy")) > 0
            lesion = mask_of(extra, name, r["file"])
            if lesion.shape != lung.shape or not lesion.any():
                continue
            cam = np.einsum("khw,k->hw", maps[i].astype(np.float32), w)
            hits.append(hit(peak(upsample(cam, *lung.shape), lung), lesion_distance(lesion)))
        res[src] = {"slices": len(hits), "pointing_game": float(np.mean(hits)) if hits else float("nan")}
    return res


def mask_of(extra, name, file):
    """The radiologist's lesion mask of a staged ma-covid-seg or medseg slice (stage_extra.py
    names), read from the assembled folders under `extra` (assemble.sh's layout)."""
    from PIL import Image

    if name == "ma":
        path = os.path.join(extra, "ma-covid-seg", "mask", os.path.basename(file))
    else:
        part, stem = file.split("/")[0], os.path.splitext(os.path.basename(file))[0]
        path = os.path.join(extra, "medseg", part, "mask", stem + ".png")
    return np.asarray(Image.open(path).convert("L")) > 127


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", required=True, help="features.py output folder")
    ap.add_argument("--prep", required=True, help="folder holding the prep folders")
    ap.add_argument("--names", default="ct,lpd,ms,ucsd,ma,medseg,song,simct,simlpd,simms", help="prep folders to use (comma list)")
    ap.add_argument("--extra", help="assemble.sh's output folder (the real lesion masks, for the pointing game)")
    ap.add_argument("--min-lung", type=float, default=0.0, help="only rows with at least this lung fraction (0.02: the slices the appliance scores; recipe A ran with 0)")
    ap.add_argument("--c", type=float, default=0.05)
    ap.add_argument("--sensitivity", type=float, default=0.92)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    names = a.names.split(",")
    x, y, lung, meta = load(a.features, a.prep, names)
    keep = lung >= a.min_lung
    x, y, lung, meta = x[keep], y[keep], lung[keep], [m for m, k in zip(meta, keep) if k]
    src = np.array([m[0] for m in meta])
    print(f"{len(y)} slices, {int(y.sum())} positive, sources: " + ", ".join(f"{s} {int((src == s).sum())}" for s in sorted(set(src))), flush=True)

    main_run = evaluate(x, y, meta, a)
    ablations = {
        "no multisite (its negatives and the lesions drawn into them never trained on)": lambda m: m[3] == "ms" or (m[3].startswith("sim") and m[0] not in ("covid-ct-md", "lung-pet-ct-dx")),
        "no real-mask sets (ma-covid-seg, medseg never trained on)": lambda m: m[0] in ("ma-covid-seg", "medseg"),
        "no simulated lesions": lambda m: m[2],
    }
    abl = {}
    for k, ex in ablations.items():
        r = evaluate(x, y, meta, a, ex)
        abl[k] = {"threshold": r["threshold"], "per_source": r["per_source"], "reference_protocol": r["reference_protocol"]}
        print(f"ablation {k}: threshold {r['threshold']:.4f}, reference {r['reference_protocol']}", flush=True)

    # The shipped head: fitted on everything, calibrated with the pooled out-of-fold Platt fit.
    coef, b = fit(x, y, weights(y, src), a.c)
    pa, pb = main_run["platt"]
    np.savez(os.path.join(a.out, "head.npz"), weight=(pa * coef).astype(np.float32), bias=np.float32(pa * b + pb))
    # The held-out heads, calibrated as the shipped one: what series.py scores each source with.
    for s, (cw, cb) in main_run["heads"].items():
        os.makedirs(os.path.join(a.out, "loso"), exist_ok=True)
        np.savez(os.path.join(a.out, "loso", s + ".npz"), weight=(pa * cw).astype(np.float32), bias=np.float32(pa * cb + pb))
    with open(os.path.join(a.out, "oof.csv"), "w") as f:
        wr = csv.writer(f)
        wr.writerow(["folder", "file", "source", "patient", "simulated", "label", "lung_fraction", "prob"])
        for m, yy, l, p in zip(meta, y, lung, main_run["p"]):
            wr.writerow([m[3], m[4], m[0], m[1], int(m[2]), yy, f"{l:.4f}", f"{p:.6f}"])
    summary = {k: v for k, v in main_run.items() if k not in ("z", "p", "heads")}
    if a.extra:
        old = np.load(os.path.join(a.features, "head0.npz"))["weight"] if os.path.exists(os.path.join(a.features, "head0.npz")) else None
        summary["pointing_held_out"] = pointing(a.features, a.prep, names, main_run["heads"], a.extra)
        summary["pointing_final_head"] = pointing(a.features, a.prep, names, pa * coef, a.extra)
        if old is not None:
            summary["pointing_previous_head"] = pointing(a.features, a.prep, names, old, a.extra)
        print("pointing (held out):", summary["pointing_held_out"], "previous head:", summary.get("pointing_previous_head"), flush=True)
    summary.update({"args": vars(a), "slices": int(len(y)), "positives": int(y.sum()), "ablations": abl})
    json.dump(summary, open(os.path.join(a.out, "summary.json"), "w"), indent=2)
    print(json.dumps({k: summary[k] for k in ("threshold", "platt", "ece_before", "ece_after", "reference_protocol", "threshold_per_fold")}, indent=1))
    for s, r in summary["per_source"].items():
        print(s, r)


if __name__ == "__main__":
    main()
