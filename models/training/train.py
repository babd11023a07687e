#!/usr/bin/env python3
"""Trains the shipped DenseNet121 COVID-19 pneumonia slice classifier.

Reads ONLY tensors written by `ctsentry prep` (tensors.npy, index.csv, params.json): the
appliance's own preprocessing, so training and serving cannot drift apart. See models/README.md
for the full, reproducible recipe (prep commands, the validation run, the shipped run).

    python3 models/training/train.py --prep /tmp/prep/ct --prep /tmp/prep/ucsd \
        --ucsd-labels ../shared/data/ucsd-covid-ct/labels.csv \
        --train-series cap001 --eval-series P001,normal001 --epochs 12 --out /tmp/run-val

Data selection (one rule per source, recorded in the run's summary.json):
- CT series (COVID-CT-MD, lung-pet-ct-dx, simulated lesions): a row's patient is the folder
  holding its `file` up to its first `-` (`P001`, `cap001`, `A0002` for both of A0002's
  reconstructions, `cap001` for `cap001-sim2`, the lesions simulated into cap001; `P001` for the
  full release's `COVID-19 Cases/P001/…`: `covid_ct_md.py`); `--train-series`
  and `--eval-series` name patients (`all` for every one), so no patient, and no slice a lesion
  was simulated into, is ever on both sides of a split. Every slice is used with its label
  (slices of the COVID-19 patient without visible infection are negatives; CAP slices are hard
  negatives; simulated slices are positives).
- UCSD 2D images: the collection's official split (`--ucsd-train-splits`, default train;
  `--ucsd-eval-splits`, default val); images whose lung mask covers < `--min-ucsd-lung` of the
  image are left out (the HU-threshold segmentation fails on ~1/4 of these cropped, variously
  windowed figures; training on a missing mask would teach the model a picture the appliance
  never shows it).
"""
import argparse
import csv
import json
import os
import random
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import folds
from folds import TOLERANCE_PER_512, load_prep, patient


class Net(nn.Module):
    """DenseNet121 with a 1-output head; forward returns (logit [N], cam [N,7,7])."""

    def __init__(self):
        super().__init__()
        self.backbone = torchvision.models.densenet121(weights=None, num_classes=1)

    def forward(self, x):
        f = F.relu(self.backbone.features(x))  # [N,1024,7,7], the last dense block after norm5
        pooled = f.mean(dim=(2, 3))
        logit = self.backbone.classifier(pooled)[:, 0]
        w = self.backbone.classifier.weight[0]  # [1024]
        cam = torch.einsum("nkhw,k->nhw", f, w)  # class activation map (= Grad-CAM at this layer up to scale)
        return logit, cam


