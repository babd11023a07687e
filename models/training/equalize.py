"""Per-channel scale migration before int8 quantization (quantize.py --equalize ALPHA).

DenseNet feeds every convolution ReLU(BN(concatenation)) or ReLU(the previous convolution):
channels whose range is a tenth of the largest share one per-tensor int8 activation scale with
it. ReLU is positively homogeneous, so dividing a channel by s > 0 before the ReLU (BN's scale
and bias, or the previous convolution's weights and bias for that output channel) and
multiplying the next convolution's input channel by s computes the same function in float
(mathematically; up to rounding in practice), while the activation quantizer sees evened-out channels and the weight quantizer (per
output channel) sees the scale moved into the weights. As in SmoothQuant,
s_c = r_c^alpha / w_c^(1 - alpha), with r_c the channel's largest value over the calibration
rows and w_c the largest |weight| reading it. NNCF's own SmoothQuant and channel alignment leave
this ONNX graph unchanged (models/README.md, "int8").

The factors are set from the calibration rows: a channel that is far larger on new images than
on every calibration row now shares a range sized for its calibration maximum and is clipped by
the activation quantizer, where before it sat inside the tensor's wider range. The appliance's
parity run (slices outside the calibration set among them) is the check.
"""
import numpy as np
import onnx
from onnx import numpy_helper


def _users(graph):
    """Input name -> the nodes that read it."""
    users = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    return users


def _group(node):
    """A Conv node's `group` attribute (1 when absent)."""
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def pairs(model):
    """(producer, relu, conv) for every ungrouped convolution fed by a ReLU of a
    BatchNormalization or of a convolution with a bias, where the two tensors between them (the
    producer's output, the ReLU's) have one reader each and are not graph outputs."""
    g = model.graph
    users = _users(g)
    outputs = {o.name for o in g.output}
    made_by = {o: n for n in g.node for o in n.output}
    found = []
    for conv in g.node:
        if conv.op_type != "Conv":
            continue
        relu = made_by.get(conv.input[0])
        if relu is None or relu.op_type != "Relu" or _group(conv) != 1:
            continue
        prev = made_by.get(relu.input[0])
        if prev is None or not (prev.op_type == "BatchNormalization" or (prev.op_type == "Conv" and _group(prev) == 1 and len(prev.input) > 2 and prev.input[2])):
            continue
        single = all(len(users.get(t, [])) == 1 and t not in outputs for t in (prev.output[0], relu.output[0]))
        if single:
            found.append((prev, relu, conv))
    return found


def channel_max(model, relus, rows, batch=8):
    """The largest value of each channel of each ReLU output in `relus` over `rows` (arrays of
    shape [1, 3, H, W]), run by onnxruntime in f32."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for r in relus:
        m.graph.output.append(onnx.helper.make_tensor_value_info(r, onnx.TensorProto.FLOAT, None))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    best = None
    for i in range(0, len(rows), batch):
        x = np.concatenate(rows[i:i + batch])
        cur = [o.max(axis=(0, 2, 3)) for o in s.run(relus, {name: x})]
        best = cur if best is None else [np.maximum(a, b) for a, b in zip(best, cur)]
    return dict(zip(relus, best))


def equalize(model, rows, alpha, clip=1e3):
    """A copy of `model` with the scales migrated (see the module's text), and a summary: how
    many convolutions, and the spread of the factors."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    init = {t.name: t for t in out.graph.initializer}
    users = _users(out.graph)
    found = pairs(out)
    ranges = channel_max(out, [r.output[0] for _, r, _ in found], rows)
    # Every convolution's largest |weight| per input channel from the weights as they are before
    # any edit (a convolution can be both a reader and a producer), so that the order of the
    # pairs does not matter.
    w_max = {c.input[1]: np.abs(numpy_helper.to_array(init[c.input[1]])).max(axis=(0, 2, 3)).astype(np.float64) for _, _, c in found if c.input[1] in init}
    factors = []

    def arr(name):
        if name not in init or len(users.get(name, [])) != 1:
            raise SystemExit(f"{name}: not an initialiser read by one node only")
        return numpy_helper.to_array(init[name]).astype(np.float32)

    def put(name, a):
        init[name].CopyFrom(numpy_helper.from_array(a.astype(np.float32), name))

    for prev, relu, conv in found:
        w = arr(conv.input[1])
        r = ranges[relu.output[0]].astype(np.float64)
        wc = w_max[conv.input[1]]
        s = np.ones_like(r)
        ok = (r > 0) & (wc > 0)
        s[ok] = r[ok] ** alpha / wc[ok] ** (1 - alpha)
        s = np.clip(s, 1 / clip, clip)
        put(conv.input[1], w * s[None, :, None, None])
        if prev.op_type == "BatchNormalization":
            for k in (1, 2):  # scale, bias
                put(prev.input[k], arr(prev.input[k]) / s)
        else:
            put(prev.input[1], arr(prev.input[1]) / s[:, None, None, None])
            put(prev.input[2], arr(prev.input[2]) / s)
        factors.append(s)
    allf = np.concatenate(factors) if factors else np.ones(1)
    return out, {"convolutions": len(found), "factor_p5": float(np.percentile(allf, 5)), "factor_p95": float(np.percentile(allf, 95))}
