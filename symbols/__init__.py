"""The network zoo: one registry, name → constructor (docs/architecture.md).

>>> net = get_model('seesaw_shuffle', emb_size=512)
>>> net.initialize(); net(mx.nd.zeros((1, 3, 112, 112))).shape   # (1, 512)
"""
import mxnet as mx

from .mobilefacenet import mobilefacenet
from .seesaw import dw_seesaw_v1, dw_seesaw_v2, seesaw_share, seesaw_shuffle, seesaw_shuffle_mobi

_MODELS = {
    "mobilefacenet": mobilefacenet,
    "seesaw_shuffle": seesaw_shuffle,
    "seesaw_share": seesaw_share,
    "seesaw_shuffle_mobi": seesaw_shuffle_mobi,
    "dw_seesaw_v1": dw_seesaw_v1,
    "dw_seesaw_v2": dw_seesaw_v2,
}


def list_models():
    """Names of every registered network, in registry order."""
    return list(_MODELS)


def get_model(name, emb_size=512, **kwargs):
    """Build network ``name`` (uninitialised). Input (N, 3, 112, 112) raw RGB 0–255 → (N, emb_size).

    Keyword arguments go to the constructor (``act='prelu'|'swish'`` for ``mobilefacenet``).
    Raises ValueError naming the valid networks when ``name`` is unknown.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown network {name!r}; valid networks: {', '.join(_MODELS)}")
    if int(emb_size) <= 0:
        raise ValueError(f"emb_size must be positive, got {emb_size}")
    return _MODELS[name](emb_size=int(emb_size), **kwargs)


def init_model(net, ctx=None):
    """Initialise a network the way the recipe trains it: Xavier (gaussian, out, magnitude 2) on weights;
    BatchNorm, PReLU and biases use their own initialisers."""
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2), ctx=ctx or mx.cpu())
    return net
