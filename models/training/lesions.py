#!/usr/bin/env python3
"""Simulated COVID-19 pneumonia lesions in real, lesion-free chest CT slices (Hounsfield units).

Reads the Hounsfield units and lung masks that `ctsentry prep --hu` wrote for background series
(slices known to hold no COVID-19 pneumonia), draws lesions into the lungs and writes every
lesioned slice as a DICOM CT image (int16 HU, uncompressed), one series per background series and
variant. `ctsentry prep` then reads those files exactly as serving reads a scan, so the model is
trained on what the appliance will show it (decode, lung mask, window, resample: one code path).

    ctsentry prep --hu --out /tmp/bg --labels S/lung-pet-ct-dx/labels.csv S/lung-pet-ct-dx
    python3 models/training/lesions.py --background /tmp/bg --variants 3 --seed 1 --out /tmp/sim
    ctsentry prep --out /tmp/prep/sim --labels /tmp/sim/labels.csv /tmp/sim/dicom

Output folder: `dicom/<series>/<file>.dcm`; `labels.csv` (`file,covid`, relative to `dicom/`,
every row 1); `lesions.csv` (per slice: background file, variant, seed, patterns, lesion count,
lesion share of the lung, mean HU rise); `masks/<series>/<file>.npy` (uint8, 1 where a lesion
is at least half opaque: the ground truth of the CAM pointing game). Deterministic: the same
background, variant and seed give the same bytes.

The lesion model, with its sources (parameters not given by a source are judgements, marked so):

- Definitions (Fleischner Society glossary: Hansell DM et al., Radiology 2008;246:697-722):
  ground-glass opacity (GGO) is hazy increased lung attenuation that keeps bronchial and vascular
  margins visible, so it is ADDED to the underlying lung here and vessels stay visible;
  consolidation replaces the lung and hides the vessels; crazy paving is GGO with superimposed
  thickened interlobular septa and intralobular lines (a polygonal network).
- Densities: aerated lung about -950 to -700 HU (Colombi D et al., Radiology 2020;296:E86-E96,
  "well-aerated lung"); GGO -750 to -300 HU and consolidation -100 to +50 HU (quantitative CT
  ranges used for COVID-19 lesion segmentation; cf. Lanza E et al., Eur Radiol 2020;30:6770-6778,
  poorly aerated -500 to -100 HU).
- Distribution (Chung M et al., Radiology 2020;295:202-207; Bernheim A et al., Radiology
  2020;295:685-691; RSNA consensus, Simpson S et al., Radiol Cardiothorac Imaging
  2020;2:e200152): bilateral, peripheral/subpleural, posterior and lower-lobe predominant,
  multifocal, rounded or patchy. Here: lesion centres drawn with weight exp(-d/12 mm) from the
  pleura, x (0.4 + row position towards the back), more and larger lesions in lower slices; both
  lungs in 75 % of slices.
- Patterns (Pan F et al., Radiology 2020;295:715-721, time course; Bernheim 2020): pure GGO
  most common early, GGO with consolidation and crazy paving later. Mix here (judgement): GGO
  45 %, GGO with a consolidated core 25 %, crazy paving 20 %, consolidation 10 %.
- Sizes and contrast (judgement, spanning faint to obvious): equivalent diameter 10-60 mm
  (log-uniform), opacity 0.6-1.0, GGO density triangular on -750..-300 HU with its mode at
  -550 HU, irregular outline from smoothed noise, soft edges (3-8 mm), mottled inside (opacity
  x 0.65 +/- 0.35 smoothed noise at 1.5-4 mm). A slice whose lesions cover less than 0.5 % of
  its lungs is drawn again (up to 5 times): a positive label needs a lesion the model can see
  at 224 x 224 (a first version with 8 mm, 35 % opaque lesions taught a from-scratch model
  little: many of its "positives" were invisible after resampling).
"""
import argparse
import csv
import hashlib
import json
import os

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

