"""The folded inference graph: a straight-line list of plain operators and its two backends (MXNet, ONNX).

:mod:`deploy.lower` builds a :class:`DeployGraph` from a trained network; :meth:`DeployGraph.to_symbol` and
:meth:`DeployGraph.to_onnx` write it for MXNet and for ONNX runtimes. Both backends map the graph's primitive
operators one to one; the forms a runtime prefers (PReLU as depthwise convolutions, say) are rewrites of the
graph itself (:func:`prelu_as_depthwise`), so both backends run the same graph. :data:`RUNTIME_FORMS` says which
form each runtime's converter fuses into one layer.
"""
import numpy as np

# Operators a graph holds; "prelu" is rewritten into primitives (prelu_as_depthwise) before a backend writes it.
OPS = ("input", "normalize", "conv", "sigmoid", "relu", "mul", "add", "prelu", "gap", "maxpool2", "concat", "slice",
       "flatten")
# Names of the input normalisation's two operators in both backends: InsightFace's tools (ArcFaceONNX) read a
# model whose first nodes are named so as normalising its own input (raw RGB 0–255 in, mean 0 / std 1).
NORMALIZE_NAMES = ("_minusscalar0", "_mulscalar0")
# How PReLU is written to ONNX: "depthwise" (prelu_as_depthwise: ONNX Runtime and oneDNN fuse it into their blocked
# convolutions) or "native" (a PRelu node with slopes (1, C, 1, 1): one PReLU layer in ncnn, MNN and OpenVINO).
PRELU_FORMS = ("depthwise", "native")
# The ONNX form each runtime's converter turns into its fused layers. Swish is always Mul(x, Sigmoid(x)) with x
# first (pnnx fuses only that order into ncnn's Swish; MNN's converter fuses either into its SiLU), the SE block
# always 4-D (GlobalAveragePool, 1x1 Conv, PRelu, 1x1 Conv, Sigmoid, Mul): MNN lowers a Flatten/Gemm form into
# dynamic-shape operators, and ncnn's converter already keeps the pooled vector 1-D through the 1x1 convolutions.
RUNTIME_FORMS = {"onnxruntime": {"prelu": "depthwise"}, "ncnn": {"prelu": "native"}, "mnn": {"prelu": "native"},
                 "openvino": {"prelu": "native"}}


