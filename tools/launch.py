"""Start an MXNet parameter-server job: one scheduler, servers and workers, each with its DMLC_* environment.

    # one machine, loopback (testing): 1 scheduler + 1 server + 2 workers
    python tools/launch.py -n 2 -s 1 -- python recipes/train.py --kvstore dist_sync --network mobilefacenet ...

    # several machines over ssh: scheduler on the first host, servers and workers spread round-robin
    python tools/launch.py -n 4 -s 2 --launcher ssh -H hosts.txt --workdir /shared/seesawface \\
        --interface eth0 -- python recipes/train.py --kvstore dist_device_sync --gpus 0,1,2,3 ...

The worker command is the single-machine training command with ``--kvstore dist_sync`` (CPU) or
``dist_device_sync`` (GPU). Scheduler and servers run ``python -c "import mxnet"``: with ``DMLC_ROLE`` set to
``scheduler`` or ``server``, importing MXNet starts that node and blocks until the job ends.

Supervision: every process starts in its own session (process group) and is killed by the kernel if the
launcher itself dies, even by SIGKILL (PR_SET_PDEATHSIG, Linux). When any process fails, when a
scheduler or server dies before the workers are done, on ``--timeout``, or when the launcher receives
SIGINT/SIGTERM/SIGHUP, every process group is sent SIGTERM and then SIGKILL, so nothing is left behind. When
all workers succeed, scheduler and servers get ``--shutdown-grace`` seconds to exit on their own, then they
are stopped too. Every line a process prints is prefixed with its launch label (``[worker 1]``); the kvstore
rank MXNet assigns can differ from the launch index, and the training script logs its own rank.

ssh mode runs ``ssh -tt host 'cd WORKDIR && env DMLC_...=... COMMAND'``: the code and data must be at the same
path on every host (shared file system or a copy). ``-tt`` ties the remote processes to the ssh connection,
so stopping the local ssh client hangs them up on the remote side.

Exit status: 0 when every worker succeeded; the first failing process's status otherwise (128+signal when
it was killed); 124 on ``--timeout``; 130/143 when the launcher itself was interrupted/terminated.
"""
import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deploy.process import run_cli  # noqa: E402

SERVER_CODE = "import mxnet"
LAUNCH_ID_ENV = "SEESAW_LAUNCH_ID"
DEFAULT_PORT = 9091
EXIT_TIMEOUT = 124
# Variables forwarded to remote hosts in ssh mode (besides DMLC_* and --env): thread and kvstore tuning.
FORWARD_PREFIXES = ("MXNET_", "OMP_", "PS_", "NCCL_", "CUDA_VISIBLE_DEVICES", "PYTHONPATH")


@dataclass
class Node:
    """One process of the job: its role, launch index, host and full environment additions."""

    role: str
    index: int
    host: str
    argv: list
    env: dict = field(default_factory=dict)
    ssh_port: int = None

    @property
    def label(self):
        return "scheduler" if self.role == "scheduler" else f"{self.role} {self.index}"


def parse_hostfile(path):
    """Read a host list: one ``host`` or ``host:sshport`` per line; blank lines and ``#`` comments skipped.

    Returns ``[(host, ssh_port or None), ...]``; raises ValueError naming the file when it holds no host.
    """
    if not os.path.isfile(path):
        raise ValueError(f"host file {path!r} does not exist")
    hosts = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            host, port = text.split()[0], None
            if host.count(":") == 1:
                host, port_text = host.split(":")
                if not port_text.isdigit():
                    raise ValueError(f"{path}:{number}: ssh port {port_text!r} is not a number")
                port = int(port_text)
            hosts.append((host, port))
    if not hosts:
        raise ValueError(f"host file {path!r} lists no host")
    return hosts


def job_processes(launch_id):
    """Live processes on this machine whose environment carries ``SEESAW_LAUNCH_ID=launch_id``.

    Returns ``[(pid, environ_entries), ...]`` (zombies excluded); children inherit the variable, so this
    finds DataLoader workers too. Linux only (reads /proc).
    """
    marker = f"{LAUNCH_ID_ENV}={launch_id}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as handle:
                env = handle.read().split(b"\0")
            with open(f"/proc/{name}/stat", "rb") as handle:
                state = handle.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in env and state != b"Z":
            found.append((int(name), env))
    return found


