#!/usr/bin/env python3
"""Fine-tunes the last dense block, norm5 and the head of a bundle on every source,
leave-sources-out, from the block's cached input (`features.py --block4`); with `--whole`, the
whole network from the prep tensors (flips and intensity augmentation).

The bundle's ONNX graph from the last dense block's input to the head is run as a PyTorch module
built from the graph itself (Concat, BatchNormalization, Relu, Conv nodes and their
initialisers), so that what is trained is exactly what is served, including the batch norms the
exporter folded into convolutions; the trained initialisers are written back into the same graph
(`--export`). Batch-norm statistics stay as they are (only their scale and shift learn): the
cached inputs carry no augmentation, and few sources would set them.

The rule, fixed before any held-out number of this recipe was looked at (models/README.md,
"4.0.0"):
- data: every `ctsentry prep` row with lung fraction >= 0.02 (the slices the appliance scores);
  each (source, label) cell the same total weight (headfit.weights);
- training: AdamW, lr 2e-4 with cosine decay, weight decay 1e-4, 6 epochs, batch 32; pointing
  loss (train.attention_loss on the cells >= 2 % covered by lesion) at weight 0.5 on every row
  with a lesion mask (simulated, and the radiologists' masks of ma-covid-seg and medseg);
- calibration: Platt scaling on the pooled out-of-fold logits (folded into the head);
- threshold: the largest threshold whose sensitivity, averaged over the real COVID-19 sources
  (each source one vote), is >= 0.92; the same rule per source gives the spread;
- series rule: 15 mm and 15 % of the lung (series.py measures it held out);
- folds: `DEFAULT_FOLDS`, seven groups of sources, every source held out once.

    python3 models/training/blockfit.py --onnx models/densenet121-covid.onnx --features /tmp/feat4 \
        --prep /tmp/prep --extra /tmp/extra --sims /tmp/sim-ct --sims /tmp/sim-lpd --sims /tmp/sim-ms --out /tmp/block
"""
import argparse
import csv
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import headfit  # noqa: E402
from features import BLOCK4_INPUT  # noqa: E402
from folds import threshold_for_mean_sensitivity  # noqa: E402
import graphops  # noqa: E402
from train import attention_loss, lesion_cells  # noqa: E402

HEAD_INPUT = "/net/Relu_output_0"
# Seven folds, each holding out one to three sources at once (fixed with the rule; a source held
# out with others is held out more strictly than alone): 2 cores allow ~4 min per fold.
DEFAULT_FOLDS = ("covid-ct-md;lung-pet-ct-dx,dcmqi;acrin-flt,cptac;lidc,rider;philips-4dct,lungfcp,tcga;"
                 "ma-covid-seg,song-pneumonia;ucsd-covid-ct,medseg")
GEMM_W, GEMM_B = "net.backbone.classifier.weight", "net.backbone.classifier.bias"


class Subgraph(nn.Module):
    """The ONNX nodes from `BLOCK4_INPUT` to `HEAD_INPUT`, with the head; forward returns
    (logit [N], cam [N,7,7]) as the bundle computes them."""

    def __init__(self, model, start=BLOCK4_INPUT):
        from onnx import numpy_helper

        super().__init__()
        self.start = start
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        nodes, started = [], False
        for n in model.graph.node:
            if not started:
                started = start in n.input
            if started:
                nodes.append(n)
                if HEAD_INPUT in n.output:
                    break
        self.nodes = nodes
        self.names = {}
        self.params = nn.ParameterDict()
        self.stats = {}
        for n in nodes:
            for k, i in enumerate(n.input):
                if i not in inits:
                    continue
                if n.op_type == "BatchNormalization" and k >= 3:
                    self.stats[i] = torch.from_numpy(inits[i].copy())  # running mean/var: fixed
                else:
                    key = f"p{len(self.params)}"
                    self.names[i] = key
                    self.params[key] = nn.Parameter(torch.from_numpy(inits[i].copy()))
        self.head_w = nn.Parameter(torch.from_numpy(inits[GEMM_W].copy()))
        self.head_b = nn.Parameter(torch.from_numpy(inits[GEMM_B].copy()))

    def value(self, name, env):
        return graphops.lookup(name, env, self.names, self.params, self.stats)

    def forward(self, x):
        env = {self.start: x}
        for n in self.nodes:
            env[n.output[0]] = graphops.apply(n, [self.value(i, env) for i in n.input])
        f = env[HEAD_INPUT]
        logit = f.mean(dim=(2, 3)) @ self.head_w[0] + self.head_b[0]
        cam = torch.einsum("nkhw,k->nhw", f, self.head_w[0])
        return logit, cam

    def export(self, model, path, platt=(1.0, 0.0)):
        """Writes `model` with the trained initialisers (the head calibrated by `platt`)."""
        import onnx
        from onnx import numpy_helper

        a, b = platt
        new = {i: self.params[k].detach().numpy() for i, k in self.names.items()}
        w = (a * self.head_w.detach().numpy()).astype(np.float32)
        new[GEMM_W] = w
        new[GEMM_B] = (a * self.head_b.detach().numpy() + b).astype(np.float32)
        cam = [n for n in model.graph.node if n.op_type == "Einsum" and "cam" in n.output][0].input[1]
        new[cam] = w[0]
        m = onnx.ModelProto()
        m.CopyFrom(model)
        done = set()
        for init in m.graph.initializer:
            if init.name in new:
                init.CopyFrom(numpy_helper.from_array(new[init.name].astype(np.float32), init.name))
                done.add(init.name)
        if done != set(new):
            raise SystemExit(f"initialisers not written: {sorted(set(new) - done)}")
        onnx.save(m, path)