def load_init(net, path):
    """Loads the convolutional features of a DenseNet121 checkpoint into `net` (its head, a
    1000-class ImageNet one or our 1-output one, is left out): torchvision's ImageNet file
    (`densenet121-a639ec97.pth`, old `norm.1`-style keys included), a torchvision
    `densenet121().state_dict()`, or a train.py `model.pt`. Exits naming the file when it is
    not one of those. Returns its sha256."""
    import hashlib
    import re

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SystemExit(f"{path}: not a PyTorch checkpoint ({e})")
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    if not isinstance(sd, dict):
        raise SystemExit(f"{path}: not a state dict")
    old = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")
    features = {}
    for k, v in sd.items():
        k = k.removeprefix("module.").removeprefix("backbone.")
        m = old.match(k)
        k = m.group(1) + m.group(2) if m else k
        if k.startswith("features."):
            features[k[len("features."):]] = v
    own = net.backbone.features.state_dict()
    # Checkpoints older than batch norm's step counter (ImageNet's is) do not hold it.
    missing = sorted(k for k in own if k not in features and not k.endswith("num_batches_tracked"))
    extra = sorted(k for k in features if k not in own)
    if missing or extra:
        raise SystemExit(f"{path}: not DenseNet121 features ({len(missing)} of its {len(own)} tensors missing, e.g. {missing[:1]}; {len(extra)} unknown, e.g. {extra[:1]})")
    for k, v in own.items():
        features.setdefault(k, v)
    try:
        net.backbone.features.load_state_dict(features, strict=True)
    except RuntimeError as e:  # a tensor of another shape
        raise SystemExit(f"{path}: not DenseNet121 features ({' '.join(str(e).split())[:300]})")
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def augment(x, g, m=None):
    """CT-suited augmentation on a normalised [B,3,H,W] batch: rotation ±10°, shift ±6%,
    scale 0.9–1.1, left-right flip, contrast ×0.9–1.1 and brightness ±0.1 (normalised units).
    `m` ([B,1,H,W] lesion masks) gets the same geometric transform; returns (x, m)."""
    b = x.shape[0]
    ang = (torch.rand(b, generator=g) * 2 - 1) * (10 * np.pi / 180)
    sc = 0.9 + torch.rand(b, generator=g) * 0.2
    tx, ty = [(torch.rand(b, generator=g) * 2 - 1) * 0.12 for _ in range(2)]
    flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    # Fill outside with each image's background (its corner value: masked-out area or air).
    bg = x[:, :, :1, :1]
    y = F.grid_sample(x - bg, grid, align_corners=False, padding_mode="zeros") + bg
    c = 0.9 + torch.rand(b, 1, 1, 1, generator=g) * 0.2
    d = (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * 0.1
    if m is not None:
        m = F.grid_sample(m, grid, align_corners=False, padding_mode="zeros")
    return y * c + d, m


def lesion_cells(m, size=7, target="share", min_share=0.02):
    """Which CAM cells ([B,size,size], 0/1) hold the (augmented) lesion masks [B,1,H,W].
    `share`: cells at least `min_share` covered by lesion. `centre`: cells whose centre (the
    input pixel nearest it) lies within the pointing game's tolerance (15 px per 512) of a
    lesion pixel (one at least half covered at the input's resolution), the places where a heat
    map's peak counts as a hit (pointing.py), with `share` for a slice whose lesions lie near no
    centre."""
    share = (F.adaptive_avg_pool2d(m, size)[:, 0] >= min_share).float()
    if target == "share":
        return share
    h, w = m.shape[2:]
    r = TOLERANCE_PER_512 * w / 512.0
    k = int(np.ceil(r))
    yy, xx = torch.meshgrid(torch.arange(-k, k + 1.0), torch.arange(-k, k + 1.0), indexing="ij")
    disc = ((yy**2 + xx**2) <= r * r).float()[None, None]
    near = F.conv2d((m >= 0.5).float(), disc, padding=k)[:, 0] > 0  # within r of a lesion pixel
    rows = ((torch.arange(size) + 0.5) * h / size - 0.5).round().long()
    cols = ((torch.arange(size) + 0.5) * w / size - 0.5).round().long()
    centre = near[:, rows][:, :, cols].float()
    none = centre.flatten(1).sum(1) == 0
    return torch.where(none[:, None, None], share, centre)


def attention_loss(cam, cells):
    """Pointing loss for slices with a known lesion mask: −log of the spatial-softmax mass of the
    class activation map that falls on the lesion's cells (`lesion_cells`). Teaches the map's
    peak to sit on the lesion; it does not change how the image-level logit is formed (global
    average pooling + linear), so the served `prob`/`cam` contract is unchanged.
    Returns the mean over rows that have lesion cells, and how many rows that was."""
    target = cells.flatten(1)
    keep = target.sum(1) > 0
    if not keep.any():
        return cam.new_zeros(()), 0
    att = torch.softmax(cam.flatten(1)[keep].float(), dim=1)
    return -torch.log((att * target[keep]).sum(1) + 1e-6).mean(), int(keep.sum())


def evaluate(model, x, idx, bs=16):
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(idx), bs):
            xb = torch.from_numpy(np.ascontiguousarray(x[idx[i : i + bs]]))
            out.append(torch.sigmoid(model(xb)[0]))
    return torch.cat(out).numpy() if out else np.zeros(0)


