#!/usr/bin/env python3
"""Makes the full COVID-CT-MD release (Afshar et al., Scientific Data 8, 121, 2021: 169 COVID-19,
60 CAP and 76 normal patients; slice labels for 54 COVID-19 and 25 CAP patients) readable by
`ctsentry prep` and train.py: it writes the slice labels in the format of
`../shared/data/covid-ct-md/labels.csv`.

    python3 models/training/covid_ct_md.py --release /data/COVID-CT-MD --out /data/ctmd-labels.csv
    ctsentry prep --hu --out /tmp/prep/ctmd --labels /data/ctmd-labels.csv /data/COVID-CT-MD

The release holds `COVID-19 Cases/`, `Cap Cases/` and `Normal Cases/` with one folder of DICOM
per patient, `Index.csv` (columns `Folder/ID`, `Diagnosis`, `Relative Path`, `Label Index`: the
row of the patient in the label array) and `Slice-level-labels.npy` (one row per labelled
patient, one 0/1 column per slice). It reads the release and writes only `--out`: a CSV with the
columns of the shared sample (file, patient, diagnosis, slice_index, slices_in_series,
slice_location, covid) plus `infection` (the expert's slice label, also for CAP); `file` is
relative to the release (`COVID-19 Cases/P001/…`), whose patient folder is what train.py's
patient-level splits key on. A slice's index is its rank by Slice Location (0020,1041) ascending — the order the
  expert labels use (`../shared/data/README.md`) — or by the z of Image Position (Patient)
  where a series has no Slice Location. `covid` is 1 only for labelled infected slices of
  COVID-19 patients; CAP slices are 0 (hard negatives), normal patients' slices are 0, and
  COVID-19 patients without slice labels are left out (their slices' labels are unknown).
Label rows are matched by the rank of `Label Index` among the labelled patients (the release's
indices skip a number); a patient with more labelled slices than files, or a label array whose
row count differs from the labelled patients, is refused naming it.
"""
import argparse
import csv
import os

import numpy as np
import pydicom

CATEGORIES = {"COVID-19": "COVID-19 Cases", "CAP": "Cap Cases", "Normal": "Normal Cases"}


def category(diagnosis, relative_path):
    """The release folder of a patient: from `Relative Path` when it names one, else its diagnosis."""
    for folder in CATEGORIES.values():
        if folder.split()[0].lower() in relative_path.lower():
            return folder
    for key, folder in CATEGORIES.items():
        if diagnosis.strip().lower().startswith(key.lower()[:3]):
            return folder
    raise SystemExit(f"Index.csv: diagnosis {diagnosis!r} / path {relative_path!r}: not COVID-19, CAP or normal")


def ordered(folder):
    """[(file name, slice location)] of the DICOM files in a patient folder, feet to head."""
    items = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SliceLocation", "ImagePositionPatient"])
        except Exception as e:
            raise SystemExit(f"{path}: not readable DICOM ({e})")
        loc = float(ds.SliceLocation) if "SliceLocation" in ds else None
        z = float(ds.ImagePositionPatient[2]) if "ImagePositionPatient" in ds else None
        items.append((name, loc, z))
    if not items:
        raise SystemExit(f"{folder}: no DICOM files")
    key = 1 if all(i[1] is not None for i in items) else 2
    if any(i[key] is None for i in items):
        raise SystemExit(f"{folder}: neither Slice Location nor Image Position (Patient) on every file: no slice order")
    items.sort(key=lambda i: i[key])
    return [(i[0], i[key]) for i in items]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--release", required=True, help="the unpacked COVID-CT-MD release")
    ap.add_argument("--index", help="Index.csv (default: RELEASE/Index.csv)")
    ap.add_argument("--labels", help="Slice-level-labels.npy (default: RELEASE/Slice-level-labels.npy)")
    ap.add_argument("--out", required=True, help="the labels CSV to write (not inside the release)")
    a = ap.parse_args()
    index = a.index or os.path.join(a.release, "Index.csv")
    label_file = a.labels or os.path.join(a.release, "Slice-level-labels.npy")
    labels = np.load(label_file)
    rows = list(csv.DictReader(open(index, newline="", encoding="utf-8-sig")))
    labelled = sorted({int(r["Label Index"]) for r in rows if (r.get("Label Index") or "").strip() != ""})
    if len(labelled) != labels.shape[0]:
        raise SystemExit(f"{label_file}: {labels.shape[0]} label rows for {len(labelled)} labelled patients in {index}")
    row_of = {idx: k for k, idx in enumerate(labelled)}

    if os.path.abspath(a.out).startswith(os.path.abspath(a.release) + os.sep):
        raise SystemExit(f"{a.out}: inside the release; the release is only read")
    patients = [(r["Folder/ID"].strip(), category(r["Diagnosis"], r.get("Relative Path", "")), r) for r in rows]
    listed = {p for p, _, _ in patients}
    normals = os.path.join(a.release, CATEGORIES["Normal"])
    if os.path.isdir(normals):  # normal patients need no label row and may be missing from Index.csv
        patients += [(p, CATEGORIES["Normal"], {}) for p in sorted(os.listdir(normals)) if p not in listed and os.path.isdir(os.path.join(normals, p))]
    out_rows, skipped = [], []
    for pid, folder, r in patients:
        src = os.path.join(a.release, folder, pid)
        if "-" in pid or "/" in pid or not pid:
            raise SystemExit(f"{index}: patient {pid!r}: an ID with '-' or '/' would break the patient-level split")
        li = (r.get("Label Index") or "").strip()
        if folder == CATEGORIES["COVID-19"] and li == "":
            skipped.append(pid)
            continue
        files = ordered(src)
        marks = np.zeros(len(files), dtype=int)
        if li != "":
            row = labels[row_of[int(li)]]
            if row[len(files) :].any():
                raise SystemExit(f"{label_file}: row {row_of[int(li)]} ({pid}) labels slices beyond its {len(files)} files in {src}")
            marks = row[: len(files)].astype(int)
        diagnosis = {"COVID-19 Cases": "COVID-19", "Cap Cases": "CAP", "Normal Cases": "normal"}[folder]
        for k, (name, loc) in enumerate(files):
            covid = int(diagnosis == "COVID-19" and marks[k] == 1)
            out_rows.append([f"{folder}/{pid}/{name}", pid, diagnosis, k, len(files), f"{loc:.1f}", covid, int(marks[k])])
    with open(a.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "patient", "diagnosis", "slice_index", "slices_in_series", "slice_location", "covid", "infection"])
        w.writerows(out_rows)
    n = len({r[1] for r in out_rows})
    print(f"{n} patients, {len(out_rows)} slices ({sum(r[6] for r in out_rows)} COVID-19 positive) -> {a.out}")
    if skipped:
        print(f"left out {len(skipped)} COVID-19 patients without slice labels: {', '.join(skipped)}")


if __name__ == "__main__":
    main()
