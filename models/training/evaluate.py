#!/usr/bin/env python3
"""Evaluates a trained run through the appliance itself: exports the run to a bundle, then runs
`ctsentry eval` (the reference work's table) on the protocols and `ctsentry score` on every
shared series (series-level verdicts), and writes what it found as JSON.

    python3 models/training/evaluate.py --run /tmp/run-val --threshold 0.5 \
        --held-out P001,normal001,A0001 --data ../shared/data --out /tmp/eval-val

Protocols (labels as the reference work defines them, `../shared/data/covid-ct-md/labels.csv`):
- reference: the expert-labelled infected slices of P001 against every slice of normal001;
- full: every slice of every COVID-CT-MD patient evaluated (P001, normal001, cap001), with its
  expert label; CAP slices are negatives;
- lung-pet-ct-dx: every slice (all negatives).
Each protocol is also reported restricted to the run's held-out patients (`--held-out`): those
numbers, and only those, estimate generalisation.
Series level: every series folder scored with `ctsentry score --json` at the bundle's threshold,
giving each series' positive-slice count (and every slice probability, to choose
decision.min_positive_slices from).
"""
import argparse
import csv
import json
import os
import subprocess
import sys

from folds import patient

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SERIES = {
    "P001": "covid-ct-md/P001",
    "normal001": "covid-ct-md/normal001",
    "cap001": "covid-ct-md/cap001",
    "A0001": "lung-pet-ct-dx/A0001-L",
    "A0002-B40f": "lung-pet-ct-dx/A0002-B40f",
    "A0002-B70f": "lung-pet-ct-dx/A0002-B70f",
}


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))}: exit {r.returncode}\n{r.stderr[-3000:]}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--threshold", type=float, help="decision threshold of the exported bundle")
    ap.add_argument("--bundle", help="an existing bundle (NAME.onnx) instead of exporting --run")
    ap.add_argument("--held-out", default="", help="comma list of patients the run never saw")
    ap.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data"))
    ap.add_argument("--binary", default=os.path.join(REPO, "target", "release", "ctsentry"))
    ap.add_argument("--min-lung-fraction", type=float, default=0.02, help="of the exported bundle (slices with less lung are not scored)")
    ap.add_argument("--precision", default="auto", help="engine.precision for the run (auto: bf16 on OpenVINO where the CPU runs it)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    held = set(filter(None, a.held_out.split(",")))

    model = a.bundle
    if model is None:
        bundle = os.path.join(a.out, "bundle")
        os.makedirs(bundle, exist_ok=True)
        run([sys.executable, os.path.join(HERE, "export.py"), "--run", a.run, "--threshold", str(a.threshold), "--min-lung-fraction", str(a.min_lung_fraction), "--name", "eval", "--version", "0.0.0", "--out", bundle])
        model = os.path.join(bundle, "eval.onnx")
    model = os.path.abspath(model)
    cfg_text = open(os.path.join(REPO, "config", "ctsentry.toml")).read()
    cfg_text = cfg_text.replace('path = "../models/densenet121-covid.onnx"', f'path = "{model}"').replace('"../var/', f'"{os.path.abspath(a.out)}/var/')
    cfg_text = cfg_text.replace('precision = "auto"', f'precision = "{a.precision}"')
    cfg = os.path.join(a.out, "ctsentry.toml")
    open(cfg, "w").write(cfg_text)

    labels = list(csv.DictReader(open(os.path.join(a.data, "covid-ct-md", "labels.csv"))))
    lpd = list(csv.DictReader(open(os.path.join(a.data, "lung-pet-ct-dx", "labels.csv"))))
    protocols = {
        "reference": ("covid-ct-md", [r for r in labels if (r["patient"] == "P001" and r["covid"] == "1") or r["patient"] == "normal001"]),
        "full": ("covid-ct-md", labels),
        "lung-pet-ct-dx": ("lung-pet-ct-dx", lpd),
    }
    report = {"run": a.run, "model": model, "threshold": a.threshold, "held_out": sorted(held), "protocols": {}, "series": {}}
    for name, (root, rows) in protocols.items():
        variants = {"all": rows}
        if held:
            variants["held_out"] = [r for r in rows if r.get("patient") in held or patient(r["file"]) in held]
        for v, subset in variants.items():
            if not subset:
                continue
            path = os.path.join(a.out, f"labels-{name}-{v}.csv")
            with open(path, "w") as f:
                f.write("file,covid\n")
                for r in subset:
                    f.write(f"{r['file']},{r['covid']}\n")
            out = run([a.binary, "eval", "--config", cfg, "--labels", path, "--json", "--pick-threshold", "sensitivity=0.90", "--out", os.path.join(a.out, f"eval-{name}-{v}"), os.path.join(a.data, root)])
            report["protocols"][f"{name}/{v}"] = json.loads(out.strip().splitlines()[-1])
            t = report["protocols"][f"{name}/{v}"]
            print(f"{name:15} {v:9} n={t['slices']:4} AUC {t.get('auc')} acc {t.get('accuracy')} sens {t.get('sensitivity')} spec {t.get('specificity')}", flush=True)
    for name, folder in SERIES.items():
        out = run([a.binary, "score", "--config", cfg, "--json", os.path.join(a.data, folder)])
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        probs = [d["prob"] for d in lines if d["type"] == "slice"]
        ser = [d for d in lines if d["type"] == "series"][0]
        report["series"][name] = {"slices": ser["slices"], "positives": ser["positives"], "skipped": ser["skipped"], "max_prob": ser["max_prob"], "probs": probs, "held_out": name.split("-")[0] in held, "engine": f"{ser['engine']} {ser['precision']}"}
        print(f"series {name:11} {ser['positives']:4} of {ser['slices']:4} slices >= {ser['threshold']:.4f}; max {ser['max_prob']:.4f}", flush=True)
    json.dump(report, open(os.path.join(a.out, "report.json"), "w"), indent=1)
    print(os.path.join(a.out, "report.json"))


if __name__ == "__main__":
    main()
