"""Random ``kill -9`` trials against a short training run: does every run that is killed and
resumed end bit-identical to one that never was, and is every checkpoint on disk readable?

Two uninterrupted references are trained first: one process, and DDP (two ``torchrun``
processes, gloo). Then each trial starts the same run in a fresh folder, kills it with SIGKILL at
a random moment and finishes it with ``--resume auto``. A trial is one of:

- ``single``: the one process is killed; a new process resumes it;
- ``ddp-rank``: one random rank is killed; torchrun (``--max-restarts=1``) restarts the group,
  which resumes by itself;
- ``ddp-all``: torchrun and both ranks are killed at once (the ranks by their own pids: they
  run in sessions of their own and outlive a killed torchrun); a new torchrun resumes.

Right after the kill every ``*.pt`` in the run folder is loaded (``weights_only=True``); at the
end the final ``last.pt`` weights are compared with the reference's, tensor by tensor.
Exit code 0 when every trial passed. Linux only (it reads /proc to find a rank's process).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
# The tiny run of the tests: batch 8, 2 epochs of 3 steps, a checkpoint after every step.
RUN = (
    "train.batch_size=8",
    "train.steps_per_epoch=3",
    "train.epochs=2",
    "train.log_every=1",
    "train.checkpoint_every=1",
    "data.workers=0",
    "eval.batch_size=8",
    "train.stall_steps=1000",
    "run.tensorboard=false",
)
MODES = ("single", "ddp-rank", "ddp-all")
EPILOG = """examples:
  python scripts/faults.py --trials 20 --out /tmp/faults
  python scripts/faults.py --trials 5 --modes single --data data/synthetic-prepared \\
      --set model.num_classes=10"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python scripts/faults.py",
        description="kill -9 a short training run at random moments; check that each resumed "
        "run ends bit-identical to an uninterrupted one and that no checkpoint is unreadable",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--trials", type=int, default=20, help="number of trials (default 20)")
    p.add_argument("--out", type=Path, default=Path("runs/faults"), help="work folder")
    p.add_argument("--data", type=Path, help="prepared set (default: a tiny built-in one)")
    p.add_argument("--modes", default=",".join(MODES), help=f"among {', '.join(MODES)}")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill times and modes")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if args.trials < 1 or not modes or set(modes) - set(MODES):
        print(f"error: --trials >= 1 and --modes among {', '.join(MODES)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data or tiny_data(args.out / "data")
    overrides = [*RUN, f"data.root={data}", *(["model.num_classes=4"] * (args.data is None))]
    overrides += args.set
    rng = random.Random(args.seed)
    refs = {
        kind: reference(args.out / f"ref-{kind}", overrides, kind) for kind in ("single", "ddp")
    }
    results = []
    for i in range(args.trials):
        mode = rng.choice(modes)
        ref_dir, seconds = refs["single" if mode == "single" else "ddp"]
        at = rng.uniform(0.05, 0.85) * seconds  # the reference's time; startup included
        result = trial(args.out / f"trial-{i:02d}", overrides, mode, at, ref_dir, rng)
        results.append({"trial": i, "mode": mode, "kill_at_s": round(at, 1), **result})
        print(json.dumps(results[-1]), flush=True)
    (args.out / "faults.json").write_text(json.dumps(results, indent=1) + "\n")
    print(summary(results))
    return 0 if all(r["identical"] and not r["unreadable"] for r in results) else 1


def tiny_data(out: Path) -> Path:
    """The tests' tiny built-in set (4 classes x 12 train / 4 val), prepared once."""
    if not (out / "prepared" / "meta.json").exists():
        from alexnet import prepare
        from alexnet.data import shapes

        shapes.draw_shape_set(out / "src", num_classes=4, train_per_class=12, val_per_class=4)
        assert prepare.main([str(out / "src"), str(out / "prepared"), "--workers", "2"]) == 0
    return out / "prepared"


def command(kind: str, run: Path, overrides: list[str], restarts: int = 0) -> list[str]:
    """``python -m alexnet.train ... --resume auto`` for one process, or under torchrun."""
    sets = [a for o in [*overrides, f"run.dir={run}"] for a in ("--set", o)]
    train = ["-m", "alexnet.train", "--no-progress", "--resume", "auto", *sets]
    if kind == "single":
        return [sys.executable, *train]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launcher += ["--nproc_per_node=2", f"--max-restarts={restarts}"]
    return [*launcher, *train, "--set", "parallel.mode=ddp"]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"  # torchrun restarts (README)
    with open(log, "a") as f:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )


def reference(run: Path, overrides: list[str], kind: str) -> tuple[Path, float]:
    """An uninterrupted run (reused if finished); its folder and how long it took."""
    stamp = run / "seconds.txt"
    if not stamp.exists():
        run.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        proc = start(command(kind, run, overrides), run / "log.txt")
        if proc.wait() != 0:
            raise SystemExit(f"the {kind} reference run failed: see {run / 'log.txt'}")
        stamp.write_text(f"{time.perf_counter() - began:.1f}\n")
    return run, float(stamp.read_text())


