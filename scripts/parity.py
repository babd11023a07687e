#!/usr/bin/env python3
"""Precision parity, so that speed does not change a diagnosis: scores the same series with
`ctsentry score --json` at two engine precisions (default f32 and bf16, OpenVINO) and reports
the largest probability difference over every slice, the series verdicts side by side, and the
slice-level AUC of each on labelled files (`--labels CSV` with `file,covid` relative to the
CSV's folder; the COVID-CT-MD labels.csv works as is). Also: the slices whose decision differs
(each precision at its own threshold, as the appliance decides), the mean and spread of the
logit shift (a shift as a whole would call for the variant's own threshold; a spread does not),
and, with `--toml`, the manifest's `[int8.parity]` table for the second precision.

    python3 scripts/parity.py --ctsentry target/release/ctsentry --config config/ctsentry.toml \
        --labels ../shared/data/covid-ct-md/labels.csv ../shared/data/covid-ct-md/* ../shared/data/lung-pet-ct-dx/*/
    python3 scripts/parity.py --precisions f32,int8 --toml ...   # an int8 variant's parity record
"""
import argparse
import csv
import json
import math
import os
import re
import subprocess
import tempfile


def score(binary, config, precision, folder):
    text = open(config).read().replace('precision = "auto"', f'precision = "{precision}"')
    assert f'precision = "{precision}"' in text, "the config must hold precision = \"auto\" to be varied"
    with tempfile.NamedTemporaryFile("w", suffix=".toml", dir=os.path.dirname(os.path.abspath(config)), delete=False) as f:
        f.write(text)
    try:
        out = subprocess.run([binary, "--config", f.name, "score", "--json", folder], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    lines = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    assert out.returncode in (0, 1) and lines, out.stderr[-2000:]  # 1: some files unreadable (the same in both runs)
    return {os.path.abspath(d["file"]): d for d in lines if d["type"] == "slice"}, [d for d in lines if d["type"] == "series"]


def vnni_usable(binary, config):
    """Whether OpenVINO may use VNNI here, as ctsentry sees this CPU (`doctor`'s `cpu` line: the
    flags of /proc/cpuinfo within ONEDNN_MAX_CPU_ISA, if set). Fails unless the line says."""
    out = subprocess.run([binary, "--config", config, "doctor"], capture_output=True, text=True)
    said = [m.group(1) for l in out.stdout.splitlines() if l.startswith("cpu ") for m in [re.search(r"VNNI (yes|no)", l)] if m]
    assert said, f"`ctsentry doctor` printed no cpu line saying VNNI yes or no: {out.stdout[-2000:]} {out.stderr[-2000:]}"
    return said[0] == "yes"


def auc(pairs):
    pos = [p for p, y in pairs if y == 1]
    neg = [p for p, y in pairs if y == 0]
    if not pos or not neg:
        return float("nan")
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def logit(p):
    p = min(max(p, 1e-7), 1 - 1e-7)
    return math.log(p / (1 - p))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ctsentry", default="target/release/ctsentry")
    ap.add_argument("--config", default="config/ctsentry.toml")
    ap.add_argument("--precisions", default="f32,bf16")
    ap.add_argument("--labels", action="append", default=[])
    ap.add_argument("--toml", action="store_true", help="print the [int8.parity] table of the second precision")
    ap.add_argument("series", nargs="+")
    a = ap.parse_args()
    pa, pb = a.precisions.split(",")
    # Asked before the long run, so that a missing cpu line stops it at once.
    vnni = vnni_usable(a.ctsentry, a.config) if a.toml else None
    labels = {}
    for path in a.labels:
        root = os.path.dirname(os.path.abspath(path))
        for r in csv.DictReader(open(path)):
            labels[os.path.join(root, r["file"])] = int(r["covid"])
    worst, n, same, slices_a, slices_b, series = 0.0, 0, True, {}, {}, 0
    for folder in a.series:
        sa, va = score(a.ctsentry, a.config, pa, folder)
        sb, vb = score(a.ctsentry, a.config, pb, folder)
        assert sa.keys() == sb.keys()
        d = max(abs(sa[k]["prob"] - sb[k]["prob"]) for k in sa)
        worst, n = max(worst, d), n + len(sa)
        slices_a.update(sa)
        slices_b.update(sb)
        assert [x["series_uid"] for x in va] == [y["series_uid"] for y in vb]
        series += len(va)
        for x, y in zip(va, vb):
            same &= x["verdict"] == y["verdict"]
            print(f"{os.path.basename(folder.rstrip('/')):12} {len(sa):4} slices  max |dprob| {d:.5f}  {pa}: {x['verdict']} ({x['positives']} >= {x['threshold']:.4f})  {pb}: {y['verdict']} ({y['positives']})  engines {x['engine']} {x['precision']} / {y['engine']} {y['precision']}")
    print(f"{n} slices: max |prob difference| {pa} vs {pb} = {worst:.5f}; series verdicts {'identical' if same else 'DIFFER'}")
    scored = [k for k in slices_a if "skipped" not in slices_a[k]]
    differ = [slices_a[k]["prob"] for k in scored if slices_a[k]["positive"] != slices_b[k]["positive"]]
    flipped = len(differ)
    shift = [logit(slices_b[k]["prob"]) - logit(slices_a[k]["prob"]) for k in scored]
    mean = sum(shift) / max(1, len(shift))
    sd = (sum((x - mean) ** 2 for x in shift) / max(1, len(shift))) ** 0.5
    print(f"{len(scored)} slices sent to the engine: {flipped} decisions differ; logit shift {pb} - {pa}: mean {mean:+.4f}, sd {sd:.4f}")
    if differ:
        print(f"  the differing decisions' {pa} probabilities lie in {min(differ):.4f}..{max(differ):.4f}")
    lab = [k for k in scored if k in labels]
    aa = auc([(slices_a[k]["prob"], labels[k]) for k in lab])
    ab = auc([(slices_b[k]["prob"], labels[k]) for k in lab])
    if lab:
        print(f"AUC on {len(lab)} labelled slices: {pa} {aa:.4f}, {pb} {ab:.4f}, difference {abs(aa - ab):.4f}")
    if a.toml:
        if math.isnan(aa) or math.isnan(ab):
            raise SystemExit("--toml: the AUC change needs labelled slices of both classes (--labels); the record is not written")
        up = lambda x: math.ceil(x * 1e4) / 1e4  # noqa: E731  rounded up: rounding must never move a value into the bound
        print(f"\n[int8.parity]\nmax_abs_prob_diff = {up(worst):.4f}\nauc_diff = {up(abs(aa - ab)):.4f}\nseries_verdicts_identical = {str(same).lower()}")
        print(f"slices = {len(scored)}\nseries = {series}\ndecisions_flipped = {flipped}\nvnni = {str(vnni).lower()}")
        print(f'measured_with = "scripts/parity.py --precisions {a.precisions} on {len(a.series)} folders ({series} series): SAY WHICH"')


if __name__ == "__main__":
    main()
