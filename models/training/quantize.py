#!/usr/bin/env python3
"""An int8 variant of a model bundle (NNCF post-training quantization, ONNX in, ONNX QDQ out)
and its parity against f32, both run by OpenVINO's CPU plugin as the appliance runs them.

    pip install nncf openvino onnx onnxruntime
    python3 models/training/quantize.py --onnx models/densenet121-covid.onnx \
        --prep /tmp/prep/ct --prep /tmp/prep/lpd ... --out /tmp/int8

- Calibration: `--calib` rows (300) drawn evenly from every prep folder given (real preprocessed
  slices of every source, lung fraction >= 0.02: the slices the appliance scores), seed 0.
- Quantized: every convolution (int8 weights per channel, int8 activations). Kept in the
  engine's float precision: the linear head (Gemm) and the class activation map (Einsum), so
  that the probability's last step and the heat map are not quantized; `--quantize-head` drops
  that exception (an ablation).
- With `--equalize ALPHA`, each convolution's input channels are evened out first
  (equalize.py: a per-channel factor moved from the BN or previous convolution into the
  weights, the same function in float, checked within 1e-4), so that channels of very different
  ranges share one activation scale better (3.1.3's and 3.1.4's variants: ALPHA 1.0).
- With `--head-shift`, the mean logit difference (int8 - f32) over the calibration rows is taken
  out of the int8 graph's float head bias (with `--parity-of`, of that graph, written to
  `--out`; the calibration rows are the quantization's only with the same `--prep` order,
  `--calib`, `--seed` and `--min-lung`, which nothing checks; round 10 in models/README.md:
  tried, not shipped).
- With `--accuracy-control`, NNCF's `quantize_with_accuracy_control` reverts the layers that
  move the probability most until the validation rows' largest |dprob| is within `--max-drop`
  (0.02).
- Parity, written to `parity.json` and printed: every row of every prep folder through OpenVINO
  f32 and through the int8 graph (int8 convolutions, the rest f32; and with `--bf16`, the rest
  bf16 as on a CPU with AVX512-BF16): max and 99th percentile |dprob|, the AUC of each labelled
  folder and its change, the map's correlation, the number of slices whose decision at
  `--threshold` flips.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from folds import auc, load_prep  # noqa: E402


def rows_of(preps, min_lung, odd=False):
    """(folder, tensors, index rows) of each prep folder, keeping rows the appliance scores
    (with `odd`, only those with an odd index: the rows qat.py never trains on)."""
    out = []
    for p in preps:
        x, rows, _ = load_prep(p)
        keep = [i for i, r in enumerate(rows) if float(r.get("lung_fraction", 1)) >= min_lung and (i % 2 == 1 or not odd)]
        out.append((p, x, rows, keep))
    return out


def calibration(folders, n, seed):
    """`n` rows drawn evenly over the folders (each folder n / folders rows, without repeats)."""
    rng = np.random.default_rng(seed)
    per = max(1, n // len(folders))
    picks = []
    for _, x, _, keep in folders:
        take = rng.choice(keep, size=min(per, len(keep)), replace=False)
        picks.extend({"input": np.asarray(x[i], np.float32)[None]} for i in sorted(take))
    return picks


def compiled(core, path, precision):
    hint = {"f32": "f32", "bf16": "bf16"}[precision]
    return core.compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "THROUGHPUT"})


def run(cm, x, keep, batch=8):
    probs, cams = [], []
    req = cm.create_infer_request()
    for s in range(0, len(keep), batch):
        idx = keep[s : s + batch]
        r = req.infer({0: np.stack([np.asarray(x[i], np.float32) for i in idx])})
        probs.append(np.asarray(r[cm.output("prob")]).reshape(-1))
        cams.append(np.asarray(r[cm.output("cam")]).reshape(len(idx), -1))
    return np.concatenate(probs), np.concatenate(cams)


def head_shift(f32_path, int8_path, rows, bias="net.backbone.classifier.bias"):
    """The int8 graph at `int8_path` with its float head's bias lowered by the mean logit
    difference (int8 - f32, OpenVINO, the rest f32) over `rows` (its calibration rows), and that
    mean: a shift as a whole moves every probability, a correction measured on the calibration
    rows takes it out."""
    import onnx
    import openvino as ov
    from onnx import numpy_helper

    core = ov.Core()
    logit = lambda p: np.log(np.clip(p, 1e-7, 1 - 1e-7) / np.clip(1 - p, 1e-7, 1))
    x = np.concatenate([r["input"] for r in rows])
    keep = list(range(len(x)))
    p32, _ = run(compiled(core, f32_path, "f32"), x, keep)
    p8, _ = run(compiled(core, int8_path, "f32"), x, keep)
    shift = float(np.mean(logit(p8.astype(np.float64)) - logit(p32.astype(np.float64))))
    m = onnx.load(int8_path)
    init = next((t for t in m.graph.initializer if t.name == bias), None)
    if init is None:
        raise SystemExit(f"{int8_path}: no initialiser {bias} (the float head's bias)")
    init.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(init) - shift).astype(np.float32), bias))
    return m, shift


def reproduction(path, model, rows):
    """The largest difference in probability or class activation map between the graph at
    `path` and `model` on `rows`, both in onnxruntime f32."""
    import onnxruntime as ort

    runs = [ort.InferenceSession(m, providers=["CPUExecutionProvider"]) for m in (path, model.SerializeToString())]
    worst = 0.0
    for x in rows:
        p = [s.run(["prob", "cam"], {s.get_inputs()[0].name: x}) for s in runs]
        worst = max(worst, float(np.abs(p[0][0] - p[1][0]).max()), float(np.abs(p[0][1] - p[1][1]).max()))
    return worst


def advanced(a):
    """NNCF's advanced parameters for the range, SmoothQuant, channel-alignment and overflow-fix options (None:
    NNCF's defaults, as the shipped variant was made)."""
    if a.activations_range is None and a.smooth_quant_conv is None and not a.channel_alignment and a.overflow_fix is None:
        return None
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    kw = {"disable_channel_alignment": not a.channel_alignment}
    if a.activations_range:
        kw["activations_range_estimator_params"] = getattr(RangeEstimatorParametersSet, a.activations_range)
    if a.overflow_fix is not None:
        from nncf.quantization.advanced_parameters import OverflowFix

        kw["overflow_fix"] = OverflowFix(a.overflow_fix)
    if a.smooth_quant_conv is not None:
        kw["smooth_quant_alphas"] = AdvancedSmoothQuantParameters(convolution=a.smooth_quant_conv)
    return AdvancedQuantizationParameters(**kw)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--prep", action="append", required=True)
    ap.add_argument("--calib", type=int, default=300)
    ap.add_argument("--min-lung", type=float, default=0.02)
    ap.add_argument("--quantize-head", action="store_true")
    ap.add_argument("--keep-float", action="append", default=[], help="a regular expression of node names kept in float (repeatable), e.g. '/net/features/denseblock4/.*'")
    ap.add_argument("--accuracy-control", action="store_true")
    ap.add_argument("--parity-of", help="measure the parity of this int8 graph (e.g. qat.py's) instead of quantizing")
    ap.add_argument("--odd-rows", action="store_true", help="parity on the rows with an odd index only (qat.py trains on the even ones)")
    ap.add_argument("--openvino-backend", action="store_true", help="quantize the OpenVINO model (IR out) instead of the ONNX graph (QDQ ONNX out)")
    ap.add_argument("--full-bias-correction", action="store_true", help="NNCF's bias correction on every layer's statistics (slower) instead of the fast one")
    ap.add_argument("--activations-range", default=None, help="NNCF's activation range estimator (RangeEstimatorParametersSet: MINMAX, MEAN_MINMAX, HISTOGRAM, MEAN_QUANTILE, ...); default NNCF's")
    ap.add_argument("--smooth-quant-conv", type=float, default=None, help="SmoothQuant on convolutions with this alpha (NNCF's default: off)")
    ap.add_argument("--channel-alignment", action="store_true", help="NNCF's channel alignment (off by default)")
    ap.add_argument("--overflow-fix", choices=["enable", "first_layer_only", "disable"], default=None,
                    help="NNCF's overflow fix (7-bit weights for CPUs without VNNI; its default: the first layer only)")
    ap.add_argument("--equalize", type=float, default=None, metavar="ALPHA",
                    help="migrate per-channel scales into the convolutions first (equalize.py; SmoothQuant's alpha), checked to reproduce f32's probability and map within 1e-4")
    ap.add_argument("--head-shift", action="store_true",
                    help="take the mean logit difference on the calibration rows out of the int8 graph's float head bias (with --parity-of: of that graph, written to --out)")
    ap.add_argument("--max-drop", type=float, default=0.02)
    ap.add_argument("--ranking-rows", type=int, default=100, help="rows NNCF ranks the layers on (accuracy control)")
    ap.add_argument("--threshold", type=float, default=0.194528)
    ap.add_argument("--bf16", action="store_true", help="also measure int8 with the rest in bf16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.equalize is not None and (a.parity_of or a.openvino_backend):
        ap.error("--equalize edits the ONNX graph NNCF quantizes: not with --parity-of or --openvino-backend")
    if a.head_shift and a.openvino_backend:
        ap.error("--head-shift edits the ONNX graph: not with --openvino-backend")
    name = os.path.splitext(os.path.basename(a.onnx))[0]
    if a.head_shift and a.parity_of and os.path.realpath(os.path.join(a.out, name + ".int8.onnx")) == os.path.realpath(a.parity_of):
        ap.error("--head-shift with --parity-of writes OUT/NAME.int8.onnx: give an --out other than the graph's own folder")
    import nncf
    import onnx
    import openvino as ov

    os.makedirs(a.out, exist_ok=True)
    model = onnx.load(a.onnx)
    folders = rows_of(a.prep, a.min_lung, a.odd_rows)
    calib = calibration(folders, a.calib, a.seed)
    equalized = None
    if a.equalize is not None:
        from equalize import equalize

        model, equalized = equalize(model, [c["input"] for c in calib], a.equalize)
        equalized["reproduction_max_diff"] = reproduction(a.onnx, model, [c["input"] for c in calib[::4]])
        print("equalize:", json.dumps(equalized), flush=True)
        if equalized["reproduction_max_diff"] > 1e-4:
            raise SystemExit(f"the equalised graph does not reproduce {a.onnx} (largest difference {equalized['reproduction_max_diff']:.2e} > 1e-4)")
    ignored = nncf.IgnoredScope(types=[] if a.quantize_head else ["Gemm", "Einsum"], patterns=a.keep_float, validate=False)
    t0 = time.time()
    if a.parity_of:
        q = None
    elif a.accuracy_control:
        from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

        core = ov.Core()
        val = calibration(folders, a.calib, a.seed + 1)
        ref_cm = core.compile_model(a.onnx, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        ref = [np.asarray(ref_cm(v)[ref_cm.output("prob")]).reshape(-1) for v in val]

        ref_of = {id(v): r for v, r in zip(val, ref)}
        last = {}

        def validate(m, data):
            # NNCF calls this once per row while it ranks layers: compile each model once.
            if last.get("model") is not m:
                with tempfile.TemporaryDirectory() as d:
                    p = os.path.join(d, "m.onnx")
                    onnx.save(m, p)
                    last.update(model=m, cm=core.compile_model(p, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}))
            cm = last["cm"]
            # 1 - the largest |dprob|: the f32 graph scores 1, and an absolute drop is the |dprob|.
            return 1.0 - float(max(np.abs(np.asarray(cm(v)[cm.output("prob")]).reshape(-1) - ref_of[id(v)]).max() for v in data))

        q = nncf.quantize_with_accuracy_control(
            model, nncf.Dataset(calib), nncf.Dataset(val), validate, max_drop=a.max_drop, drop_type=nncf.DropType.ABSOLUTE,
            subset_size=len(calib), ignored_scope=ignored, fast_bias_correction=not a.full_bias_correction,
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(ranking_subset_size=a.ranking_rows))
    elif a.openvino_backend:
        ovm = ov.Core().read_model(a.onnx)
        q = nncf.quantize(ovm, nncf.Dataset([c["input"] for c in calib]), subset_size=len(calib), ignored_scope=ignored,
                          fast_bias_correction=not a.full_bias_correction)
    else:
        q = nncf.quantize(model, nncf.Dataset(calib), subset_size=len(calib), ignored_scope=ignored, fast_bias_correction=not a.full_bias_correction,
                          advanced_parameters=advanced(a))
    quant_s = time.time() - t0
    if a.parity_of:
        out_path = a.parity_of
    elif a.openvino_backend:
        out_path = os.path.join(a.out, name + ".int8.xml")
        ov.save_model(q, out_path, compress_to_fp16=False)
    else:
        out_path = os.path.join(a.out, name + ".int8.onnx")
        onnx.save(q, out_path)
    shift = None
    if a.head_shift:
        corrected, shift = head_shift(a.onnx, out_path, calib)
        out_path = os.path.join(a.out, name + ".int8.onnx")
        onnx.save(corrected, out_path)
        print(f"head shift: mean logit difference {shift:+.5f} on {len(calib)} calibration rows, taken out of the head's bias", flush=True)

    core = ov.Core()
    variants = {"f32": compiled(core, a.onnx, "f32"), "int8": compiled(core, out_path, "f32")}
    if a.bf16:
        variants["bf16"] = compiled(core, a.onnx, "bf16")
        variants["int8+bf16"] = compiled(core, out_path, "bf16")
    report = {"onnx": a.onnx, "int8": out_path, "calibration_rows": len(calib), "quantize_seconds": round(quant_s, 1),
              "equalize": a.equalize, "equalized": equalized, "head_shift": shift, "head_shift_of": a.parity_of if shift is not None else None, "quantize_head": a.quantize_head, "keep_float": a.keep_float, "accuracy_control": a.accuracy_control, "folders": {}}
    worst = {}
    for p, x, rows, keep in folders:
        res = {k: run(cm, x, keep) for k, cm in variants.items()}
        p32, c32 = res["f32"]
        labels = np.array([rows[i].get("label", "") for i in keep])
        f = {"rows": len(keep)}
        for k, (pv, cv) in res.items():
            if k == "f32":
                continue
            d = np.abs(pv - p32)
            cc = [np.corrcoef(cv[i], c32[i])[0, 1] if c32[i].std() > 1e-6 else 1.0 for i in range(len(keep))]
            flips = int(((pv >= a.threshold) != (p32 >= a.threshold)).sum())
            f[k] = {"max_dprob": float(d.max()), "p99_dprob": float(np.percentile(d, 99)), "cam_corr_min": float(np.min(cc)), "flips": flips}
            worst[k] = max(worst.get(k, 0.0), float(d.max()))
            if set(labels) >= {"0", "1"}:
                pos, neg = labels == "1", labels == "0"
                f[k]["auc"] = auc(pv[pos], pv[neg])
                f["auc_f32"] = auc(p32[pos], p32[neg])
        report["folders"][p] = f
        print(os.path.basename(p), json.dumps(f), flush=True)
    report["max_dprob"] = worst
    json.dump(report, open(os.path.join(a.out, "parity.json"), "w"), indent=2)
    print(json.dumps({"quantize_seconds": report["quantize_seconds"], "max_dprob": worst}))


if __name__ == "__main__":
    main()
