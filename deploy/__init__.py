"""The inference layer that evaluation, training and the commands stand on.

``checkpoint`` (read and write embedding checkpoints), ``lower`` + ``graph`` (the folded inference graph),
``export`` / ``int8`` (deployment artefacts, each checked against its source), ``onnx_runtime`` /
``mxnet_runtime`` (running models), ``embedders`` (which runtime embeds, with a parity check),
``devices`` and ``process`` (contexts, threads, command-line errors).
"""
