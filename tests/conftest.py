"""Test configuration: repository root on sys.path, quiet and deterministic MXNet."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from deploy.process import use_all_cores  # noqa: E402  (before mxnet loads, as the commands do)

# A fixed thread count (as a user's OMP_NUM_THREADS): runs compared bit for bit must not adapt their threads to
# the machine's load (recipes.cpu_share), which changes floating-point reduction orders.
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
use_all_cores()
os.environ.setdefault("MXNET_CUDNN_AUTOTUNE_DEFAULT", "0")

SHARED = os.path.join(os.path.dirname(ROOT), "shared")


@pytest.fixture(autouse=True)
def _keep_engine_choice():
    """recipes.train.choose_engine sets MXNET_ENGINE_TYPE for one-CPU runs; a test that calls train.run must
    not hand that setting to the processes later tests start (distributed workers keep the threaded engine)."""
    before = os.environ.get("MXNET_ENGINE_TYPE")
    yield
    if before is None:
        os.environ.pop("MXNET_ENGINE_TYPE", None)
    else:
        os.environ["MXNET_ENGINE_TYPE"] = before
