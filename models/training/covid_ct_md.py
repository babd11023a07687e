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
Every patient folder of the three categories is taken, listed in Index.csv or not (unlisted CAP
and normal patients are negatives with an empty `infection`; unlisted COVID-19 patients are left
out and named). Label rows are matched by the rank of `Label Index` among the labelled patients
(the release's indices skip a number; rows are not assumed in Index.csv's order). Refused, naming
the file: duplicate label indices, a label array whose row count differs from the labelled
patients or shorter than a patient's series, labels beyond a patient's slices, a folder with more
than one series or two slices at one location, a diagnosis that contradicts the folder, and names
`ctsentry prep --labels` cannot match (commas, quotes, surrounding spaces). Hidden and temporary
files are ignored as `ctsentry prep` ignores them; other non-DICOM files are skipped with a note.
"""
import argparse
import csv
import os

import numpy as np
import pydicom

CATEGORIES = {"COVID-19": "COVID-19 Cases", "CAP": "Cap Cases", "Normal": "Normal Cases"}
DIAGNOSIS = {"COVID-19 Cases": "COVID-19", "Cap Cases": "CAP", "Normal Cases": "normal"}


def category(pid, diagnosis, relative_path):
    """The release folder of a patient from Index.csv's `Diagnosis` (COVID-19; CAP or pneumonia;
    normal) and `Relative Path`; refused when they disagree or name none."""
    d = diagnosis.strip().lower()
    by_diagnosis = "COVID-19 Cases" if d.startswith("covid") else "Cap Cases" if d.startswith(("cap", "pneumonia", "community")) else "Normal Cases" if d.startswith("normal") else None
    by_path = next((f for f in CATEGORIES.values() if f.split()[0].lower() in relative_path.lower()), None)
    if by_diagnosis and by_path and by_diagnosis != by_path:
        raise SystemExit(f"Index.csv: {pid}: diagnosis {diagnosis!r} but path {relative_path!r}")
    if not (by_diagnosis or by_path):
        raise SystemExit(f"Index.csv: {pid}: diagnosis {diagnosis!r} / path {relative_path!r}: not COVID-19, CAP or normal")
    return by_diagnosis or by_path


def matchable(name, where):
    """Refuses a name `ctsentry prep --labels` could not match (it splits on commas and trims)."""
    if not name or any(c in name for c in ',"\n\r') or name != name.strip():
        raise SystemExit(f"{where}: {name!r}: a comma, quote, line break or surrounding space would not match in a labels CSV")


def temporary(name):
    """Names `ctsentry prep` skips too: hidden, partial or backup files."""
    return name.startswith(".") or name.endswith(("~", ".part", ".tmp"))


def ordered(folder):
    """[(file name, slice location)] of the DICOM files of the one series in a patient folder,
    feet to head (Slice Location, else the z of Image Position (Patient))."""
    items, series = [], set()
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not os.path.isfile(path) or temporary(name):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SliceLocation", "ImagePositionPatient", "SeriesInstanceUID"])
            if "SeriesInstanceUID" not in ds:
                raise ValueError("no Series Instance UID")
        except Exception as e:
            print(f"note: {path}: skipped, not a DICOM image ({e})")
            continue
        matchable(name, folder)
        loc = float(ds.SliceLocation) if str(ds.get("SliceLocation", "")).strip() != "" else None
        z = float(ds.ImagePositionPatient[2]) if ds.get("ImagePositionPatient") else None
        items.append((name, loc, z))
        series.add(str(ds.SeriesInstanceUID))
    if not items:
        raise SystemExit(f"{folder}: no DICOM files")
    if len(series) > 1:
        raise SystemExit(f"{folder}: {len(series)} series: the slice labels index one series")
    key = 1 if all(i[1] is not None for i in items) else 2
    if any(i[key] is None for i in items):
        raise SystemExit(f"{folder}: neither Slice Location nor Image Position (Patient) on every file: no slice order")
    if len({i[key] for i in items}) != len(items):
        raise SystemExit(f"{folder}: two slices at one location: no slice order")
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
    if os.path.realpath(a.out).startswith(os.path.realpath(a.release) + os.sep):
        raise SystemExit(f"{a.out}: inside the release; the release is only read")
    labels = np.load(label_file)
    rows = list(csv.DictReader(open(index, newline="", encoding="utf-8-sig")))
    given = [int(r["Label Index"]) for r in rows if (r.get("Label Index") or "").strip() != ""]
    if len(given) != len(set(given)):
        raise SystemExit(f"{index}: a Label Index is given to two patients")
    labelled = sorted(given)
    if labels.ndim != 2 or len(labelled) != labels.shape[0]:
        raise SystemExit(f"{label_file}: {labels.shape[0] if labels.ndim else 0} label rows for {len(labelled)} labelled patients in {index}")
    row_of = {idx: k for k, idx in enumerate(labelled)}

    patients = []
    for r in rows:
        pid = r["Folder/ID"].strip()
        matchable(pid, index)
        if "-" in pid or "/" in pid:
            raise SystemExit(f"{index}: patient {pid!r}: an ID with '-' or '/' would break the patient-level split")
        patients.append((pid, category(pid, r.get("Diagnosis", ""), r.get("Relative Path", "")), (r.get("Label Index") or "").strip()))
    listed = {p for p, _, _ in patients}
    unlisted_covid = []
    for folder in CATEGORIES.values():  # patients on disk that Index.csv does not list
        root = os.path.join(a.release, folder)
        for pid in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            if pid in listed or temporary(pid) or not os.path.isdir(os.path.join(root, pid)):
                continue
            if folder == "COVID-19 Cases":
                unlisted_covid.append(pid)
            else:
                matchable(pid, root)
                if "-" in pid:
                    raise SystemExit(f"{root}: patient {pid!r}: an ID with '-' would break the patient-level split")
                patients.append((pid, folder, ""))
    out_rows, skipped = [], []
    for pid, folder, li in patients:
        src = os.path.join(a.release, folder, pid)
        if folder == "COVID-19 Cases" and li == "":
            skipped.append(pid)
            continue
        files = ordered(src)
        marks = None
        if li != "":
            row = labels[row_of[int(li)]]
            if len(files) > len(row):
                raise SystemExit(f"{label_file}: row {row_of[int(li)]} ({pid}) has {len(row)} slice labels for {len(files)} files in {src}")
            if row[len(files) :].any():
                raise SystemExit(f"{label_file}: row {row_of[int(li)]} ({pid}) labels slices beyond its {len(files)} files in {src}")
            marks = row[: len(files)].astype(int)
        diagnosis = DIAGNOSIS[folder]
        for k, (name, loc) in enumerate(files):
            infection = "" if marks is None else int(marks[k])
            covid = int(diagnosis == "COVID-19" and infection == 1)
            out_rows.append([f"{folder}/{pid}/{name}", pid, diagnosis, k, len(files), f"{loc:.1f}", covid, infection])
    with open(a.out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "patient", "diagnosis", "slice_index", "slices_in_series", "slice_location", "covid", "infection"])
        w.writerows(out_rows)
    n = len({r[1] for r in out_rows})
    print(f"{n} patients, {len(out_rows)} slices ({sum(r[6] for r in out_rows)} COVID-19 positive) -> {a.out}")
    if skipped or unlisted_covid:
        print(f"left out {len(skipped) + len(unlisted_covid)} COVID-19 patients without slice labels: {', '.join(skipped + unlisted_covid)}")


if __name__ == "__main__":
    main()
