"""tools/launch.py: job layout, ssh command construction, and loopback runs of MXNet's dist_sync kvstore.

The loopback runs start a scheduler, one server and two workers running a small Gluon script; they check
that both workers end with identical weights and that no process of the job survives the launcher, also
when a worker is killed mid-run or the launcher is terminated.
"""
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tools import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "tools", "launch.py")

WORKER = r'''
import os, sys, time
import numpy as np
import mxnet as mx
from mxnet import autograd, gluon

kv = mx.kv.create("dist_sync")
print(f"rank {kv.rank} of {kv.num_workers}", flush=True)
mx.random.seed(0)
net = gluon.nn.Dense(4, in_units=8)
net.initialize(mx.init.Xavier())
trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9}, kvstore=kv)
rng = np.random.RandomState(100 + kv.rank)  # every worker sees different data
steps, pause = int(os.environ["STEPS"]), float(os.environ["PAUSE"])
for step in range(steps):
    x, y = mx.nd.array(rng.randn(16, 8)), mx.nd.array(rng.randn(16, 4))
    with autograd.record():
        loss = ((net(x) - y) ** 2).mean()
    loss.backward()
    trainer.step(16 * kv.num_workers)
    time.sleep(pause)
net.save_parameters(os.path.join(os.environ["OUT"], "rank%d.params" % kv.rank))
print("finished", flush=True)
'''


job_processes = launch.job_processes