def cells_of(mask):
    """train.lesion_cells ("share": cells >= 2 % covered) of a lesion mask of any size, resampled
    as train.py resamples its masks (the image maps whole onto 224)."""
    m = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=(224, 224), mode="area")
    return lesion_cells(m)[0].numpy().astype(np.uint8)


def load(a):
    """Block inputs, labels, lung fractions, meta (headfit's) and lesion cells of every kept row."""
    xs, ys, lungs, meta, cells, rowref = [], [], [], [], [], []
    patient_source = {}
    names = sorted(a.names.split(","), key=lambda n: n.startswith("sim"))
    sims = {os.path.basename(os.path.normpath(s)).replace("sim-", "sim"): s for s in a.sims}
    for name in names:
        rows = list(csv.DictReader(open(os.path.join(a.prep, name, "index.csv"))))
        src = headfit.sources_of(name, rows, patient_source)
        for r, (s, p, sim) in zip(rows, src):
            if not sim:
                patient_source[os.path.basename(os.path.dirname(r["file"])) or r["file"]] = (s, p)
        keep = [i for i, r in enumerate(rows) if r["label"] in ("0", "1") and float(r["lung_fraction"]) >= a.min_lung]
        if a.whole:
            tensors = np.load(os.path.join(a.prep, name, "tensors.npy"), mmap_mode="r")
            xs.append(Rows([(tensors, i) for i in keep]))
        else:
            xs.append(np.load(os.path.join(a.features, name + ".npz"))["block4"][keep])
        for i in keep:
            r = rows[i]
            ys.append(int(r["label"]))
            lungs.append(float(r["lung_fraction"]))
            meta.append((*src[i], name, r["file"]))
            rowref.append((name, i))
            c = np.zeros((7, 7), np.uint8)
            if r["label"] == "1":
                if name in sims:
                    path = os.path.join(sims[name], "masks", os.path.splitext(r["file"])[0] + ".npy")
                    c = cells_of(np.load(path) > 0)
                elif name in ("ma", "medseg") and a.extra:
                    c = cells_of(headfit.mask_of(a.extra, name, r["file"]))
            cells.append(c)
    return (Rows.join(xs) if a.whole else np.concatenate(xs)), np.array(ys), np.array(lungs), meta, np.stack(cells), rowref


class Rows:
    """Rows of memory-mapped prep tensors, indexed like an array: a boolean mask gives the
    selected rows (still unread), integer indices or a slice read and stack them."""

    def __init__(self, refs):
        self.refs = refs  # (tensors, row) pairs

    @staticmethod
    def join(all_rows):
        return Rows([r for rows in all_rows for r in rows.refs])

    def __len__(self):
        return len(self.refs)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            idx = range(len(self))[idx]
        idx = np.asarray(idx)
        if idx.dtype == bool:
            return Rows([r for r, k in zip(self.refs, idx) if k])
        return np.stack([t[i] for t, i in (self.refs[j] for j in idx)])