class DeployGraph:
    """A straight-line inference graph: input ``data`` (N, 3, H, W), raw RGB 0–255 → one output.

    ``nodes`` is a list of dicts ``{'name', 'op', 'inputs': [names], 'channels', ...attributes}``; weights
    live in ``params`` (name → float32 array). Build it with :func:`deploy.lower.build_deploy_graph`.
    """

    def __init__(self):
        self.nodes = []
        self.params = {}
        self.output = None
        self._count = 0

    def _add(self, op, inputs, channels, **attrs):
        self._count += 1
        name = f"{op}{self._count}"
        self.nodes.append(dict(name=name, op=op, inputs=list(inputs), channels=int(channels), **attrs))
        return name

    def input(self, channels=3):
        """The graph input ``data``."""
        self.nodes.append(dict(name="data", op="input", inputs=[], channels=channels))
        return "data"

    def normalize(self, x, mean, scale):
        """``(x − mean) · scale`` (the network's own input normalisation)."""
        return self._add("normalize", [x], self.nodes[-1]["channels"], mean=float(mean), scale=float(scale))

    def conv(self, x, weight, bias=None, stride=1, pad=0, groups=1):
        """Convolution, with a bias unless ``bias`` is None; ``weight`` (O, I/groups, kh, kw)."""
        weight = np.ascontiguousarray(weight, dtype=np.float32)
        name = self._add("conv", [x], weight.shape[0], kernel=tuple(weight.shape[2:]), stride=stride, pad=pad,
                         groups=groups, bias=bias is not None)
        self.params[name + "_weight"] = weight
        if bias is not None:
            self.params[name + "_bias"] = np.ascontiguousarray(bias, dtype=np.float32)
        return name

    def swish(self, x, channels):
        """``x * sigmoid(x)``."""
        return self._add("mul", [x, self.sigmoid(x, channels)], channels, same_shape=True)

    def sigmoid(self, x, channels):
        return self._add("sigmoid", [x], channels)

    def mul(self, a, b, channels):
        """Elementwise product; ``b`` may be (N, C, 1, 1) and is broadcast."""
        return self._add("mul", [a, b], channels)

    def add(self, a, b, channels):
        return self._add("add", [a, b], channels)

    def prelu(self, x, alpha):
        name = self._add("prelu", [x], len(alpha))
        self.params[name + "_alpha"] = np.asarray(alpha, dtype=np.float32)
        return name

    def relu(self, x, channels):
        return self._add("relu", [x], channels)

    def gap(self, x, channels):
        """Global average pool → (N, C, 1, 1)."""
        return self._add("gap", [x], channels)

    def maxpool2(self, x, channels):
        """2×2 max pool, stride 2."""
        return self._add("maxpool2", [x], channels)

    def concat(self, xs, channels):
        return self._add("concat", xs, channels)

    def slice(self, x, begin, end):
        """Channels ``begin:end``."""
        return self._add("slice", [x], end - begin, begin=begin, end=end)

    def flatten(self, x, channels):
        return self._add("flatten", [x], channels)

    # ---------------------------------------------------------------- analysis
    def op_counts(self):
        """``{op: count}`` over the graph (the input excluded)."""
        counts = {}
        for node in self.nodes[1:]:
            counts[node["op"]] = counts.get(node["op"], 0) + 1
        return counts

    def madds(self, input_shape=(1, 3, 112, 112)):
        """Multiply-adds of the convolutions as built (zero weights included), at ``input_shape``."""
        sizes = {"data": tuple(input_shape[2:])}
        total = 0
        for node in self.nodes[1:]:
            h, w = sizes[node["inputs"][0]]
            if node["op"] == "conv":
                kh, kw = node["kernel"]
                s, p = node["stride"], node["pad"]
                h, w = (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1
                weight = self.params[node["name"] + "_weight"]
                total += int(np.prod(weight.shape)) * h * w
            elif node["op"] == "maxpool2":
                h, w = h // 2, w // 2
            elif node["op"] == "gap":
                h, w = 1, 1
            sizes[node["name"]] = (h, w)
        return total * input_shape[0]

    # ---------------------------------------------------------------- backends
    def to_symbol(self):
        """MXNet symbol with input ``data`` and its parameters: ``(symbol, arg_params, aux_params)`` like
        ``mx.model.load_checkpoint`` (NDArray dicts; no aux params). PReLU is written as in
        :func:`prelu_as_depthwise`."""
        import mxnet as mx

        graph = prelu_as_depthwise(self)
        sym = {"data": mx.sym.var("data")}
        arg_params = {key: mx.nd.array(value) for key, value in graph.params.items()}
        for node in graph.nodes[1:]:
            name, op = node["name"], node["op"]
            xs = [sym[i] for i in node["inputs"]]
            if op == "normalize":
                with mx.name.NameManager():  # unprefixed: NORMALIZE_NAMES
                    out = (xs[0] - node["mean"]) * node["scale"]
            elif op == "conv":
                bias = mx.sym.var(name + "_bias") if node["bias"] else None
                out = mx.sym.Convolution(xs[0], weight=mx.sym.var(name + "_weight"), bias=bias,
                                         kernel=tuple(node["kernel"]), stride=(node["stride"],) * 2,
                                         pad=(node["pad"],) * 2, num_filter=node["channels"],
                                         num_group=node["groups"], no_bias=not node["bias"], name=name)
            elif op in ("sigmoid", "relu"):
                out = mx.sym.Activation(xs[0], act_type=op, name=name)
            elif op == "mul" and node.get("same_shape"):
                out = mx.sym.elemwise_mul(xs[0], xs[1], name=name)
            elif op == "mul":
                out = mx.sym.broadcast_mul(xs[0], xs[1], name=name)
            elif op == "add":
                out = mx.sym.elemwise_add(xs[0], xs[1], name=name)
            elif op == "gap":
                out = mx.sym.Pooling(xs[0], kernel=(1, 1), global_pool=True, pool_type="avg", name=name)
            elif op == "maxpool2":
                out = mx.sym.Pooling(xs[0], kernel=(2, 2), stride=(2, 2), pool_type="max", name=name)
            elif op == "concat":
                out = mx.sym.concat(*xs, dim=1, name=name)
            elif op == "slice":
                out = mx.sym.slice_axis(xs[0], axis=1, begin=node["begin"], end=node["end"], name=name)
            elif op == "flatten":
                out = mx.sym.flatten(xs[0], name=name)
            else:
                raise ValueError(f"unknown deploy op {op!r}")
            sym[name] = out
        return mx.sym.identity(sym[graph.output], name="embedding"), arg_params, {}

    def to_onnx(self, opset=13, dynamic_batch=True, input_size=(112, 112), prelu="depthwise"):
        """ONNX ModelProto: input ``data`` (N, 3, H, W) float32 RGB 0–255, output ``embedding`` (N, D); N symbolic
        when ``dynamic_batch``. The normalisation comes first, as ``Sub`` and ``Mul`` nodes named
        :data:`NORMALIZE_NAMES`. ``prelu`` (:data:`PRELU_FORMS`): ``depthwise`` writes PReLU as in
        :func:`prelu_as_depthwise`, ``native`` as ``PRelu`` nodes with (1, C, 1, 1) slopes."""
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        if prelu not in PRELU_FORMS:
            raise ValueError(f"prelu form {prelu!r}: valid forms are {', '.join(PRELU_FORMS)}")
        graph = prelu_as_depthwise(self) if prelu == "depthwise" else self
        nodes = []
        inits = [numpy_helper.from_array(value.reshape(1, -1, 1, 1) if key.endswith("_alpha") else value, key)
                 for key, value in graph.params.items()]
        simple = {"sigmoid": "Sigmoid", "relu": "Relu", "mul": "Mul", "add": "Add", "gap": "GlobalAveragePool"}
        for node in graph.nodes[1:]:
            name, op, xs = node["name"], node["op"], list(node["inputs"])
            if op == "normalize":
                for key in ("mean", "scale"):
                    inits.append(numpy_helper.from_array(np.array(node[key], dtype=np.float32), f"{name}_{key}"))
                nodes.append(helper.make_node("Sub", xs + [f"{name}_mean"], [f"{name}_centred"],
                                              name=NORMALIZE_NAMES[0]))
                nodes.append(helper.make_node("Mul", [f"{name}_centred", f"{name}_scale"], [name],
                                              name=NORMALIZE_NAMES[1]))
            elif op == "conv":
                kh, kw = node["kernel"]
                p = node["pad"]
                weights = [name + "_weight"] + ([name + "_bias"] if node["bias"] else [])
                nodes.append(helper.make_node("Conv", xs + weights, [name], kernel_shape=[kh, kw],
                                              strides=[node["stride"]] * 2, pads=[p, p, p, p],
                                              group=node["groups"], name=name))
            elif op in simple:
                nodes.append(helper.make_node(simple[op], xs, [name], name=name))
            elif op == "prelu":
                nodes.append(helper.make_node("PRelu", xs + [name + "_alpha"], [name], name=name))
            elif op == "maxpool2":
                nodes.append(helper.make_node("MaxPool", xs, [name], kernel_shape=[2, 2], strides=[2, 2],
                                              name=name))
            elif op == "concat":
                nodes.append(helper.make_node("Concat", xs, [name], axis=1, name=name))
            elif op == "slice":
                for key, value in (("starts", node["begin"]), ("ends", node["end"]), ("axes", 1)):
                    inits.append(numpy_helper.from_array(np.array([value], dtype=np.int64), f"{name}_{key}"))
                nodes.append(helper.make_node("Slice", xs + [f"{name}_starts", f"{name}_ends", f"{name}_axes"],
                                              [name], name=name))
            elif op == "flatten":
                nodes.append(helper.make_node("Flatten", xs, [name], axis=1, name=name))
            else:
                raise ValueError(f"unknown deploy op {op!r}")
        channels_out = next(node["channels"] for node in graph.nodes if node["name"] == graph.output)
        nodes.append(helper.make_node("Identity", [graph.output], ["embedding"], name="embedding"))
        batch = "N" if dynamic_batch else 1
        onnx_graph = helper.make_graph(
            nodes, "seesawface",
            [helper.make_tensor_value_info("data", TensorProto.FLOAT, [batch, 3, *input_size])],
            [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, channels_out])],
            initializer=inits)
        model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", opset)],
                                  producer_name="seesawface")
        model.ir_version = min(model.ir_version, 8)
        onnx.checker.check_model(model)
        return model