PATTERNS = [("ggo", 0.45), ("ggo-with-core", 0.25), ("crazy-paving", 0.20), ("consolidation", 0.10)]
AERATED_HU = -850.0  # typical aerated lung (Colombi 2020: -950 to -700)
MIN_LUNG_FRACTION = 0.05  # slices with less lung get no lesion (and are not written)
MIN_LESION_SHARE = 0.005  # lesions must cover at least this share of the lungs


def read_index(folder):
    rows = list(csv.DictReader(open(os.path.join(folder, "hu", "index.csv"))))
    main = list(csv.DictReader(open(os.path.join(folder, "index.csv"))))
    for r in rows:
        m = main[int(r["row"])]
        assert m["file"] == r["file"], f"{folder}: hu/index.csv and index.csv disagree at row {r['row']}"
        r.update(slice_index=int(m["slice_index"]), z=float(m["z"]), lung_fraction=float(m["lung_fraction"]), label=m["label"])
    return rows


def smooth_noise(rng, shape, sigma):
    n = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return n / (n.std() + 1e-9)


def blob(rng, shape, centre, radius_px, edge_px):
    """A rounded-to-patchy opacity: an ellipse whose outline is perturbed by smoothed noise;
    returns alpha in [0, 1] with a soft edge of about `edge_px`."""
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    elong = rng.uniform(0.6, 1.0)
    ang = rng.uniform(0, np.pi)
    dy, dx = rr - centre[0], cc - centre[1]
    u = (dx * np.cos(ang) + dy * np.sin(ang)) / radius_px
    v = (-dx * np.sin(ang) + dy * np.cos(ang)) / (radius_px * elong)
    r = np.sqrt(u * u + v * v)
    patchy = rng.uniform(0.2, 0.9)  # low: rounded, high: patchy (judgement)
    field = 1.0 - r + patchy * smooth_noise(rng, shape, max(2.0, radius_px / 3))
    return np.clip(0.5 + field * radius_px / (2 * edge_px), 0.0, 1.0)


def septal_network(rng, shape, box, cell_px, width_px):
    """Crazy paving's polygonal lines: Voronoi cell borders (cells `cell_px` apart) inside `box`."""
    r0, r1, c0, c1 = box
    n = max(4, int((r1 - r0) * (c1 - c0) / (cell_px * cell_px)))
    seeds = np.column_stack([rng.uniform(r0, r1, n), rng.uniform(c0, c1, n)])
    rr, cc = np.mgrid[r0:r1, c0:c1]
    d, _ = cKDTree(seeds).query(np.column_stack([rr.ravel(), cc.ravel()]), k=2)
    lines = np.zeros(shape, np.float32)
    lines[r0:r1, c0:c1] = np.clip(1.0 - (d[:, 1] - d[:, 0]).reshape(rr.shape) / width_px, 0, 1)
    return lines