def free_port(host="127.0.0.1"):
    """A TCP port that is free on ``host`` right now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def server_python(command, python=None):
    """The interpreter that runs scheduler and servers: ``python`` if given, else the worker command's own
    interpreter when it is a python, else this launcher's."""
    if python:
        return python
    if command and os.path.basename(command[0]).startswith("python"):
        return command[0]
    return sys.executable


def plan_nodes(command, num_workers, num_servers, hosts=None, port=DEFAULT_PORT, root_uri=None, interface=None,
               python=None, extra_env=None, launch_id=None):
    """Lay out the job: the scheduler, ``num_servers`` servers and ``num_workers`` workers.

    ``hosts`` is ``[(host, ssh_port), ...]`` (None: every node on 127.0.0.1). The scheduler runs on the
    first host; servers and workers are spread round-robin. Every node gets DMLC_ROLE, DMLC_PS_ROOT_URI,
    DMLC_PS_ROOT_PORT, DMLC_NUM_SERVER, DMLC_NUM_WORKER (and DMLC_INTERFACE when given), the ``extra_env``
    additions, and ``SEESAW_LAUNCH_ID`` marking every process of this job.
    """
    if num_workers < 1:
        raise ValueError(f"--num-workers must be at least 1, got {num_workers}")
    if num_servers < 1:
        raise ValueError(f"--num-servers must be at least 1, got {num_servers}")
    if not command:
        raise ValueError("no worker command given: put it after '--', e.g. "
                         "'-- python recipes/train.py --kvstore dist_sync ...'")
    hosts = hosts or [("127.0.0.1", None)]
    root_uri = root_uri or hosts[0][0]
    base = {
        "DMLC_PS_ROOT_URI": root_uri,
        "DMLC_PS_ROOT_PORT": str(port),
        "DMLC_NUM_SERVER": str(num_servers),
        "DMLC_NUM_WORKER": str(num_workers),
        LAUNCH_ID_ENV: launch_id or uuid.uuid4().hex,
    }
    if interface:
        base["DMLC_INTERFACE"] = interface
    base.update(extra_env or {})
    server_argv = [server_python(command, python), "-c", SERVER_CODE]
    nodes = [Node("scheduler", 0, hosts[0][0], server_argv, dict(base, DMLC_ROLE="scheduler"), hosts[0][1])]
    for i in range(num_servers):
        host, ssh_port = hosts[i % len(hosts)]
        nodes.append(Node("server", i, host, server_argv, dict(base, DMLC_ROLE="server"), ssh_port))
    for i in range(num_workers):
        host, ssh_port = hosts[i % len(hosts)]
        env = dict(base, DMLC_ROLE="worker", SEESAW_LAUNCH_INDEX=str(i))
        nodes.append(Node("worker", i, host, list(command), env, ssh_port))
    return nodes


def ssh_argv(node, workdir, ssh_options=()):
    """The local argv that runs ``node`` on its host: ``ssh -tt [opts] [-p port] host 'cd DIR && env ... CMD'``.

    Forwards the node's DMLC_*/launch variables plus this environment's MXNET_*, OMP_*, PS_*, NCCL_*,
    CUDA_VISIBLE_DEVICES and PYTHONPATH.
    """
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARD_PREFIXES)}
    env.update(node.env)
    assignments = " ".join(f"{key}={shlex.quote(str(value))}" for key, value in sorted(env.items()))
    remote = f"cd {shlex.quote(workdir)} && exec env {assignments} {shlex.join(node.argv)}"
    argv = ["ssh", "-tt", "-o", "StrictHostKeyChecking=no", "-o", "BatchMode=yes", *ssh_options]
    if node.ssh_port:
        argv += ["-p", str(node.ssh_port)]
    return argv + [node.host, remote]