def prelu_as_depthwise(graph):
    """A copy of ``graph`` with each PReLU written as ``x + (1 − a)·relu(−x)``: two 1×1 depthwise convolutions
    (weights −1 and 1 − a), a relu and an add. oneDNN and ONNX Runtime fuse the relu and the add into those
    convolutions and keep their blocked layout, where a PReLU operator runs in plain layout behind two
    layout conversions (MobileFaceNet's folded graph: 2.9 instead of 5.0 ms at batch 1 on ONNX Runtime)."""
    if not any(node["op"] == "prelu" for node in graph.nodes):
        return graph
    out = DeployGraph()
    out.params = {k: v for k, v in graph.params.items() if not k.endswith("_alpha")}
    for node in graph.nodes:
        if node["op"] != "prelu":
            out.nodes.append(dict(node))
            continue
        name, c, x = node["name"], node["channels"], node["inputs"][0]
        alpha = np.asarray(graph.params[name + "_alpha"], np.float32)
        negated = dict(name=name + "_negx", op="conv", inputs=[x], channels=c, kernel=(1, 1), stride=1, pad=0,
                       groups=c, bias=False)
        relu = dict(name=name + "_neg_part", op="relu", inputs=[negated["name"]], channels=c)
        delta = dict(negated, name=name + "_delta", inputs=[relu["name"]])
        out.params[negated["name"] + "_weight"] = np.full((c, 1, 1, 1), -1, np.float32)
        out.params[delta["name"] + "_weight"] = (1 - alpha).reshape(c, 1, 1, 1)
        out.nodes += [negated, relu, delta, dict(name=name, op="add", inputs=[x, delta["name"]], channels=c)]
    out.output = graph.output
    return out
