"""recipes/train.py --horovod: wiring checked against a stand-in ``horovod.mxnet`` (one process, size 1).

Horovod itself is not installed here (it builds only with ``--no-build-isolation`` after MXNet); the
stand-in records what the training script asks of it: init, parameter broadcast from rank 0, the
DistributedTrainer, and the allreduce of the sharded fc7's gradients and sampled rows.
"""
import sys
import textwrap

import pytest

from recipes import config

FAKE = textwrap.dedent('''
    import mxnet as mx
    calls = []
    def init(): calls.append("init")
    def rank(): return 0
    def size(): return 1
    def local_rank(): return 0
    def broadcast_parameters(params, root_rank=0):
        calls.append(("broadcast", root_rank, len(params)))
    def allreduce_(tensor, average=True, name=None):
        calls.append(("allreduce", name, average))
        return tensor
    class DistributedTrainer(mx.gluon.Trainer):
        def __init__(self, params, optimizer, optimizer_params=None):
            super().__init__(params, optimizer, optimizer_params, kvstore=None)
            self._scale /= size()
            calls.append("trainer")
''')


def test_horovod_path_wiring_with_a_stand_in(tmp_path, monkeypatch):
    package = tmp_path / "fake" / "horovod"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "mxnet.py").write_text(FAKE)
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))
    for name in ("horovod", "horovod.mxnet"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    from datasets import synthetic
    from recipes import train
    data = tmp_path / "data"
    synthetic.generate_dataset(str(data), num_identities=4, images_per_identity=2, pairs_per_set=20,
                               eval_identities=4, workers=1, sets=())
    train.run({"data_dir": str(data), "network": "mobilefacenet", "emb_size": 16, "num_workers": 0,
               "hybridize": "none", "plot": False, "output_dir": str(tmp_path / "run"), "horovod": True,
               "fc7_parallel": True, "sample_rate": 0.5, "batch_size": 4, "num_epochs": 1})
    import horovod.mxnet as hvd
    assert hvd.calls[:2] == ["init", "trainer"]
    broadcasts = [c for c in hvd.calls if isinstance(c, tuple) and c[0] == "broadcast"]
    assert len(broadcasts) == 1 and broadcasts[0][1] == 0 and broadcasts[0][2] > 10
    reduced = [c for c in hvd.calls if isinstance(c, tuple) and c[0] == "allreduce"]
    assert reduced[:2] == [("allreduce", "fc7_grad_0", False), ("allreduce", "fc7_mask_0", False)]
    assert len(reduced) == 2 * 2  # two steps (8 images, batch 4), one shard
    monkeypatch.delitem(sys.modules, "horovod.mxnet")
    monkeypatch.delitem(sys.modules, "horovod")


def test_missing_horovod_error_says_how_to_install(monkeypatch):
    from recipes import distributed
    monkeypatch.setitem(sys.modules, "horovod", None)
    with pytest.raises(RuntimeError, match="--no-build-isolation"):
        distributed._horovod()
    assert "horovod" in config.OPTIONS
