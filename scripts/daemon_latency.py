#!/usr/bin/env python3
"""Daemon latency on a real series: start `ctsentry run` on a scratch folder tree, copy a series
into the drop folder in one go (each file written under a .part name, then renamed), and report
the time from the last file landing to the EARLY alert and to the final verdict, and slices/s.

    python3 scripts/daemon_latency.py --ctsentry target/release/ctsentry ../shared/data/covid-ct-md/P001
    python3 scripts/daemon_latency.py --cache /tmp/lat-cache ...   # twice: the second run starts warm
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ctsentry", default="target/release/ctsentry")
    ap.add_argument("--model", default="models/densenet121-covid.onnx")
    ap.add_argument("--quiet-seconds", type=float, default=10.0)
    ap.add_argument("--extra", default="", help="more config lines, e.g. '[engine]\\nbackend = \"tract\"'")
    ap.add_argument("--cache", help="keep the OpenVINO compiled-model cache here between runs (copied into the fresh state folder before the start, and from it after a run that found none): later runs start warm, as a box does after its first start")
    ap.add_argument("series")
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="ctsentry-latency-")
    cfg = os.path.join(root, "c.toml")
    with open(cfg, "w") as f:
        f.write(f'[paths]\nincoming = "in"\ndone = "done"\nquarantine = "q"\nresults = "results"\nstate = "state"\n'
                f'[model]\npath = "{os.path.abspath(a.model)}"\n[series]\nquiet_seconds = {a.quiet_seconds}\n'
                f'[results]\nheatmaps = false\n' + a.extra.replace("\\n", "\n") + "\n")
    cache = os.path.join(root, "state", "openvino-cache")
    # Warm only when the kept folder holds a compiled model (OpenVINO keys its entries itself:
    # one for another model or OpenVINO version is simply not used, and the run is cold).
    warm = bool(a.cache) and any(f.endswith(".blob") for _, _, fs in os.walk(a.cache) for f in fs)
    if warm:
        shutil.copytree(a.cache, cache)
    log = open(os.path.join(root, "daemon.log"), "w")
    p = subprocess.Popen([a.ctsentry, "--config", cfg, "run"], stderr=log)
    while "] ready: " not in open(os.path.join(root, "daemon.log")).read():
        time.sleep(0.05)
        assert p.poll() is None, open(os.path.join(root, "daemon.log")).read()
    files = sorted(f for f in os.listdir(a.series) if not f.endswith(".csv"))
    inc = os.path.join(root, "in", "series")
    os.makedirs(inc)
    t0 = time.time()
    for f in files:
        shutil.copyfile(os.path.join(a.series, f), os.path.join(inc, f + ".part"))
        os.rename(os.path.join(inc, f + ".part"), os.path.join(inc, f))
    t_last = time.time()
    events = os.path.join(root, "results", "events.jsonl")
    early = final = None
    while final is None and time.time() - t_last < 600:
        if os.path.exists(events):
            for line in open(events):
                e = json.loads(line)
                if e["stage"] == "EARLY" and early is None:
                    early = e
                if e["stage"] == "FINAL":
                    final = e
        time.sleep(0.05)
    # Peak resident memory of the daemon over the whole run (the kernel's high-water mark).
    hwm = next((int(l.split()[1]) for l in open(f"/proc/{p.pid}/status") if l.startswith("VmHWM:")), 0)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)
    res = json.load(open(os.path.join(root, "results", final["series_id"] + ".json")))
    if a.cache and os.path.isdir(cache):
        shutil.copytree(cache, a.cache, dirs_exist_ok=True)
    scored = res["times"]["last_scored"] - t0
    print(f"{len(files)} slices copied in {t_last - t0:.2f} s")
    if early:
        print(f"EARLY alert: {early['t'] - t_last:+.2f} s after the last file landed ({early['t'] - t0:.2f} s after the first)")
    else:
        print("EARLY alert: none (the series is negative)")
    print(f"last slice scored {res['times']['last_scored'] - t_last:+.2f} s after the last file landed; {len(files) / scored:.1f} slices/s end to end")
    print(f"final verdict {final['event']} ({final['positives']} of {final['slices']} slices): {final['t'] - t_last:.2f} s after the last file landed (quiet_seconds {a.quiet_seconds}; {final['t'] - t_last - a.quiet_seconds:+.2f} s beyond it)")
    print(f"engine {res['engine']} {res.get('precision', '')}, preprocess {res['preprocess']}, threshold {res['threshold']}; peak RSS {hwm / 1024:.0f} MiB ({'warm' if warm else 'no' if not a.cache else 'cold'} compiled-model cache)")
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