# The prep tensor's window (src/preprocess: -600/1500, so -1350..150 HU) and normalisation.
WINDOW_LO, WINDOW_WIDTH = -1350.0, 1500.0
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def blur(w, sigma):
    """Gaussian blur of [B,1,H,W] with per-row sigma (pixels), 5x5 taps."""
    r = torch.arange(-2, 3, dtype=torch.float32)
    k = torch.exp(-(r[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)  # [B,5]
    n = w.shape[0]
    # Each row its own kernel: the rows as channels of one image, a grouped convolution.
    t = F.conv2d(F.pad(w.transpose(0, 1), (2, 2, 0, 0), mode="replicate"), k.view(n, 1, 1, 5), groups=n)
    return F.conv2d(F.pad(t, (0, 0, 2, 2), mode="replicate"), k.view(n, 1, 5, 1), groups=n).transpose(0, 1)


def hu_augment(xb, g):
    """Recipe D's scanner augmentation, in Hounsfield units inside the lung mask (the rest stays
    0, as served: so it runs on the tensor before any other intensity change), label-preserving,
    each with probability 1/2 (the soft kernel 1/4 of the rows without a sharp one): quantum noise of low-dose CT
    (sd 5-40 HU), a sharp reconstruction kernel (unsharp mask, amount 0.2-1.0) or, instead, a
    soft one (blur sigma 0.5-1.0 px), iodine contrast in vessels and hila (+50-250 HU on what is
    above -400 HU, ramped over 200 HU), and a global lung offset of +-25 HU (inspiration,
    calibration). Rows are [B,3,224,224] normalised prep tensors; the same plane in 3 channels."""
    n = xb.shape[0]
    w = xb[:, :1] * STD[:, :1] + MEAN[:, :1]
    lung = w > 1e-4
    hu = w * WINDOW_WIDTH + WINDOW_LO
    on = lambda: (torch.rand(n, 1, 1, 1, generator=g) < 0.5).float()  # noqa: E731
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, 1, 1, 1, generator=g)  # noqa: E731
    # Contrast in vessels first (it is in the object), then the kernel, then the noise.
    ramp = ((hu + 400.0) / 200.0).clamp(0, 1)
    hu = hu + on() * u(50, 250) * ramp
    sharp, soft = on(), (torch.rand(n, 1, 1, 1, generator=g) < 0.25).float()
    b1 = blur(hu, torch.ones(n))
    hu = hu + sharp * u(0.2, 1.0) * (hu - b1)
    hu = torch.where((soft * (1 - sharp)) > 0, blur(hu, u(0.5, 1.0).view(n)), hu)
    hu = hu + on() * u(5, 40) * torch.randn(hu.shape, generator=g)
    hu = hu + on() * u(-25, 25)
    w2 = torch.where(lung, ((hu - WINDOW_LO) / WINDOW_WIDTH).clamp(1e-3, 1), torch.zeros_like(w))
    return (w2 - MEAN) / STD


def harmonize(xb, sigma):
    """Recipe E's sharpness harmonisation: every row blurred to one common softness (Gaussian,
    `sigma` pixels of the 224 tensor) inside the lung mask only (normalised convolution: the
    outside, 0 as served, is neither blurred in nor changed), in training and in prediction
    alike, so that a soft reconstruction kernel no longer differs from a sharp one."""
    if not sigma:
        return xb
    w = xb[:, :1] * STD[:, :1] + MEAN[:, :1]
    lung = (w > 1e-4).float()
    s = torch.full((xb.shape[0],), float(sigma))
    inside = blur(w * lung, s) / blur(lung, s).clamp_min(1e-6)
    w2 = torch.where(lung > 0, inside.clamp(1e-3, 1), torch.zeros_like(w))
    return (w2 - MEAN) / STD


def train(model, x, y, w, cells, a, seed):
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
    steps = a.epochs * max(1, len(y) // a.batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    g = torch.Generator().manual_seed(seed)
    g_hu = torch.Generator().manual_seed(seed + 1)
    yt, wt, ct = torch.from_numpy(y.astype(np.float32)), torch.from_numpy(w.astype(np.float32)), torch.from_numpy(cells)
    for _ in range(a.epochs):
        order = torch.randperm(len(y), generator=g)
        for s in range(0, len(order) - 1, a.batch):
            b = order[s : s + a.batch]
            xb = harmonize(torch.from_numpy(x[b.numpy()].astype(np.float32)), a.harmonize)
            cb = ct[b].float()
            if a.whole:
                # Left-right flips (the cells flip with the image), contrast x0.9-1.1 and
                # brightness +-0.1 in normalised units, as train.py's augmentation.
                flip = torch.rand(len(b), generator=g) < 0.5
                xb[flip] = xb[flip].flip(-1)
                cb[flip] = cb[flip].flip(-1)
                scale = 0.9 + 0.2 * torch.rand(len(b), 1, 1, 1, generator=g)
                shift = torch.rand(len(b), 1, 1, 1, generator=g) * 0.2 - 0.1
                if a.hu_aug:
                    # On the tensor as served (outside the lung exactly 0), before the jitter
                    # moves that 0; its own generator, so that flips and jitter are recipe C's.
                    xb = hu_augment(xb, g_hu)
                xb = xb * scale + shift
            logit, cam = model(xb)
            loss = (wt[b] * F.binary_cross_entropy_with_logits(logit, yt[b], reduction="none")).mean()
            att, k = attention_loss(cam, cb)
            if k:
                loss = loss + a.cam_weight * att * k / len(b)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model


def predict(model, x, bs=32, sigma=0.0):
    out, cams = [], []
    with torch.no_grad():
        for s in range(0, len(x), bs):
            logit, cam = model(harmonize(torch.from_numpy(x[s : s + bs].astype(np.float32)), sigma))
            out.append(logit.numpy())
            cams.append(cam.numpy())
    return np.concatenate(out), np.concatenate(cams)


def pointing(prep, rowref, meta, cams, idx, extra):
    """Pointing game on the rows `idx` (radiologist-masked), with their CAMs."""
    from pointing import hit, lesion_distance, peak, upsample

    hits = []
    for j in idx:
        name, i = rowref[j]
        lung = np.load(os.path.join(prep, name, "hu", f"{i:06}.mask.npy")) > 0
        lesion = headfit.mask_of(extra, name, meta[j][4])
        if lesion.shape != lung.shape or not lesion.any():
            continue
        hits.append(hit(peak(upsample(cams[j], *lung.shape), lung), lesion_distance(lesion)))
    return {"slices": len(hits), "pointing_game": float(np.mean(hits)) if hits else float("nan")}


def threshold_rule(p, y, meta, target):
    """folds.threshold_for_mean_sensitivity over the real COVID-19 sources' positive slices."""
    real_pos = (y == 1) & np.array([not m[2] for m in meta])
    src = np.array([m[0] for m in meta])
    return threshold_for_mean_sensitivity({s: p[real_pos & (src == s)] for s in sorted(set(src[real_pos]))}, target)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--features", required=True, help="features.py --block4 output folder")
    ap.add_argument("--prep", required=True)
    ap.add_argument("--extra", help="assemble.sh's output (radiologist lesion masks)")
    ap.add_argument("--sims", action="append", default=[], help="a lesions.py output folder (its masks/), named sim-<prep suffix> (repeatable)")
    ap.add_argument("--names", default="ct,lpd,ms,ucsd,ma,medseg,song,simct,simlpd,simms")
    ap.add_argument("--min-lung", type=float, default=0.02)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--cam-weight", type=float, default=0.5)
    ap.add_argument("--sensitivity", type=float, default=0.92)
    ap.add_argument("--folds", default=DEFAULT_FOLDS, help="folds: groups of sources held out together, `;`-separated, each a comma list (every source must be in one)")
    ap.add_argument("--no-final", action="store_true", help="skip the model fitted on everything")
    ap.add_argument("--partial", action="store_true", help="allow folds that leave some sources never held out (an exploratory run)")
    ap.add_argument("--whole", action="store_true", help="train the whole graph from the prep tensors (input to head; flips and intensity augmentation) instead of the last dense block from --features")
    ap.add_argument("--hu-aug", action="store_true", help="with --whole: recipe D's scanner augmentation (hu_augment: low-dose noise, kernels, vessel contrast, lung offset)")
    ap.add_argument("--harmonize", type=float, default=0.0, help="with --whole: recipe E, every input blurred inside the lung to this sigma (pixels) in training and prediction (harmonize)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.hu_aug and not a.whole:
        raise SystemExit("--hu-aug draws into the prep tensors: it needs --whole")
    import onnx

    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    base = onnx.load(a.onnx)
    x, y, lung, meta, cells, rowref = load(a)
    src = np.array([m[0] for m in meta])
    w = headfit.weights(y, src)
    print(f"{len(y)} rows ({int(y.sum())} positive, {int((cells.reshape(len(y), -1).sum(1) > 0).sum())} with lesion cells); sources: "
          + ", ".join(f"{s} {int((src == s).sum())}" for s in sorted(set(src))), flush=True)

    # The graph as a module reproduces the bundle's own outputs.
    start = "input" if a.whole else BLOCK4_INPUT
    z0 = np.load(os.path.join(a.features, "ct.npz"))
    m0 = Subgraph(base, start)
    probe = np.load(os.path.join(a.prep, "ct", "tensors.npy"), mmap_mode="r")[:8] if a.whole else z0["block4"][:32]
    l0, _ = predict(m0, np.asarray(probe))
    dl = float(np.abs(l0 - z0["logit"][: len(l0)]).max())
    print(f"subgraph vs bundle, {len(l0)} rows: max |dlogit| {dl:.2e}", flush=True)

    folds = [f.split(",") for f in a.folds.split(";")]
    missing = set(src) - {s for f in folds for s in f}
    if missing and not a.partial:
        raise SystemExit(f"--folds: sources in no fold: {', '.join(sorted(missing))}")
    z = np.full(len(y), np.nan)
    cams = np.zeros((len(y), 7, 7), np.float32)
    t0 = time.time()
    fold_models = []
    for f in folds:
        te = np.isin(src, f)
        tr = ~te
        m = train(Subgraph(base, start), x[tr], y[tr], headfit.weights(y[tr], src[tr]), cells[tr], a, a.seed)
        z[te], cams[te] = predict(m, x[te], sigma=a.harmonize)
        fold_models.append((f, m))
        print(f"fold {'+'.join(f)}: {int(tr.sum())} trained on, {int(te.sum())} held out, {time.time() - t0:.0f} s", flush=True)
    done = ~np.isnan(z)
    pa, pb = headfit.platt(z[done], y[done], w[done])
    p = np.where(done, headfit.sig(pa * z + pb), np.nan)
    t, per = threshold_rule(p[done], y[done], [mm for mm, d in zip(meta, done) if d], a.sensitivity)
    dm = [mm for mm, d in zip(meta, done) if d]
    summary = {
        "args": vars(a),
        "rows": int(len(y)),
        "platt": [float(pa), float(pb)],
        "ece_before": headfit.ece(headfit.sig(z[done]), y[done]),
        "ece_after": headfit.ece(p[done], y[done]),
        "threshold": t,
        "threshold_per_source": per,
        "per_source": headfit.per_source(p[done], y[done], dm, t),
        "fold_seconds": round(time.time() - t0),
    }
    if any(mm[1] == "P001" for mm in dm):
        summary["reference_protocol"] = headfit.reference_protocol(p[done], y[done], dm, t)
    if a.extra:
        summary["pointing_held_out"] = {
            s: pointing(a.prep, rowref, meta, cams, [j for j in range(len(y)) if src[j] == s and done[j]], a.extra)
            for s in ("ma-covid-seg", "medseg") if (src[done] == s).any()
        }
    with open(os.path.join(a.out, "oof.csv"), "w") as f:
        wr = csv.writer(f)
        wr.writerow(["folder", "file", "source", "patient", "simulated", "label", "lung_fraction", "prob"])
        for j in np.flatnonzero(done):
            mm = meta[j]
            wr.writerow([mm[3], mm[4], mm[0], mm[1], int(mm[2]), y[j], f"{lung[j]:.4f}", f"{p[j]:.6f}"])
    # Each fold's model, calibrated as the shipped one, for series.py (per held-out source).
    os.makedirs(os.path.join(a.out, "loso"), exist_ok=True)
    for f, m in fold_models:
        m.export(base, os.path.join(a.out, "loso", f[0] + ".onnx"), (pa, pb))
        for other in f[1:]:
            if os.path.exists(os.path.join(a.out, "loso", other + ".onnx")):
                os.remove(os.path.join(a.out, "loso", other + ".onnx"))
            os.link(os.path.join(a.out, "loso", f[0] + ".onnx"), os.path.join(a.out, "loso", other + ".onnx"))
    if not a.no_final:
        t1 = time.time()
        final = train(Subgraph(base, start), x, y, w, cells, a, a.seed)
        final.export(base, os.path.join(a.out, "final.onnx"), (pa, pb))
        summary["final_seconds"] = round(time.time() - t1)
    json.dump(summary, open(os.path.join(a.out, "summary.json"), "w"), indent=2)
    print(json.dumps({k: v for k, v in summary.items() if k != "args"}, indent=1))


if __name__ == "__main__":
    main()
