#!/bin/sh
# Seeds the `scp` fuzz target's corpus with what DCMTK sends a receiver: a recording proxy in
# front of DCMTK's storescp keeps each connection's client-to-server bytes while echoscu (C-ECHO)
# and storescu (C-STORE of a small synthetic CT; implicit and explicit VR proposed; one and two
# instances in an association) talk through it.
#   fuzz/seed-scp.sh [CORPUS_DIR]   (default fuzz/corpus/scp; needs dcmtk, python3 with numpy and pydicom)
set -eu
out=$(realpath -m "${1:-$(dirname "$0")/corpus/scp}")
mkdir -p "$out"
work=$(mktemp -d)
scp= proxy=
trap 'kill $scp $proxy 2>/dev/null || true; rm -rf "$work"' EXIT
free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
python3 - "$work" <<'PY'
import sys, numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid, CTImageStorage
series, study = generate_uid(), generate_uid()
for k in range(2):
    m = FileMetaDataset(); m.MediaStorageSOPClassUID = CTImageStorage; m.MediaStorageSOPInstanceUID = generate_uid(); m.TransferSyntaxUID = ExplicitVRLittleEndian
    d = Dataset(); d.file_meta = m; d.SOPClassUID = CTImageStorage; d.SOPInstanceUID = m.MediaStorageSOPInstanceUID
    d.StudyInstanceUID = study; d.SeriesInstanceUID = series; d.Modality = "CT"; d.PatientName = "Fuzz^Seed"; d.InstanceNumber = k + 1
    d.Rows = d.Columns = 32; d.BitsAllocated = 16; d.BitsStored = 12; d.HighBit = 11; d.PixelRepresentation = 0
    d.SamplesPerPixel = 1; d.PhotometricInterpretation = "MONOCHROME2"; d.RescaleSlope = 1; d.RescaleIntercept = -1024
    d.ImagePositionPatient = [0, 0, 2 * k]; d.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]; d.PixelSpacing = [0.7, 0.7]; d.SliceThickness = 2
    d.PixelData = ((np.arange(32 * 32, dtype=np.uint16) * (k + 3)) % 4096).tobytes()
    d.save_as(f"{sys.argv[1]}/ct{k}.dcm", enforce_file_format=True)
PY
mkdir "$work/recv"
scp_port=$(free)
storescp --aetitle CTSENTRY --output-directory "$work/recv" "$scp_port" >/dev/null 2>&1 &
scp=$!
proxy_port=$(free)
python3 - "$out" "$proxy_port" "$scp_port" <<'PY' &
import socket, sys, threading
out, port, target = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); ls.bind(("127.0.0.1", port)); ls.listen()
def pipe(a, b, keep):
    while True:
        d = a.recv(65536)
        if not d: break
        keep.append(d)
        b.sendall(d)
    try: b.shutdown(socket.SHUT_WR)
    except OSError: pass
n = 0
while True:
    c, _ = ls.accept(); s = socket.create_connection(("127.0.0.1", target))
    sent, back = [], []
    t1 = threading.Thread(target=pipe, args=(c, s, sent)); t2 = threading.Thread(target=pipe, args=(s, c, back))
    t1.start(); t2.start(); t1.join(); t2.join()
    open(f"{out}/dcmtk-{n}", "wb").write(b"".join(sent)); n += 1
    c.close(); s.close()
PY
proxy=$!
sleep 1
echoscu -aet SCANNER -aec CTSENTRY 127.0.0.1 "$proxy_port"
storescu -aet SCANNER -aec CTSENTRY 127.0.0.1 "$proxy_port" "$work/ct0.dcm"
storescu -xi -aet SCANNER -aec CTSENTRY 127.0.0.1 "$proxy_port" "$work/ct0.dcm" "$work/ct1.dcm"
storescu -xb -aet SCANNER -aec CTSENTRY 127.0.0.1 "$proxy_port" "$work/ct1.dcm"
sleep 1
ls -l "$out"
