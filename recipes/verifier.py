"""Per-epoch verification of the live network on the ``.bin`` sets (the published protocol, :mod:`eval`).

The training graph is left alone: at each evaluation :class:`deploy.embedders.BackendPolicy` lowers the live
parameters to the folded graph run by ONNX Runtime (checked against an imperative copy of the network when the
graph is new), or copies them into a oneDNN-fused MXNet instance of the network.
"""
import logging

import mxnet as mx
from mxnet import autograd

import datasets
from deploy.embedders import BackendPolicy
from deploy.mxnet_runtime import prepare_for_inference
from eval.sets import verify_sets

from .loop import LOGGER_NAME
from .setup import build_backbone


class Verifier:
    """``verifier(backbone)`` → ``{set name: result}`` of :func:`eval.sets.verify_sets` with the backbone's current
    parameters. ``build_network()`` makes a fresh standard instance of the trained network for the MXNet copies
    (default: :func:`recipes.setup.build_backbone` of ``cfg``). ``backend`` and ``last`` are those of its :class:`deploy.embedders.BackendPolicy`."""

    PROBE_IMAGES = 4

    def __init__(self, cfg, sets, context, build_network=None, logger=None):
        self.cfg, self.sets, self.context = cfg, sets, context
        self.build_network = build_network or (lambda: build_backbone(cfg))
        self.logger = logger or logging.getLogger(LOGGER_NAME)
        self.policy = BackendPolicy(cfg.get("eval_backend", "auto"), [context], warn=self.logger.warning,
                                    spinning=False)
        self.net = None        # oneDNN-fused MXNet copy (mxnet backend)
        self.reference = None  # imperative CPU copy (the onnxruntime parity check)

    @property
    def backend(self):
        return self.policy.backend

    @property
    def last(self):
        return self.policy.last

    @property
    def checked_graph(self):
        return self.policy.checked_graph

    def _copy_params(self, backbone, net):
        source = backbone._collect_params_with_prefix()
        target = net._collect_params_with_prefix()
        for name, param in source.items():
            target[name].set_data(param.data(self.context))

    def _fused_copy(self, backbone):
        if self.net is None:
            self.net = self.build_network()
            self.net.initialize(ctx=self.context)
            prepare_for_inference(self.net, [self.context])
        self._copy_params(backbone, self.net)
        return self.net

    def _reference(self, backbone, images):
        if self.reference is None:
            self.reference = self.build_network()
            self.reference.initialize(ctx=mx.cpu())
        self._copy_params(backbone, self.reference)
        with autograd.predict_mode():
            return self.reference(mx.nd.array(images, ctx=mx.cpu())).asnumpy()

    def embedder(self, backbone):
        """What embeds with the backbone's current parameters (an ``OnnxEmbedder`` or the fused MXNet copy)."""
        probe = datasets.to_input(next(iter(self.sets.values()))[0][:self.PROBE_IMAGES])
        return self.policy.embedder(lambda: backbone, lambda x: self._reference(backbone, x),
                                    lambda: self._fused_copy(backbone), probe,
                                    what=f"verification of {self.cfg['network']}")

    def __call__(self, backbone):
        return verify_sets(self.embedder(backbone), self.sets, ctx=[self.context],
                           batch_size=self.cfg["eval_batch_size"], flip=self.cfg["eval_flip"])