def wait_for_no_processes(launch_id, seconds=10.0):
    deadline = time.monotonic() + seconds
    while job_processes(launch_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    return job_processes(launch_id)


@pytest.fixture
def worker_script(tmp_path):
    path = tmp_path / "worker.py"
    path.write_text(WORKER)
    return path


def start_launcher(tmp_path, worker_script, launch_id, steps, pause, extra=()):
    env = dict(os.environ, STEPS=str(steps), PAUSE=str(pause), OUT=str(tmp_path), OMP_NUM_THREADS="1")
    argv = [sys.executable, LAUNCH, "-n", "2", "-s", "1", "--timeout", "60", "--env",
            f"{launch.LAUNCH_ID_ENV}={launch_id}", *extra, "--", sys.executable, str(worker_script)]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_until_training(proc, launch_id, seconds=30.0):
    """Block until both workers of the job exist and have joined the kvstore (printed their rank)."""
    lines = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if sum("] rank " in text for text in lines) == 2:
            return lines
    raise AssertionError("workers did not start:\n" + "".join(lines))


# ---------------------------------------------------------------- layout and command construction


def test_plan_nodes_roles_and_environment():
    nodes = launch.plan_nodes(["python", "recipes/train.py", "--kvstore", "dist_sync"], num_workers=3,
                              num_servers=2, hosts=[("h1", None), ("h2", 2222)], port=9000, interface="eth0",
                              extra_env={"OMP_NUM_THREADS": "2"}, launch_id="abc")
    assert [n.label for n in nodes] == ["scheduler", "server 0", "server 1", "worker 0", "worker 1", "worker 2"]
    assert [n.host for n in nodes] == ["h1", "h1", "h2", "h1", "h2", "h1"]
    assert nodes[2].ssh_port == 2222
    for node in nodes:
        assert node.env["DMLC_ROLE"] == node.role
        assert node.env["DMLC_PS_ROOT_URI"] == "h1" and node.env["DMLC_PS_ROOT_PORT"] == "9000"
        assert node.env["DMLC_NUM_SERVER"] == "2" and node.env["DMLC_NUM_WORKER"] == "3"
        assert node.env["DMLC_INTERFACE"] == "eth0" and node.env["OMP_NUM_THREADS"] == "2"
        assert node.env[launch.LAUNCH_ID_ENV] == "abc"
    assert nodes[0].argv == ["python", "-c", "import mxnet"]
    assert nodes[-1].argv == ["python", "recipes/train.py", "--kvstore", "dist_sync"]


def test_plan_nodes_rejects_bad_counts_and_empty_command():
    with pytest.raises(ValueError, match="num-workers"):
        launch.plan_nodes(["python", "x.py"], 0, 1)
    with pytest.raises(ValueError, match="num-servers"):
        launch.plan_nodes(["python", "x.py"], 1, 0)
    with pytest.raises(ValueError, match="no worker command"):
        launch.plan_nodes([], 1, 1)


def test_ssh_command_runs_in_workdir_with_quoted_environment(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    monkeypatch.delenv("PYTHONPATH", raising=False)
    node = launch.plan_nodes(["python", "recipes/train.py", "--prefix", "out dir/model"], 1, 1,
                             hosts=[("gpu-01", 2200)], port=9091, launch_id="id1")[-1]
    argv = launch.ssh_argv(node, "/shared/seesaw face", ssh_options=["-i", "key"])
    assert argv[:2] == ["ssh", "-tt"] and argv[-2] == "gpu-01"
    assert argv[argv.index("-p") + 1] == "2200" and "-i" in argv
    remote = shlex.split(argv[-1])
    assert remote[:4] == ["cd", "/shared/seesaw face", "&&", "exec"]
    assert remote[-4:] == ["python", "recipes/train.py", "--prefix", "out dir/model"]
    assignments = dict(word.split("=", 1) for word in remote[5:-4])
    assert assignments["DMLC_ROLE"] == "worker" and assignments["DMLC_PS_ROOT_URI"] == "gpu-01"
    assert assignments["OMP_NUM_THREADS"] == "4" and assignments[launch.LAUNCH_ID_ENV] == "id1"


def test_parse_hostfile(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("# cluster\nnode1\n\nnode2:2222  # second\n10.0.0.3 slots=8\n")
    assert launch.parse_hostfile(str(path)) == [("node1", None), ("node2", 2222), ("10.0.0.3", None)]
    path.write_text("# nothing\n")
    with pytest.raises(ValueError, match="lists no host"):
        launch.parse_hostfile(str(path))
    with pytest.raises(ValueError, match="does not exist"):
        launch.parse_hostfile(str(tmp_path / "missing"))


def test_dry_run_prints_ssh_commands(tmp_path, capsys):
    hosts = tmp_path / "hosts"
    hosts.write_text("a\nb\n")
    assert launch.main(["-n", "2", "-s", "1", "--launcher", "ssh", "-H", str(hosts), "--workdir", "/w",
                        "--dry-run", "--", "python", "recipes/train.py", "--kvstore", "dist_sync"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("ssh -tt") for line in lines)
    assert "DMLC_ROLE=scheduler" in lines[0] and " a " in lines[0]
    assert "DMLC_ROLE=worker" in lines[3] and " b " in lines[3] and "cd /w" in lines[3]


def test_cli_errors_are_one_line(tmp_path):
    result = subprocess.run([sys.executable, LAUNCH, "-n", "2", "--launcher", "ssh", "--", "python", "x.py"],
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --launcher ssh needs --hostfile (one host per line)"


# ---------------------------------------------------------------- loopback runs


def test_loopback_dist_sync_workers_end_identical(tmp_path, worker_script):
    import mxnet as mx

    launch_id = uuid.uuid4().hex
    proc = start_launcher(tmp_path, worker_script, launch_id, steps=4, pause=0.0)
    output, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, output
    assert "[worker 0]" in output and "[worker 1]" in output and output.count("finished") == 2
    first, second = (mx.nd.load(str(tmp_path / f"rank{r}.params")) for r in (0, 1))
    assert sorted(first) == ["bias", "weight"]
    for name in first:
        assert (first[name] - second[name]).abs().max().asscalar() == 0.0
    # the run trained: the weights moved away from the common Xavier start
    mx.random.seed(0)
    start = mx.gluon.nn.Dense(4, in_units=8)
    start.initialize(mx.init.Xavier())
    assert (first["weight"] - start.weight.data()).abs().max().asscalar() > 1e-3
    assert wait_for_no_processes(launch_id) == []


def test_killed_worker_stops_the_whole_job(tmp_path, worker_script):
    launch_id = uuid.uuid4().hex
    proc = start_launcher(tmp_path, worker_script, launch_id, steps=400, pause=0.05)
    try:
        wait_until_training(proc, launch_id)
        victims = [pid for pid, env in job_processes(launch_id) if b"DMLC_ROLE=worker" in env]
        assert len(victims) == 2
        os.kill(victims[1], signal.SIGKILL)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGKILL, output
    assert "exited with status -9; stopping every process" in output
    assert not (tmp_path / "rank0.params").exists()
    assert wait_for_no_processes(launch_id) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_terminated_launcher_leaves_no_process(tmp_path, worker_script, sig):
    """SIGTERM: the launcher stops every group itself; SIGKILL: the kernel kills its children (PDEATHSIG)."""
    launch_id = uuid.uuid4().hex
    proc = start_launcher(tmp_path, worker_script, launch_id, steps=400, pause=0.05)
    try:
        wait_until_training(proc, launch_id)
        assert len(job_processes(launch_id)) >= 4
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == (128 + sig if sig == signal.SIGTERM else -sig), output
    assert wait_for_no_processes(launch_id) == []


def test_ssh_mode_runs_the_job_through_ssh(tmp_path, worker_script):
    """ssh mode end to end with a stand-in ``ssh`` that runs the remote command here (no real ssh)."""
    import mxnet as mx

    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake_ssh = bindir / "ssh"
    fake_ssh.write_text('#!/bin/bash\n# skip options, then the host; the last argument is the remote command\n'
                        'echo "$@" >> "$SSH_LOG"\nexec bash -c "${@: -1}"\n')
    fake_ssh.chmod(0o755)
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1\n")
    launch_id = uuid.uuid4().hex
    env = dict(os.environ, STEPS="2", PAUSE="0", OUT=str(tmp_path), OMP_NUM_THREADS="1",
               PATH=f"{bindir}:{os.environ['PATH']}", SSH_LOG=str(tmp_path / "ssh.log"))
    result = subprocess.run([sys.executable, LAUNCH, "-n", "2", "-s", "1", "--launcher", "ssh", "-H", str(hosts),
                             "--port", str(launch.free_port()), "--interface", "lo", "--workdir", str(tmp_path),
                             "--timeout", "60", "--env", f"{launch.LAUNCH_ID_ENV}={launch_id}", "--",
                             sys.executable, worker_script.name],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = (tmp_path / "ssh.log").read_text().splitlines()
    assert len(calls) == 4 and all(c.startswith("-tt ") and " 127.0.0.1 cd " in c for c in calls)
    first, second = (mx.nd.load(str(tmp_path / f"rank{r}.params")) for r in (0, 1))
    assert (first["weight"] - second["weight"]).abs().max().asscalar() == 0.0
    assert wait_for_no_processes(launch_id) == []
