"""Test configuration: repository root on sys.path, quiet and deterministic MXNet."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")
os.environ.setdefault("MXNET_CUDNN_AUTOTUNE_DEFAULT", "0")

SHARED = os.path.join(os.path.dirname(ROOT), "shared")
