#!/usr/bin/env python3
"""Series-level verdicts held out, through the appliance itself: every DICOM series of each
source is scored by `ctsentry score --json` with an evaluation bundle whose head was fitted
without that source (blockfit.py's loso/<source>.onnx or headfit.py's loso/<source>.npz,
calibrated as the shipped model), at the
shipped threshold and series rule; and again cut thicker, every k-th slice (k = 2, 3, 4), as a
scanner reconstructing thicker slices would deliver it.

    python3 models/training/series.py --ctsentry target/release/ctsentry --base models/densenet121-covid.onnx \
        --head-dir /tmp/head --prep /tmp/prep --threshold T --min-extent-mm 15 --min-share 0.15 \
        --series ct=../shared/data/covid-ct-md --series lpd=../shared/data/lung-pet-ct-dx ... --out /tmp/series

`--series NAME=ROOT` names a prep folder and the root its index.csv files are relative to; a
series is the folder holding a file; its label is positive when any of its slices is. The
output folder gets `series.csv` (one row per series and k) and `series.json` (a summary).
"""
import argparse
import csv
import json
import os
import subprocess
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from headfit import sources_of  # noqa: E402


def loso_weights(folder, source):
    """bundle.py's arguments for the held-out weights of `source` in a blockfit.py (loso/S.onnx)
    or headfit.py (loso/S.npz) output folder."""
    for ext, flag in ((".onnx", "--graph"), (".npz", "--head")):
        path = os.path.join(folder, "loso", source + ext)
        if os.path.exists(path):
            return [flag, path]
    raise SystemExit(f"{folder}/loso: no held-out weights for {source}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ctsentry", required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--head-dir", help="blockfit.py's or headfit.py's output folder (held-out weights per source)")
    ap.add_argument("--bundle", action="store_true", help="score every source with --base itself (a bundle none of these sources trained, or to see the shipped one)")
    ap.add_argument("--prep", required=True, help="folder holding the prep folders")
    ap.add_argument("--series", action="append", required=True, help="NAME=ROOT (repeatable)")
    ap.add_argument("--threshold", type=float, required=True)
    ap.add_argument("--min-extent-mm", type=float, required=True)
    ap.add_argument("--min-share", type=float, required=True)
    ap.add_argument("--min-positive-slices", type=int, default=2)
    ap.add_argument("--k", default="1,2,3,4")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    here = os.path.dirname(os.path.abspath(__file__))

    # Every series, by source: (source, series folder, label, files in slice order).
    patient_source, by_source = {}, defaultdict(list)
    for spec in sorted(a.series, key=lambda s: s.split("=")[0].startswith("sim")):
        name, root = spec.split("=", 1)
        rows = list(csv.DictReader(open(os.path.join(a.prep, name, "index.csv"))))
        src = sources_of(name, rows, patient_source)
        groups = defaultdict(list)
        for r, (s, p, sim) in zip(rows, src):
            if not sim:
                patient_source[os.path.basename(os.path.dirname(r["file"])) or r["file"]] = (s, p)
            groups[(s, os.path.dirname(r["file"]))].append(r)
        for (s, folder), rs in groups.items():
            rs.sort(key=lambda r: int(r["slice_index"]))
            label = int(any(r["label"] == "1" for r in rs))
            by_source[s].append((f"{name}:{folder}", label, [os.path.join(root, r["file"]) for r in rs]))

    results = []
    for source, series in sorted(by_source.items()):
        bundle = os.path.join(a.out, "bundles", source)
        weights = ["--graph", a.base] if a.bundle else loso_weights(a.head_dir, source)
        subprocess.run(
            [sys.executable, os.path.join(here, "bundle.py"), "--base", a.base, *weights,
             "--version", "0.0.0-eval", "--threshold", str(a.threshold), "--min-extent-mm", str(a.min_extent_mm), "--min-share", str(a.min_share),
             "--min-positive-slices", str(a.min_positive_slices), "--out", bundle],
            check=True, stdout=subprocess.DEVNULL,
        )
        cfg = os.path.join(bundle, "ctsentry.toml")
        open(cfg, "w").write(f'[model]\npath = "{os.path.join(bundle, "densenet121-covid.onnx")}"\n')
        for k in [int(v) for v in a.k.split(",")]:
            for offset in range(k):
                # One run per cut: the appliance groups the files into series by their UID.
                picked = {f: (sid, label) for sid, label, files in series for f in files[offset::k]}
                out = subprocess.run([a.ctsentry, "score", "--json", "--config", cfg, *picked], capture_output=True, text=True)
                lines = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
                # A series is a Series Instance UID; a folder may hold more than one.
                folder_of, seen = {}, set()
                for l in lines:
                    if l.get("type") == "slice":
                        seen.add(l["file"])
                        sid = picked[l["file"]][0]
                        if folder_of.setdefault(l["series_uid"], sid) != sid:
                            raise SystemExit(f"{sid} and {folder_of[l['series_uid']]} share Series Instance UID {l['series_uid']}")
                if seen != set(picked):
                    raise SystemExit(f"{source} k={k}: {len(set(picked) - seen)} files not scored: {out.stderr[-800:]}")
                labels = {sid: label for sid, label in picked.values()}
                got = [l for l in lines if l.get("type") == "series"]
                for r in got:
                    sid = folder_of[r["series_uid"]]
                    results.append({"source": source, "series": f"{sid}#{r['series_uid'][-8:]}", "series_uid": r["series_uid"], "label": labels[sid], "k": k, "offset": offset, "slices": r["slices"],
                                    "positives": r["positives"], "positive_extent_mm": r["positive_extent_mm"], "positive_share": r["positive_share"],
                                    "max_prob": r["max_prob"], "verdict": r["verdict"]})
            print(f"{source} k={k}: {sum(1 for r in results if r['source'] == source and r['k'] == k)} series cuts scored", flush=True)
    with open(os.path.join(a.out, "series.csv"), "w") as f:
        w = csv.DictWriter(f, fieldnames=list(results[0]))
        w.writeheader()
        w.writerows(results)
    summary = {}
    for k in sorted({r["k"] for r in results}):
        rk = [r for r in results if r["k"] == k]
        pos = [r for r in rk if r["label"] == 1]
        neg = [r for r in rk if r["label"] == 0]
        summary[f"k{k}"] = {
            "positive_series_cuts": len(pos),
            "missed": [f"{r['series']}@{r['offset']}" for r in pos if r["verdict"] != "positive"],
            "positive_series": sorted({r["series"] for r in pos}),
            "negative_series_cuts": len(neg),
            "false_alerts": [f"{r['series']}@{r['offset']}" for r in neg if r["verdict"] == "positive"],
        }
    json.dump(summary, open(os.path.join(a.out, "series.json"), "w"), indent=2)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
