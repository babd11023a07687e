"""What the PyTorch views of a bundle's ONNX graph share (blockfit.Subgraph, qat.QdqGraph): one
node of the exported DenseNet121 run as PyTorch, so that a graph trained here computes exactly
what OpenVINO and onnxruntime serve."""
import torch
import torch.nn.functional as F


def attrs(node):
    """The node's attributes by name."""
    return {at.name: at for at in node.attribute}


def apply(node, ins):
    """One Concat, Relu, BatchNormalization (inference statistics), MaxPool, AveragePool or Conv
    node on its input tensors; exits naming the node for any other op or an unsupported padding."""
    a, t = attrs(node), node.op_type
    if t == "Concat":
        return torch.cat(ins, dim=a["axis"].i)
    if t == "Relu":
        return F.relu(ins[0])
    if t == "BatchNormalization":
        return F.batch_norm(ins[0], ins[3], ins[4], ins[1], ins[2], training=False, eps=a["epsilon"].f if "epsilon" in a else 1e-5)
    pads = list(a["pads"].ints) if "pads" in a else [0, 0, 0, 0]
    if pads[0] != pads[2] or pads[1] != pads[3]:
        raise SystemExit(f"{node.name}: asymmetric padding")
    if t in ("MaxPool", "AveragePool"):
        if "ceil_mode" in a and a["ceil_mode"].i:
            raise SystemExit(f"{node.name}: unsupported pooling attributes")
        k, st = list(a["kernel_shape"].ints), list(a["strides"].ints)
        if t == "MaxPool":
            return F.max_pool2d(ins[0], k, st, pads[:2])
        return F.avg_pool2d(ins[0], k, st, pads[:2], count_include_pad=bool(a["count_include_pad"].i) if "count_include_pad" in a else False)
    if t == "Conv":
        strides = list(a["strides"].ints) if "strides" in a else [1, 1]
        return F.conv2d(ins[0], ins[1], ins[2] if len(ins) > 2 else None, stride=strides, padding=pads[:2], groups=a["group"].i if "group" in a else 1)
    raise SystemExit(f"{node.name}: {t} is not expected before the head")


def lookup(name, env, names, params, fixed):
    """A node input: a tensor computed so far (`env`), a trained initialiser (`names` maps it to
    its key in `params`), or a fixed one (`fixed`)."""
    if name in env:
        return env[name]
    if name in names:
        return params[names[name]]
    return fixed[name]
