#!/usr/bin/env python3
"""Stages assemble.sh's 8-bit sets for `ctsentry prep --assume-window`, which reads PNG only:
ma-covid-seg's CT slices (its masks left out of the prep root), medseg's and Song et al.'s JPG
converted to 8-bit grayscale PNG (lossless from the decoded JPG), each folder with a labels.csv
(`file,covid`) relative to it. Nothing is altered but the container format.

    python3 models/training/stage_extra.py --extra /tmp/extra --out /tmp/stage
    ctsentry prep --hu --out /tmp/prep/ma --labels /tmp/stage/ma/labels.csv --assume-window -600,1500 /tmp/stage/ma

Staged names: `ma/NNNN.png` (mask: extra/ma-covid-seg/mask/NNNN.png), `medseg/<part>/N.png`
(mask: extra/medseg/<part>/mask/N.png), `song/<patient>/<name>.png`.
"""
import argparse
import csv
import os
import shutil

from PIL import Image


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extra", required=True, help="assemble.sh's output folder")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    sets = [
        ("ma", "ma-covid-seg", lambda f: os.path.basename(f)),
        ("medseg", "medseg", lambda f: os.path.splitext(f)[0].replace("/img/", "/") + ".png"),
        ("song", "song-pneumonia", lambda f: os.path.splitext(f)[0] + ".png"),
    ]
    for name, folder, staged in sets:
        src = os.path.join(a.extra, folder)
        out = os.path.join(a.out, name)
        n = 0
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "labels.csv"), "w") as f:
            w = csv.writer(f)
            w.writerow(["file", "covid"])
            for r in csv.DictReader(open(os.path.join(src, "labels.csv"))):
                rel = staged(r["file"])
                dest = os.path.join(out, rel)
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                if r["file"].lower().endswith(".png"):
                    shutil.copyfile(os.path.join(src, r["file"]), dest)
                else:
                    Image.open(os.path.join(src, r["file"])).convert("L").save(dest)
                w.writerow([rel, r["covid"]])
                n += 1
        print(f"{name}: {n} images -> {out}")


if __name__ == "__main__":
    main()