def simulate(hu, lung, spacing_mm, rel_z, rng):
    """Draws lesions into `hu` (float32 HU, modified copy returned) inside `lung` (bool).
    Returns (new_hu, lesion_alpha, info) or None when the slice has too little lung."""
    shape = hu.shape
    px = float(spacing_mm)
    labels, n = ndimage.label(lung)
    if n == 0:
        return None
    sizes = ndimage.sum(lung, labels, range(1, n + 1))
    lungs = [i + 1 for i in np.argsort(sizes)[::-1][:2] if sizes[i] * px * px > 300.0]  # > 3 cm²
    if not lungs:
        return None
    depth = ndimage.distance_transform_edt(lung) * px  # mm from the pleura
    rows = np.arange(shape[0], dtype=np.float32)[:, None]
    lower = 1.0 - rel_z  # 1 at the lung bases
    count = 1 + rng.poisson(1.0 + 2.0 * lower)
    chosen = lungs if (len(lungs) == 2 and rng.random() < 0.75) else [lungs[rng.integers(len(lungs))]]
    targets = [chosen[k % len(chosen)] for k in range(max(count, len(chosen)))]
    alpha_total = np.zeros(shape, np.float32)
    out = hu.astype(np.float32).copy()
    patterns, rises = [], []
    for lab in targets:
        region = labels == lab
        rmin, rmax = np.nonzero(region.any(axis=1))[0][[0, -1]]
        posterior = (rows - rmin) / max(1, rmax - rmin)
        w = region * np.exp(-depth / 12.0) * (0.4 + np.clip(posterior, 0, 1))
        flat = w.ravel() / w.sum()
        centre = np.unravel_index(rng.choice(flat.size, p=flat), shape)
        diam_mm = float(np.exp(rng.uniform(np.log(10.0), np.log(60.0)))) * (0.8 + 0.4 * lower)
        a = blob(rng, shape, centre, diam_mm / 2 / px, rng.uniform(3.0, 8.0) / px) * lung
        # Mottled, not uniform: real GGO is heterogeneous on a scale of a few mm (judgement).
        mottle = np.clip(0.65 + 0.35 * smooth_noise(rng, shape, rng.uniform(1.5, 4.0) / px), 0.0, 1.0)
        opacity = rng.uniform(0.6, 1.0)
        a = a * mottle * opacity
        if a.max() <= 0:
            continue
        pattern = PATTERNS[rng.choice(len(PATTERNS), p=[p for _, p in PATTERNS])][0]
        ggo_hu = rng.triangular(-750.0, -550.0, -300.0)
        cons_hu = rng.uniform(-100.0, 50.0)
        texture = smooth_noise(rng, shape, 1.0) * rng.uniform(15, 40)
        # GGO: raise the lung by (target - aerated); pixels already denser than the target
        # (vessels, walls) rise less and less, so they stay visible above the haze.
        rise = (ggo_hu - AERATED_HU) * np.clip((ggo_hu + 150.0 - out) / 300.0, 0.0, 1.0)
        ggo = out + a * (rise + texture)
        if pattern == "ggo":
            new = ggo
        elif pattern == "crazy-paving":
            rr_, cc_ = np.nonzero(a > 0.02)
            box = (rr_.min(), rr_.max() + 1, cc_.min(), cc_.max() + 1)
            net = septal_network(rng, shape, box, rng.uniform(8.0, 15.0) / px, max(1.0, rng.uniform(0.8, 1.6) / px))
            new = ggo + a * net * rng.uniform(150.0, 350.0)
        else:
            core = a if pattern == "consolidation" else np.clip((a / opacity - 0.5) * 2.0, 0, 1) * a
            new = ggo * (1 - core) + core * (cons_hu + texture)
        out = np.where(a > 0, new, out)
        alpha_total = np.maximum(alpha_total, a)
        patterns.append(pattern)
        rises.append(float(((new - hu) * (a > 0.5)).sum() / max(1.0, float((a > 0.5).sum()))))
    lesion = alpha_total >= 0.5 * alpha_total.max() if alpha_total.max() > 0 else alpha_total > 0
    lesion &= alpha_total >= 0.2
    info = {
        "patterns": "+".join(patterns),
        "lesions": len(patterns),
        "lesion_share_of_lung": float(lesion.sum() / max(1, lung.sum())),
        "mean_rise_hu": float(np.mean(rises)) if rises else 0.0,
    }
    return out, lesion.astype(np.uint8), info


def uid(*parts):
    """A deterministic DICOM UID under the UUID-derived root 2.25 (ISO/IEC 9834-8)."""
    h = hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:16]
    return "2.25." + str(int.from_bytes(h, "big"))