def trial(
    run: Path, overrides: list[str], mode: str, at: float, ref: Path, rng: random.Random
) -> dict[str, Any]:
    """Start the run, SIGKILL it (or one rank) ``at`` seconds in, check the checkpoints, let it
    finish, compare with ``ref``."""
    run.mkdir(parents=True, exist_ok=True)
    log = run / "log.txt"
    kind = "single" if mode == "single" else "ddp"
    proc = start(command(kind, run, overrides, restarts=int(mode == "ddp-rank")), log)
    time.sleep(at)
    workers = ranks(proc.pid) if mode == "ddp-rank" and proc.poll() is None else {}
    if proc.poll() is not None or (mode == "ddp-rank" and not workers):
        proc.wait()
        ended = {"killed": "none (the run had ended)", "at": "end", "mid_write": []}
        return {**ended, **finish(run, ref, [])}
    if mode == "ddp-rank":
        rank = rng.choice(sorted(workers))
        os.kill(workers[rank], signal.SIGKILL)
        killed = f"rank {rank}"
    else:  # torchrun's workers live in sessions of their own: each is killed by name
        pids = [*ranks(proc.pid).values()] if kind == "ddp" else []
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        gone(pids)
        killed = "all"
    mid_write = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    unreadable = readable_check(run)
    state = position(run)
    code = proc.wait()  # ddp-rank: torchrun restarts the group, which finishes the run
    if mode != "ddp-rank":
        code = start(command(kind, run, overrides), log).wait()
    outcome = finish(run, ref, unreadable)
    if code != 0:
        outcome["identical"] = False
        outcome["failed"] = f"exit code {code} after the kill (see {log})"
    return {"killed": killed, "at": state, "mid_write": mid_write, **outcome}


def ranks(agent: int) -> dict[int, int]:
    """rank -> pid of torchrun's worker processes (children of the agent, from /proc)."""
    deadline, out = time.time() + 60, {}
    while len(out) < 2 and time.time() < deadline:
        try:
            children = Path(f"/proc/{agent}/task/{agent}/children").read_text().split()
            for pid in map(int, children):
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                rank = [e for e in env if e.startswith(b"RANK=")]
                if rank:
                    out[int(rank[0][5:])] = pid
        except OSError:  # the agent or a worker has just ended
            return out
        time.sleep(0.05)
    return out


def gone(pids: list[int], timeout: float = 30) -> None:
    """Wait until the killed ``pids`` no longer run (zombies count as gone)."""
    deadline = time.time() + timeout
    for pid in pids:
        while time.time() < deadline:
            try:
                if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                    break
            except OSError:
                break
            time.sleep(0.02)


def readable_check(run: Path) -> list[str]:
    """The checkpoints in ``run`` that do not load (there must be none)."""
    from alexnet.errors import UserError
    from alexnet.training.checkpoint import load_checkpoint

    bad = []
    for path in sorted(run.glob("*.pt")):
        try:
            load_checkpoint(path)
        except UserError as err:
            bad.append(f"{path.name}: {err}")
    return bad


def position(run: Path) -> str:
    """Where last.pt stood when the kill came: ``epoch.step``, or none."""
    from alexnet.training.checkpoint import load_checkpoint

    if not (run / "last.pt").exists():
        return "no checkpoint yet"
    state = load_checkpoint(run / "last.pt")
    return f"epoch {state['epoch']} step {state['step']}"


def finish(run: Path, ref: Path, unreadable: list[str]) -> dict[str, Any]:
    from alexnet.training.checkpoint import load_checkpoint

    want = load_checkpoint(ref / "last.pt")["model"]
    got = load_checkpoint(run / "last.pt")["model"]
    same = want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    leftover = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    return {"identical": same, "unreadable": unreadable, "temp_files_left": leftover}


def summary(results: list[dict[str, Any]]) -> str:
    lines = [
        "",
        "| mode | trials | before the first checkpoint | during a checkpoint write | after "
        "the run ended | ended identical |",
        "|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        rows = [r for r in results if r["mode"] == mode]
        if rows:
            early = sum(r["at"] == "no checkpoint yet" for r in rows)
            writing = sum(bool(r["mid_write"]) for r in rows)
            late = sum(r["at"] == "end" for r in rows)
            same = sum(r["identical"] for r in rows)
            lines.append(
                f"| {mode} | {len(rows)} | {early} | {writing} | {late} | {same} / {len(rows)} |"
            )
    bad = sum(len(r["unreadable"]) for r in results)
    lines.append(f"\nunreadable checkpoints found right after a kill: {bad}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
