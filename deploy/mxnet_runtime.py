"""Running embedding networks with MXNet for inference: traced symbols, ``SymbolBlock``s, oneDNN fusion."""
import os
import sys
import warnings

import mxnet as mx
import numpy as np

from .devices import all_cpu, as_ctx_list


def mkldnn_available():
    """True when this MXNet build has oneDNN (MKLDNN) operator fusion."""
    try:
        return bool(mx.runtime.Features().is_enabled("MKLDNN"))
    except RuntimeError:
        return False


def prepare_for_inference(net, ctx=None, fuse=True):
    """Hybridize a Gluon block for fast repeated inference and return it.

    ``static_alloc``/``static_shape`` everywhere; on CPU-only contexts also ``backend='MKLDNN'`` (oneDNN
    operator fusion, several times faster) when ``fuse`` and MXNet has oneDNN. The fused graph is for
    inference only (it folds BatchNorm and gives zero gradients): never train a block after this. Blocks
    without ``hybridize`` (an ONNX embedder) are returned unchanged.
    """
    if not hasattr(net, "collect_params"):
        return net
    kwargs = {"static_alloc": True, "static_shape": True}
    if fuse and all_cpu(as_ctx_list(ctx)) and mkldnn_available():
        kwargs["backend"] = "MKLDNN"
    net.hybridize(**kwargs)
    return net


def symbol_block(sym, arg_params, aux_params, backend="MKLDNN"):
    """A hybridized ``SymbolBlock`` over ``sym`` (input ``data``) with the given parameters, on the CPU."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        block = mx.gluon.SymbolBlock(sym, [mx.sym.var("data")])
    for name, param in block.collect_params().items():
        value = arg_params[name] if name in arg_params else aux_params[name]
        param._load_init(value, mx.cpu())
    kwargs = {"static_alloc": True, "static_shape": True}
    if backend:
        kwargs["backend"] = backend
    block.hybridize(**kwargs)
    return block


def run_block(block, images, batch_size=32):
    """Embeddings (N, D) numpy of ``images`` (N, 3, 112, 112) through a Gluon block, in batches."""
    outs = [block(mx.nd.array(images[i:i + batch_size])).asnumpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(outs)


def traced_symbol(net):
    """``(symbol, arg_params, aux_params)`` of a Gluon network as it is (BatchNorm kept), input ``data``."""
    sym = net(mx.sym.var("data"))
    params = {k: p.data() for k, p in net.collect_params().items()}
    aux_names = set(sym.list_auxiliary_states())
    return (sym, {k: v for k, v in params.items() if k not in aux_names},
            {k: v for k, v in params.items() if k in aux_names})


def quiet(fn):
    """Run ``fn`` with the C++ library's stderr lines (MXNet's quantization and graph-pass chatter) silenced."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)
