#!/usr/bin/env python3
"""Throughput of the DICOM receiver: DCMTK's storescu sends N CT slices (512 x 512, 16-bit,
explicit VR little endian, valid UIDs) in one association to a running `ctsentry run` with
`[dicom] enabled`; storescu returns once every C-STORE was answered, i.e. once every instance is
durable in the drop folder. Reports slices/s and MB/s received and made durable, while the
daemon scores what arrives (the box as it runs). Needs dcmtk and pydicom.

    python3 scripts/receiver_throughput.py --ctsentry target/release/ctsentry --slices 500
"""
import argparse
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import numpy as np


def write_series(folder, n):
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    os.makedirs(folder)
    rng = np.random.default_rng(1)
    base = "1.2.826.0.1.3680043.9.7307.99"
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = f"{base}.2.{k + 1}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID = "CT", "THROUGHPUT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{base}.1", f"{base}.3"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [0.0, 0.0, 1.0 * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.Rows = ds.Columns = 512
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = rng.integers(-1000, 400, (512, 512), dtype=np.int16).tobytes()
        ds.save_as(os.path.join(folder, f"{k:04}.dcm"), enforce_file_format=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ctsentry", default="target/release/ctsentry")
    ap.add_argument("--model", default="models/densenet121-covid.onnx")
    ap.add_argument("--slices", type=int, default=500)
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="ctsentry-scp-")
    src = os.path.join(root, "src")
    write_series(src, a.slices)
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    p_no = port.getsockname()[1]
    port.close()
    cfg = os.path.join(root, "c.toml")
    open(cfg, "w").write(
        f'[paths]\nincoming = "in"\ndone = "done"\nquarantine = "q"\nresults = "results"\nstate = "state"\n'
        f'[model]\npath = "{os.path.abspath(a.model)}"\n[results]\nheatmaps = false\n[disk]\nmin_free_mb = 0\n'
        f'[dicom]\nenabled = true\nlisten = "127.0.0.1:{p_no}"\nallowed_callers = ["SCANNER"]\n')
    log = open(os.path.join(root, "daemon.log"), "w")
    d = subprocess.Popen([a.ctsentry, "--config", cfg, "run"], stderr=log)
    while "dicom: C-ECHO and C-STORE SCP" not in open(os.path.join(root, "daemon.log")).read():
        assert d.poll() is None, open(os.path.join(root, "daemon.log")).read()
        time.sleep(0.05)
    files = sorted(os.path.join(src, f) for f in os.listdir(src))
    size = sum(os.path.getsize(f) for f in files)
    t0 = time.perf_counter()
    r = subprocess.run(["storescu", "-aet", "SCANNER", "-aec", "CTSENTRY", "127.0.0.1", str(p_no), *files], capture_output=True, text=True)
    dt = time.perf_counter() - t0
    d.send_signal(signal.SIGTERM)
    d.wait(timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    print(f"{len(files)} slices ({size / 1e6:.0f} MB) received and made durable in {dt:.2f} s: {len(files) / dt:.0f} slices/s, {size / 1e6 / dt:.0f} MB/s (storescu, one association, loopback; the daemon scoring meanwhile)")
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