def _die_with_parent():
    """In the child before exec (Linux): SIGKILL this process when the launcher dies, even by SIGKILL."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Supervisor:
    """Start the nodes as separate sessions, relay their output with a label, and stop them all together."""

    def __init__(self, nodes, launcher="local", workdir=None, ssh_options=(), kill_grace=5.0,
                 shutdown_grace=20.0, out=None):
        self.nodes = nodes
        self.launcher = launcher
        self.workdir = workdir or os.getcwd()
        self.ssh_options = tuple(ssh_options)
        self.kill_grace = kill_grace
        self.shutdown_grace = shutdown_grace
        self.out = out or sys.stdout
        self.procs = []
        self._threads = []
        self._lock = threading.Lock()

    def _popen(self, node):
        if self.launcher == "ssh":
            argv, env = ssh_argv(node, self.workdir, self.ssh_options), dict(os.environ)
        else:
            argv, env = node.argv, dict(os.environ, **node.env)
        return subprocess.Popen(argv, env=env, cwd=self.workdir if self.launcher == "local" else None,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent)

    def _relay(self, node, proc):
        prefix = f"[{node.label}] "
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self._lock:
                self.out.write(prefix + line + "\n")
                self.out.flush()
        proc.stdout.close()

    def start(self):
        """Start scheduler, servers, then workers; output relays begin once every process exists (no thread
        runs while ``preexec_fn`` forks)."""
        for node in self.nodes:
            self.procs.append((node, self._popen(node)))
        for node, proc in self.procs:
            thread = threading.Thread(target=self._relay, args=(node, proc), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _signal_all(self, sig):
        for _, proc in self.procs:
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self):
        """SIGTERM every process group, SIGKILL what is still there after ``kill_grace`` seconds, reap all."""
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.kill_grace
        while time.monotonic() < deadline and any(p.poll() is None for _, p in self.procs):
            time.sleep(0.05)
        # SIGKILL the groups even when the leaders are gone: their children may still hold the group.
        self._signal_all(signal.SIGKILL)
        for _, proc in self.procs:
            proc.wait()
        for thread in self._threads:
            thread.join(timeout=2.0)

    def _log(self, message):
        with self._lock:
            self.out.write(f"[launch] {message}\n")
            self.out.flush()

    def wait(self, timeout=None):
        """Watch the processes until the workers are done or something fails; returns the exit status.

        Every process is stopped before this returns, whatever the outcome.
        """
        start = time.monotonic()
        workers = [(n, p) for n, p in self.procs if n.role == "worker"]
        others = [(n, p) for n, p in self.procs if n.role != "worker"]
        service_gone = None
        try:
            while True:
                for node, proc in self.procs:
                    code = proc.poll()
                    if code is not None and code != 0:
                        self._log(f"{node.label} exited with status {code}; stopping every process")
                        return 128 - code if code < 0 else code
                if all(p.poll() == 0 for _, p in workers):
                    break
                # Scheduler and servers leave as soon as the job's final barrier passes, sometimes just
                # before the workers do; one that is gone for long while workers still run means a hang.
                if service_gone is None and any(p.poll() is not None for _, p in others):
                    service_gone = time.monotonic()
                if service_gone is not None and time.monotonic() - service_gone > self.shutdown_grace:
                    self._log("a scheduler/server left while workers are still running; stopping every process")
                    return 1
                if timeout and time.monotonic() - start > timeout:
                    self._log(f"timeout after {timeout:.0f} s; stopping every process")
                    return EXIT_TIMEOUT
                time.sleep(0.1)
            deadline = time.monotonic() + self.shutdown_grace
            while time.monotonic() < deadline and any(p.poll() is None for _, p in others):
                time.sleep(0.1)
            return 0
        finally:
            self.stop()


def _parse_env(items):
    env = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--env expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        env[key] = value
    return env


def build_parser():
    parser = argparse.ArgumentParser(
        description="Launch scheduler, servers and workers of an MXNet dist_sync / dist_device_sync job.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: python tools/launch.py -n 2 -s 1 -- python recipes/train.py --kvstore dist_sync ...")
    parser.add_argument("-n", "--num-workers", type=int, required=True, help="number of worker processes")
    parser.add_argument("-s", "--num-servers", type=int, default=None,
                        help="number of server processes (default: as many as workers)")
    parser.add_argument("--launcher", choices=("local", "ssh"), default="local",
                        help="local: every process on this machine; ssh: spread over the --hostfile hosts")
    parser.add_argument("-H", "--hostfile", help="ssh mode: file with one host (or host:sshport) per line")
    parser.add_argument("--workdir", default=None,
                        help="directory the command runs in on every host (default: the current directory)")
    parser.add_argument("--port", type=int, default=None,
                        help=f"scheduler port (default: a free port in local mode, {DEFAULT_PORT} in ssh mode)")
    parser.add_argument("--scheduler-uri", default=None,
                        help="address workers and servers use to reach the scheduler (default: first host, "
                             "127.0.0.1 in local mode)")
    parser.add_argument("--interface", default=None,
                        help="network interface ps-lite binds (DMLC_INTERFACE; default 'lo' in local mode)")
    parser.add_argument("--python", default=None,
                        help="interpreter for scheduler and servers (default: the worker command's python)")
    parser.add_argument("--env", action="append", metavar="KEY=VALUE",
                        help="extra environment variable for every process (repeatable)")
    parser.add_argument("--ssh-option", action="append", default=[], metavar="OPT",
                        help="extra argument for ssh, e.g. --ssh-option=-i --ssh-option=~/.ssh/key (repeatable)")
    parser.add_argument("--timeout", type=float, default=None, help="stop everything after this many seconds")
    parser.add_argument("--shutdown-grace", type=float, default=20.0,
                        help="seconds scheduler and servers get to exit after the workers succeeded")
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="worker command, after '--'")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    num_servers = args.num_servers if args.num_servers is not None else args.num_workers
    if args.launcher == "ssh":
        if not args.hostfile:
            raise ValueError("--launcher ssh needs --hostfile (one host per line)")
        hosts = parse_hostfile(args.hostfile)
        port = args.port or DEFAULT_PORT
        interface = args.interface
    else:
        if args.hostfile:
            raise ValueError("--hostfile is only used with --launcher ssh")
        hosts = None
        port = args.port or free_port()
        interface = args.interface or "lo"
    if not any(kind in word for word in command for kind in ("dist_sync", "dist_device_sync", "dist_async")):
        print("[launch] warning: the worker command has no dist_* kvstore argument; workers will not "
              "exchange gradients", file=sys.stderr)
    nodes = plan_nodes(command, args.num_workers, num_servers, hosts=hosts, port=port,
                       root_uri=args.scheduler_uri, interface=interface, python=args.python,
                       extra_env=_parse_env(args.env))
    workdir = os.path.abspath(args.workdir) if args.workdir and args.launcher == "local" else args.workdir
    supervisor = Supervisor(nodes, launcher=args.launcher, workdir=workdir or os.getcwd(),
                            ssh_options=args.ssh_option, shutdown_grace=args.shutdown_grace)
    if args.dry_run:
        for node in nodes:
            if args.launcher == "ssh":
                print(shlex.join(ssh_argv(node, supervisor.workdir, args.ssh_option)))
            else:
                env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(node.env.items()))
                print(f"env {env} {shlex.join(node.argv)}")
        return 0

    received = []

    def on_signal(signum, _frame):
        if received:  # already stopping: a second signal must not interrupt the clean-up
            return
        received.append(signum)
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        supervisor.start()
        print(f"[launch] {len(nodes)} processes: scheduler, {num_servers} server(s), {args.num_workers} "
              f"worker(s); scheduler at {nodes[0].env['DMLC_PS_ROOT_URI']}:{port}", flush=True)
        code = supervisor.wait(timeout=args.timeout)
    except KeyboardInterrupt:
        supervisor.stop()
        signum = received[0] if received else signal.SIGINT
        print(f"[launch] received {signal.Signals(signum).name}; stopped every process", file=sys.stderr)
        return 128 + signum
    return code


if __name__ == "__main__":
    run_cli(main)