def auc(p, y):
    """AUC of scores `p` against 0/1 labels `y`."""
    return folds.auc(p[y == 1], p[y == 0])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prep", action="append", required=True, help="a ctsentry prep output folder (repeatable)")
    ap.add_argument("--ucsd-labels", help="labels.csv of the UCSD collection (for its split column)")
    ap.add_argument("--ucsd-train-splits", default="train")
    ap.add_argument("--ucsd-eval-splits", default="val")
    ap.add_argument("--min-ucsd-lung", type=float, default=0.10)
    ap.add_argument("--train-series", default="all", help="CT series used for training: all, none or a comma list")
    ap.add_argument("--eval-series", default="none", help="CT series held out for validation")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--ema", type=float, default=0.99, help="exponential moving average of the weights (per step) that is evaluated and saved; 0: none")
    ap.add_argument("--precision", choices=["bf16", "f32"], default="bf16", help="training arithmetic (bf16: CPU autocast, AMX where present); evaluation is f32")
    ap.add_argument("--masks", action="append", default=[], help="lesions.py masks/ folder: simulated slices found there get the pointing loss (repeatable)")
    ap.add_argument("--cam-weight", type=float, default=0.0, help="weight of the pointing loss on simulated lesions (0: image labels only)")
    ap.add_argument("--cam-target", choices=["share", "centre"], default="share", help="the pointing loss's lesion cells: those >= 2%% covered by lesion, or those whose centre is within the pointing game's tolerance of it")
    ap.add_argument("--eval-every", type=int, default=1, help="report held-out numbers every N epochs (and after the last)")
    ap.add_argument("--init", help="start from these DenseNet121 weights (e.g. torchvision's ImageNet densenet121-a639ec97.pth) instead of from scratch; the head is new")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)

    ucsd_split = {}
    if a.ucsd_labels:
        for r in csv.DictReader(open(a.ucsd_labels)):
            ucsd_split[r["file"]] = r["split"]
    sets = lambda s: None if s == "all" else set() if s == "none" else set(s.split(","))
    tr_series, ev_series = sets(a.train_series), sets(a.eval_series)

    xs, train, held, params = [], [], [], None
    for k, folder in enumerate(a.prep):
        x, rows, p = load_prep(folder)
        if params is None:
            params = p
        assert p == params, f"{folder}: preprocessing parameters differ from {a.prep[0]}"
        xs.append(x)
        for i, r in enumerate(rows):
            if r["label"] == "":
                continue
            y = int(r["label"])
            if r["file"] in ucsd_split:
                if float(r["lung_fraction"]) < a.min_ucsd_lung:
                    continue
                sp = ucsd_split[r["file"]]
                dst = train if sp in a.ucsd_train_splits.split(",") else held if sp in a.ucsd_eval_splits.split(",") else None
                group = "ucsd-" + sp
            else:
                series = patient(r["file"])
                dst = train if tr_series is None or series in tr_series else held if ev_series is None or series in ev_series else None
                group = series
            if dst is not None:
                dst.append((k, i, y, group, r["file"]))
    assert not ({g for *_, g, _ in train if not g.startswith("ucsd")} & {g for *_, g, _ in held if not g.startswith("ucsd")}), "a series on both sides"

    def gather(items):
        return np.stack([xs[k][i] for k, i, *_ in items]).astype(np.float32) if items else np.zeros((0, 3, 224, 224), np.float32)

    def lesion_masks(items):
        """[N,1,224,224] uint8 lesion masks (area-resampled ×255, 0 where none is known)."""
        out = np.zeros((len(items), 1, 224, 224), np.uint8)
        found = 0
        for j, (*_, y, _, file) in enumerate(items):
            if y != 1:
                continue
            paths = [p for p in (os.path.join(d, os.path.splitext(file)[0] + ".npy") for d in a.masks) if os.path.exists(p)]
            if len(paths) > 1:
                raise SystemExit(f"{file}: a lesion mask in more than one --masks folder ({', '.join(paths)}): which one belongs to it is ambiguous")
            if paths:
                m = torch.from_numpy(np.load(paths[0]).astype(np.float32))[None, None]
                out[j, 0] = (F.interpolate(m, size=(224, 224), mode="area")[0, 0] * 255).round().byte().numpy()
                found += 1
        return out, found

    xtr, ytr = gather(train), np.array([y for _, _, y, _, _ in train], np.float32)
    mtr, masked = lesion_masks(train) if a.cam_weight > 0 else (None, 0)
    if a.cam_weight > 0 and masked == 0:
        raise SystemExit(f"--cam-weight {a.cam_weight}: no training positive has a lesion mask in {a.masks or 'any --masks folder (none given)'}")
    if a.masks and a.cam_weight <= 0:
        print("warning: --masks without --cam-weight: the masks are not used", flush=True)
    xev, yev = gather(held), np.array([y for _, _, y, _, _ in held], np.float32)
    count = lambda items: {g: sum(1 for *_, gg, _ in items if gg == g) for g in sorted({it[3] for it in items})}
    print(f"train {len(train)} ({int(ytr.sum())} positive, {masked} with lesion masks) {count(train)}; held out {len(held)} ({int(yev.sum())} positive) {count(held)}", flush=True)

    model = Net()
    init_sha = load_init(model, a.init) if a.init else None
    if init_sha:
        print(f"features from {a.init} (sha256 {init_sha})", flush=True)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    # The averaged weights (and batch-norm statistics) are what is evaluated and shipped: a
    # from-scratch model on few images swings from epoch to epoch, the average much less.
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(a.ema), use_buffers=True) if a.ema > 0 else None
    final = (lambda: ema.module) if ema is not None else (lambda: model)
    # Cosine decay over the run: nothing about the schedule depends on held-out data.
    steps = a.epochs * max(1, len(train) // a.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=steps + a.epochs, pct_start=0.1, anneal_strategy="cos")
    pos_weight = torch.tensor((len(ytr) - ytr.sum()) / max(1.0, ytr.sum()))
    g = torch.Generator().manual_seed(a.seed)
    history = []
    t0 = time.time()
    for epoch in range(a.epochs):
        model.train()
        order = torch.randperm(len(train), generator=g).numpy()
        total, n, total_att, n_att = 0.0, 0, 0.0, 0
        for s in range(0, len(order), a.batch):
            b = order[s : s + a.batch]
            if len(b) < 2:
                continue  # batch norm needs two
            mb = torch.from_numpy(mtr[b]).float() / 255 if mtr is not None else None
            xb, mb = augment(torch.from_numpy(xtr[b]), g, mb)
            xb = xb.contiguous(memory_format=torch.channels_last)
            yb = torch.from_numpy(ytr[b])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
                logit, cam = model(xb)
            bce = F.binary_cross_entropy_with_logits(logit.float(), yb, pos_weight=pos_weight)
            loss = bce
            if mb is not None:
                att, k = attention_loss(cam, lesion_cells(mb, target=a.cam_target))
                if k:
                    loss = loss + a.cam_weight * att * k / len(b)
                    total_att += att.item() * k
                    n_att += k
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(model)
            total += bce.item() * len(b)
            n += len(b)
        rec = {"epoch": epoch + 1, "train_loss": total / max(n, 1), "lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - t0)}
        if n_att:
            rec["pointing_loss"] = total_att / n_att
        if len(held) and ((epoch + 1) % a.eval_every == 0 or epoch + 1 == a.epochs):
            p = evaluate(final(), xev, np.arange(len(held)))
            acc = float(((p >= 0.5) == (yev == 1)).mean())
            eps = 1e-7
            # Reported only: no choice (schedule, epoch, stopping) is made on held-out data.
            rec.update(val_acc=acc, val_auc=auc(p, yev), val_loss=float(-np.mean(yev * np.log(p + eps) + (1 - yev) * np.log(1 - p + eps))))
        history.append(rec)
        print(json.dumps(rec), flush=True)
        torch.save(final().state_dict(), os.path.join(a.out, "model.pt"))

    summary = {
        "args": vars(a),
        "params": params,
        "train": count(train),
        "train_positive": int(ytr.sum()),
        "held_out": count(held),
        "history": history,
        "seconds": round(time.time() - t0),
        "init_sha256": init_sha,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    if len(held):
        p = evaluate(final(), xev, np.arange(len(held)))
        with open(os.path.join(a.out, "held_out_scores.csv"), "w") as f:
            f.write("file,group,label,prob\n")
            for (k, i, y, grp, file), pp in zip(held, p):
                f.write(f"{file},{grp},{y},{pp:.6f}\n")
    json.dump(summary, open(os.path.join(a.out, "summary.json"), "w"), indent=2)
    print(f"done in {summary['seconds']} s -> {a.out}", flush=True)


if __name__ == "__main__":
    main()
