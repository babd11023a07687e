#!/usr/bin/env python3
"""A picture to compare simulated and real lesions: slices from `ctsentry prep --hu` folders,
lung window (-600/1500), side by side, lesion outlines in red where a mask folder is given.

    python3 models/training/lesion_grid.py --out grid.png \
        --set simulated:/tmp/prep/sim:/tmp/sim/masks --set P001:/tmp/prep/ct::P001 --per-set 8
"""
import argparse
import csv
import os

import numpy as np
from PIL import Image, ImageDraw


def window(hu):
    return (np.clip((hu + 1350.0) / 1500.0, 0, 1) * 255).astype(np.uint8)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", action="append", required=True, help="NAME:PREP_HU_FOLDER[:MASKS_FOLDER[:SERIES]] (label 1 slices only)")
    ap.add_argument("--per-set", type=int, default=8)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    rows_img = []
    for spec in a.set:
        name, folder, masks, series = (spec.split(":") + ["", ""])[:4]
        idx = [r for r in csv.DictReader(open(os.path.join(folder, "index.csv"))) if r["label"] == "1" and (not series or r["file"].startswith(series + "/"))]
        pick = sorted(rng.choice(len(idx), size=min(a.per_set, len(idx)), replace=False))
        tiles = []
        for k in pick:
            row = list(csv.DictReader(open(os.path.join(folder, "index.csv")))).index(idx[k])
            hu = np.load(os.path.join(folder, "hu", f"{row:06}.npy")).astype(np.float32)
            rgb = np.repeat(window(hu)[:, :, None], 3, 2)
            if masks:
                m = np.load(os.path.join(masks, os.path.splitext(idx[k]["file"])[0] + ".npy")) > 0
                edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
                rgb[edge] = [255, 0, 0]
            im = Image.fromarray(rgb).resize((a.tile, a.tile), Image.BILINEAR)
            ImageDraw.Draw(im).text((4, 4), f"{name} {idx[k]['file'][-22:]}", fill=(255, 255, 0))
            tiles.append(im)
        row_im = Image.new("RGB", (a.tile * a.per_set, a.tile))
        for i, t in enumerate(tiles):
            row_im.paste(t, (i * a.tile, 0))
        rows_img.append(row_im)
    grid = Image.new("RGB", (a.tile * a.per_set, a.tile * len(rows_img)))
    for i, r in enumerate(rows_img):
        grid.paste(r, (0, i * a.tile))
    grid.save(a.out)
    print(a.out)


if __name__ == "__main__":
    main()