def write_dicom(path, hu, spacing, z, index, series_uid, study_uid, series_name):
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    sop = uid(series_uid, index)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.Modality = "CT"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL", "SIMULATED"]
    ds.PatientName, ds.PatientID = "SIMULATED", "SIM-" + series_name
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.SeriesDescription = "simulated COVID-19 lesions (training only)"
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [0.0, 0.0, float(z)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SliceLocation = float(z)
    ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, 0, "HU"
    ds.PixelData = np.clip(np.round(hu), -32768, 32767).astype("<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def series_of(file):
    """The series a prep row belongs to: the folder holding its file (`P001` for `P001/x.dcm` and
    for the full COVID-CT-MD release's `COVID-19 Cases/P001/x.dcm`)."""
    return os.path.basename(os.path.dirname(file)) or file


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--background", action="append", required=True, help="a `ctsentry prep --hu` folder of lesion-free series (repeatable)")
    ap.add_argument("--series", default="all", help="background series (the folder holding `file`) to use: all or a comma list")
    ap.add_argument("--variants", type=int, default=3, help="lesioned copies of each background slice")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    want = None if a.series == "all" else set(a.series.split(","))
    os.makedirs(a.out, exist_ok=True)
    labels = open(os.path.join(a.out, "labels.csv"), "w")
    labels.write("file,covid\n")
    log = csv.writer(open(os.path.join(a.out, "lesions.csv"), "w"))
    log.writerow(["file", "background", "variant", "seed", "patterns", "lesions", "lesion_share_of_lung", "mean_rise_hu"])
    written = 0
    for folder in a.background:
        rows = read_index(folder)
        series_len = {}
        for r in rows:
            s = series_of(r["file"])
            series_len[s] = max(series_len.get(s, 0), r["slice_index"] + 1)
        for r in rows:
            series = series_of(r["file"])
            if (want is not None and series not in want) or r["label"] == "1" or r["lung_fraction"] < MIN_LUNG_FRACTION:
                continue
            hu = np.load(os.path.join(folder, "hu", f"{int(r['row']):06}.npy")).astype(np.float32)
            lung = np.load(os.path.join(folder, "hu", f"{int(r['row']):06}.mask.npy")) > 0
            spacing = (float(r["spacing_row"] or 0.7), float(r["spacing_col"] or 0.7))
            rel_z = r["slice_index"] / max(1, series_len[series] - 1)
            for v in range(a.variants):
                seed = int.from_bytes(hashlib.sha256(f"{a.seed}/{r['file']}/{v}".encode()).digest()[:8], "little")
                rng = np.random.default_rng(seed)
                for _ in range(5):
                    res = simulate(hu, lung, spacing[0], rel_z, rng)
                    if res is None or res[2]["lesion_share_of_lung"] >= MIN_LESION_SHARE:
                        break
                if res is None or res[2]["lesion_share_of_lung"] < MIN_LESION_SHARE:
                    continue
                new, lesion, info = res
                name = f"{series}-sim{v}"
                stem = os.path.splitext(os.path.basename(r["file"]))[0]
                rel = f"{name}/{stem}.dcm"
                os.makedirs(os.path.join(a.out, "dicom", name), exist_ok=True)
                os.makedirs(os.path.join(a.out, "masks", name), exist_ok=True)
                series_uid = uid("series", a.seed, series, v)
                write_dicom(os.path.join(a.out, "dicom", rel), new, spacing, 2.0 * r["slice_index"], r["slice_index"], series_uid, uid("study", a.seed, series), name)
                np.save(os.path.join(a.out, "masks", name, stem + ".npy"), lesion)
                labels.write(f"{rel},1\n")
                log.writerow([rel, r["file"], v, seed, info["patterns"], info["lesions"], f"{info['lesion_share_of_lung']:.4f}", f"{info['mean_rise_hu']:.1f}"])
                written += 1
    json.dump(vars(a) | {"slices": written}, open(os.path.join(a.out, "params.json"), "w"), indent=2)
    print(f"{written} lesioned slices -> {a.out}")


if __name__ == "__main__":
    main()
