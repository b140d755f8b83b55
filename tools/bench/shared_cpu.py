"""Training speed on a shared machine: samples/s of the recipe's training step alone and beside one CPU-bound process.

    python tools/bench/shared_cpu.py                       # seesaw_shuffle, the recipe's thread policy
    python tools/bench/shared_cpu.py --policies recipe,spin --rounds 3

Each measurement is a fresh process running ``tools/bench/training.py``'s step loop (the recipe's network, ArcFace
head, trainer and ``train_step``); "busy" measurements run it while this command keeps one competing process busy
on one core (a pure-Python loop, started before and stopped after each measurement, bounded by ``--timeout``).
Policies: ``recipe`` (every core, and :class:`recipes.cpu_share.CpuShare` computing on the cores other processes
leave free, as CPU training does), ``fixed`` (every core throughout, libgomp's own waiting: threads spin a while at
every barrier), ``passive`` (every core, threads sleep at once at every barrier: ``OMP_WAIT_POLICY=PASSIVE``),
``spin:N`` (every core, ``GOMP_SPINCOUNT=N``). Quiet and busy runs alternate, round by round, so drift of the
machine affects both; the ratio busy / quiet of the same round is the figure to read.
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from deploy.process import run_cli  # noqa: E402

TRAINING = os.path.join(os.path.dirname(os.path.abspath(__file__)), "training.py")
POLICIES = {
    "recipe": {},  # the recipe's: all cores, libgomp's waiting, threads adapted to the others' load (CpuShare)
    "fixed": {},  # all cores, libgomp's waiting, no adaptation
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},  # all cores, threads sleep at once at every barrier
}
THREAD_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
HOG = "import time\nend = time.time() + {timeout}\nwhile time.time() < end:\n    pass\n"


def policy_settings(policy):
    """The environment of a policy: a name of :data:`POLICIES` or ``spin:N`` (``GOMP_SPINCOUNT=N``)."""
    if policy.startswith("spin:") and policy[5:].isdigit():  # all cores, GOMP_SPINCOUNT=N, no adaptation
        return {"GOMP_SPINCOUNT": policy[5:]}
    if policy not in POLICIES:
        raise ValueError(f"policy {policy!r}: choose from {', '.join(POLICIES)} or spin:N")
    return POLICIES[policy]


def measure(policy, network, batch_size, steps, warmup, busy, timeout=600):
    """One fresh training process under ``policy`` (``busy``: beside a competing busy loop); its result dict."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_SETTINGS}
    env.update(policy_settings(policy))
    hog = subprocess.Popen([sys.executable, "-c", HOG.format(timeout=timeout)]) if busy else None
    try:
        time.sleep(0.5 if busy else 0)
        share = "on" if policy == "recipe" else "off"
        proc = subprocess.run([sys.executable, TRAINING, "--_one", f"{network}:auto:on:tuned:{share}", "--batch-size",
                               str(batch_size), "--steps", str(steps), "--warmup", str(warmup)],
                              capture_output=True, text=True, env=env, timeout=timeout)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"{policy} ({'busy' if busy else 'quiet'}) failed: {proc.stderr.strip()[-300:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def build_parser():
    parser = argparse.ArgumentParser(description="Training samples/s alone and beside one CPU-bound process.")
    parser.add_argument("--network", default="seesaw_shuffle")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--policies", default="recipe",
                        help=f"comma-separated, from {', '.join(POLICIES)}, or spin:N (GOMP_SPINCOUNT=N)")
    parser.add_argument("--rounds", type=int, default=2, help="quiet/busy pairs per policy, alternating")
    parser.add_argument("--timeout", type=int, default=600, help="seconds after which a measurement is abandoned")
    parser.add_argument("--json", help="also write the results here")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if not policies:
        raise ValueError(f"--policies {args.policies!r}: choose from {', '.join(POLICIES)} or spin:N")
    for policy in policies:
        policy_settings(policy)
    if args.rounds < 1 or args.steps < 1:
        raise ValueError("--rounds and --steps must be at least 1")
    print(f"{args.network}, batch {args.batch_size}, {args.steps} steps per measurement, {os.cpu_count()} CPUs; "
          "busy = beside one CPU-bound process", flush=True)
    print(f"{'policy':<8} {'round':>5} {'quiet samples/s':>16} {'busy samples/s':>15} {'busy/quiet':>10}", flush=True)
    rows = []
    for round_ in range(args.rounds):
        for policy in policies:
            quiet = measure(policy, args.network, args.batch_size, args.steps, args.warmup, False, args.timeout)
            busy = measure(policy, args.network, args.batch_size, args.steps, args.warmup, True, args.timeout)
            ratio = busy["samples_per_sec"] / quiet["samples_per_sec"]
            rows.append({"policy": policy, "round": round_ + 1, "quiet": quiet, "busy": busy, "ratio": ratio})
            print(f"{policy:<8} {round_ + 1:>5} {quiet['samples_per_sec']:>16.1f} {busy['samples_per_sec']:>15.1f} "
                  f"{ratio:>10.2f}" + (f"   (threads at the end: {quiet['threads_at_end']} quiet, "
                                       f"{busy['threads_at_end']} busy)" if policy == "recipe" else ""), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    run_cli(main)
