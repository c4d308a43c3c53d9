"""Fault tests: training killed with SIGKILL at random moments, damaged checkpoints, non-finite
steps in a real DiffFlow run, and a DDP worker killed under ``torchrun --max-restarts``.

The kill chain: one run directory, a worker process (this file run as a script) training a tiny
DiffFlow toy model on the CPU with fixed seeds and a checkpoint every two steps, killed with
SIGKILL at twelve moments in a row, each time relaunched with ``resume=True``:

- at a random time while the worker imports, and a random few milliseconds after it starts
  building the run (model, data, checkpoint loading, first steps),
- a random few milliseconds after it reported a step (anywhere in the next step: forward,
  backward, optimizer, EMA, checkpoint),
- in the middle of writing a checkpoint (payload half written), after the temporary file is
  complete but before it is renamed over the checkpoint, and after the rename but before the
  folder is synced. The worker injects these three by wrapping the ``os`` functions that
  :func:`sdeflow.training.save_checkpoint` writes through, and hangs there until killed.

After every kill the checkpoint on disk is complete (it verifies) and is the last one that was
completely written; the relaunch resumes from exactly that step; and the finished run has the
same parameters, EMA weights and optimizer state as an uninterrupted run, bit for bit, with each
step's loss logged once and equal to the uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from sdeflow import StandardNormal, TimeGrid
from sdeflow.data import load_toy
from sdeflow.nets import FourierMLP
from sdeflow.training import (
    CheckpointError,
    Checkpointing,
    DiffFlowModel,
    Logging,
    NonFiniteError,
    Optimization,
    TensorBatches,
    Trainer,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)

THIS = Path(__file__).resolve()
REPO = THIS.parents[1]
STEPS = 60  # room for twelve kills, each of which may let the run advance a few steps
EVERY = 2  # checkpoint every two steps: a kill can lose up to one step, never a checkpoint
LAUNCH_TIMEOUT_S = 120


# -- the training run (the same code in the worker and in the reference run) -------------------
def build_trainer(out_dir: Path, steps: int = STEPS, *, distributed=None,
                  **kwargs) -> Trainer:
    """A tiny DiffFlow toy run (global batch 64, sharded over the ranks of ``distributed``),
    checkpointed every ``EVERY`` steps (not by time: the kills expect exact steps)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = DiffFlowModel(FourierMLP(2, 16, 1), FourierMLP(2, 16, 1), 0.2,
                          TimeGrid.power(5, 1e-3, 0.05, 0.9), StandardNormal((2,)))
    train = load_toy("8gaussians", 512, 4, seed=0)[0]
    rank, world_size = (0, 1) if distributed is None else (distributed.rank,
                                                           distributed.world_size)
    data = TensorBatches(train, 64 // world_size, seed=1, rank=rank, world_size=world_size)
    return Trainer(model, data, steps=steps, optimization=Optimization(lr=1e-2),
                   out_dir=out_dir, checkpointing=Checkpointing(every=EVERY, seconds=None),
                   logging=Logging(every=1, progress=False), distributed=distributed, **kwargs)


# -- the worker: fault injection and the training loop -----------------------------------------
class _Hang(Exception):
    pass


def _announce_and_hang(what: str) -> None:
    print(f"FAULT {what}", flush=True)
    time.sleep(LAUNCH_TIMEOUT_S)  # the parent kills us here
    raise _Hang(what)  # not killed: fail loudly rather than continue


class _HalfWriter:
    """A file whose large write (the payload) stops half-way and hangs."""

    def __init__(self, f) -> None:
        self.f = f

    def write(self, data: bytes) -> int:
        if len(data) > 256:
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            _announce_and_hang("partial-write")
        return self.f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self.f, name)


class _FaultyOs:
    """``os`` for :mod:`sdeflow.training.checkpoint`, hanging in the ``at``-th checkpoint write
    of this process at ``mode``: ``partial-write``, ``before-replace`` or ``after-replace`` (of
    the ``.pt``; ``after-replace`` is before its JSON sidecar is written, which leaves the
    previous checkpoint's sidecar beside the new file).

    Each checkpoint opens two files, the ``.pt`` then its sidecar, so the ``at``-th checkpoint's
    ``.pt`` is the ``2 at - 1``-th file opened."""

    def __init__(self, real, mode: str, at: int) -> None:
        self.real, self.mode, self.at, self.opened = real, mode, at, 0

    def __getattr__(self, name):
        return getattr(self.real, name)

    @property
    def writing(self) -> tuple[str, int] | None:
        """(mode, checkpoint number) while the ``.pt`` of a checkpoint is being written."""
        return (self.mode, (self.opened + 1) // 2) if self.opened % 2 == 1 else None

    def fdopen(self, fd, *args, **kwargs):
        f = self.real.fdopen(fd, *args, **kwargs)
        self.opened += 1
        return _HalfWriter(f) if self.writing == ("partial-write", self.at) else f

    def replace(self, src, dst):
        if not str(dst).endswith(".pt"):
            return self.real.replace(src, dst)
        if self.writing == ("before-replace", self.at):
            _announce_and_hang("before-replace")
        self.real.replace(src, dst)
        if self.writing == ("after-replace", self.at):
            _announce_and_hang("after-replace")


def worker(out_dir: Path) -> None:
    fault = os.environ.get("SDEFLOW_TEST_FAULT")
    if fault:
        from sdeflow.training import checkpoint

        mode, at = fault.split(":")
        checkpoint.os = _FaultyOs(os, mode, int(at))
    report = [lambda trainer, step, record: print(f"STEP {step}", flush=True)]
    print("START", flush=True)
    build_trainer(out_dir, callbacks=report).fit(resume=True)
    print("DONE", flush=True)


# -- the parent: launching, killing, checking ---------------------------------------------------
class Launch:
    """A worker process whose stdout lines arrive in a queue."""

    def __init__(self, out_dir: Path, fault: str | None = None) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
        env.pop("SDEFLOW_TEST_FAULT", None)
        if fault:
            env["SDEFLOW_TEST_FAULT"] = fault
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, str(THIS), "worker", str(out_dir)], env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=1)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.steps: list[int] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def wait_for(self, predicate) -> str:
        """The first line satisfying ``predicate`` (failing if the worker ends first)."""
        deadline = self.started + LAUNCH_TIMEOUT_S
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                pytest.fail(f"worker timed out; stderr:\n{self.proc.stderr.read()}")
            if line is None:
                self.proc.wait()
                pytest.fail(f"worker ended (rc {self.proc.returncode}) before the kill point; "
                            f"stderr:\n{self.proc.stderr.read()}")
            if line.startswith("STEP "):
                self.steps.append(int(line.split()[1]))
            if predicate(line):
                return line

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.close()

    def close(self) -> None:
        self.proc.wait(timeout=LAUNCH_TIMEOUT_S)
        self.reader.join(timeout=10)  # the pipe is at its end once the process is gone
        self.proc.stdout.close()
        self.proc.stderr.close()


def disk_step(ckpt: Path) -> int:
    """The step of the checkpoint on disk (0 when there is none); it must verify."""
    if not ckpt.exists():
        return 0
    verify_checkpoint(ckpt)  # never a half-written file at the checkpoint's path
    return int(load_checkpoint(ckpt)["step"])


def assert_identical(a, b, where: str) -> None:
    """Nested dicts, lists and tensors equal bit for bit."""
    if isinstance(b, dict):
        assert isinstance(a, dict) and a.keys() == b.keys(), where
        for key in b:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(b, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(b, torch.Tensor):
        assert torch.equal(torch.as_tensor(a), b), where
    else:
        assert a == b, where


def kill_plan(rng: random.Random) -> list[tuple[str, float | int]]:
    kinds = ["import", "step", "partial-write", "start", "before-replace", "step",
             "after-replace", "partial-write", "step", "before-replace", "after-replace",
             "step"]
    plan = []
    for kind in kinds:
        if kind == "import":
            plan.append((kind, rng.uniform(0.0, 0.3)))  # seconds after launch: importing
        elif kind == "start":
            plan.append((kind, rng.uniform(0.0, 0.05)))  # seconds after building the run
        elif kind == "step":
            plan.append((kind, rng.randint(1, 3)))  # steps after the resume point
        else:
            plan.append((kind, rng.randint(1, 2)))  # which checkpoint write of the launch
    return plan


def test_sigkill_at_random_moments_always_resumes_exactly(tmp_path):
    reference = build_trainer(tmp_path / "reference").fit()
    run = tmp_path / "run"
    ckpt = run / "checkpoint.pt"
    rng = random.Random(20211)
    kills = []
    for kind, arg in kill_plan(rng):
        resume_from = disk_step(ckpt)
        fault = f"{kind}:{arg}" if kind in ("partial-write", "before-replace",
                                            "after-replace") else None
        launch = Launch(run, fault)
        if kind in ("import", "start"):
            if kind == "start":
                launch.wait_for(lambda line: line == "START")
            time.sleep(arg)
            launch.kill()
            expected_at_least, expected_exactly = resume_from, None
        elif kind == "step":
            target = min(resume_from + arg, STEPS - 1)
            launch.wait_for(lambda line, t=target: line == f"STEP {t}")
            time.sleep(rng.uniform(0.0, 0.03))  # somewhere in the following step(s)
            launch.kill()
            expected_at_least, expected_exactly = target - target % EVERY, None
        else:
            launch.wait_for(lambda line: line.startswith("FAULT"))
            launch.kill()
            nth_write = resume_from + EVERY * arg  # this launch's writes: every EVERY steps
            expected_exactly = nth_write if kind == "after-replace" else nth_write - EVERY
            expected_at_least = expected_exactly
        if launch.steps:  # it resumed from exactly the checkpoint that was on disk
            assert launch.steps[0] == resume_from + 1, (kind, launch.steps)
        step = disk_step(ckpt)
        assert step >= expected_at_least, (kind, arg, step)
        if expected_exactly is not None:
            assert step == expected_exactly, (kind, arg, step)
        kills.append((kind, step))

    resume_from = disk_step(ckpt)
    final = Launch(run)
    final.wait_for(lambda line: line == "DONE")
    final.close()
    assert final.proc.returncode == 0
    assert final.steps == list(range(resume_from + 1, STEPS + 1))
    assert len(kills) >= 10 and {k for k, _ in kills} >= {"import", "start", "step",
                                                         "partial-write", "before-replace",
                                                         "after-replace"}

    state, ref = load_checkpoint(ckpt), reference.state_dict()
    assert state["step"] == STEPS
    for part in ("model", "ema", "optimizer", "scheduler", "data"):
        assert_identical(state[part], ref[part], part)
    # the same random stream was consumed (numpy's and python's are not seeded by this run)
    assert_identical(state["rng"]["torch"], ref["rng"]["torch"], "rng.torch")
    # every step logged exactly once, with the uninterrupted run's loss
    losses = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            assert record["step"] not in losses, f"step {record['step']} logged twice"
            losses[record["step"]] = record["loss"]
    ref_losses = {r["step"]: r["loss"] for r in map(json.loads, (tmp_path / "reference" /
                  "metrics.jsonl").read_text().splitlines()) if "loss" in r}
    assert losses == ref_losses


# -- damaged checkpoints ------------------------------------------------------------------------
def _members(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each zip member's stored bytes."""
    import io
    import struct
    import zipfile

    spans = []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            name_len, extra_len = struct.unpack(
                "<HH", data[info.header_offset + 26:info.header_offset + 30])
            start = info.header_offset + 30 + name_len + extra_len
            spans.append((start, start + info.compress_size))
    return spans


def _damage(data: bytes, kind: str, rng: random.Random) -> bytes:
    """A damaged copy of a checkpoint (a zip archive: members, then the central directory)."""
    if kind == "empty":
        return b""
    if kind == "head-cut":
        return data[: rng.randrange(1, 64)]
    if kind == "body-cut":
        return data[: rng.randrange(64, len(data) - 1)]
    if kind == "one-byte-short":
        return data[:-1]
    if kind == "appended":
        return data + b"\0"
    spans = _members(data)
    if kind == "flip-zip-magic":
        position = rng.randrange(0, 4)
    elif kind == "flip-data":  # inside a member's stored bytes: its CRC-32 catches it
        start, end = max(spans, key=lambda span: span[1] - span[0])
        position = rng.randrange(start, end)
    elif kind == "flip-padding":  # the alignment padding before a member: only the SHA-256
        position = spans[-1][0] - 1
    else:  # the central directory at the end
        position = rng.randrange(spans[-1][1], len(data))
    flipped = bytearray(data)
    flipped[position] ^= 1 << rng.randrange(8)
    return bytes(flipped)


DAMAGE = ["empty", "head-cut", "body-cut", "one-byte-short", "appended", "flip-zip-magic",
          "flip-data", "flip-data", "flip-padding", "flip-directory"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished")
    build_trainer(out, steps=4).fit()
    return out


@pytest.mark.parametrize("index", range(len(DAMAGE)), ids=lambda i: f"{DAMAGE[i]}-{i}")
def test_damaged_checkpoint_is_named_and_never_loaded(finished_run, tmp_path, index):
    data = (finished_run / "checkpoint.pt").read_bytes()
    out = tmp_path / "run"
    out.mkdir()
    ckpt = out / "checkpoint.pt"
    ckpt.write_bytes(_damage(data, DAMAGE[index], random.Random(index)))
    (out / "checkpoint.json").write_bytes((finished_run / "checkpoint.json").read_bytes())
    trainer = build_trainer(out, steps=8)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        trainer.fit(resume=True)
    assert str(ckpt) in str(err.value)
    assert trainer.step == 0  # nothing trained, nothing loaded
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert ckpt.read_bytes() == _damage(data, DAMAGE[index], random.Random(index))  # kept


def test_a_good_checkpoint_survives_a_failed_overwrite(finished_run, tmp_path, monkeypatch):
    """A write that fails (disk full) leaves the previous checkpoint intact and loadable."""
    from sdeflow.training import checkpoint

    ckpt = tmp_path / "checkpoint.pt"
    for name in ("checkpoint.pt", "checkpoint.json"):
        (tmp_path / name).write_bytes((finished_run / name).read_bytes())

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint({"step": 99}, ckpt)
    monkeypatch.undo()
    assert load_checkpoint(ckpt)["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "checkpoint.pt"]


# -- non-finite steps in a real DiffFlow run ----------------------------------------------------
class _InfiniteGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("inf"))


def _poison(kind: str, at: int):
    """A callback that, after step ``at - 1``, makes step ``at`` non-finite: a NaN weight in the
    drift network (so every later loss is NaN too) or an infinite gradient on one step."""

    def callback(trainer, step, record):
        if step != at - 1:
            return
        net = trainer.model.drift_net
        if kind == "nan-weight":
            with torch.no_grad():
                net.output.bias[0] = float("nan")
        else:
            original = net.forward

            def once(x, t):
                net.forward = original  # one step only
                return _InfiniteGradient.apply(original(x, t))

            net.forward = once

    return callback


@pytest.mark.parametrize(("kind", "what"), [("nan-weight", "non-finite loss"),
                                            ("inf-gradient", "non-finite gradient")])
def test_nonfinite_stop_names_the_step_and_keeps_the_last_checkpoint(tmp_path, kind, what):
    trainer = build_trainer(tmp_path, steps=10, callbacks=[_poison(kind, 5)])
    with pytest.raises(NonFiniteError, match=rf"{what} .*at step 5: .*checkpoint\.pt \(step 4\)"):
        trainer.fit()
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_nonfinite_skip_skips_one_bad_step_and_gives_up_on_a_broken_model(tmp_path):
    trainer = build_trainer(tmp_path / "a", steps=8, on_nonfinite="skip",
                            callbacks=[_poison("inf-gradient", 5)])
    trainer.fit()
    assert trainer.step == 8 and trainer.skipped == 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text()
               .splitlines()]
    (skipped,) = [r for r in records if r.get("skipped")]
    assert skipped["step"] == 5 and "non-finite gradient" in skipped["reason"]

    broken = build_trainer(tmp_path / "b", steps=50, on_nonfinite="skip",
                           callbacks=[_poison("nan-weight", 5)])
    broken.max_consecutive_skips = 3
    with pytest.raises(NonFiniteError, match="4 consecutive non-finite steps skipped at step 8"):
        broken.fit()


# -- DDP: a worker killed under torchrun --max-restarts ----------------------------------------
DDP_STEPS, DDP_KILL_AT = 10, 7  # checkpoints at 2, 4, 6, 8, 10: the kill loses step 7


def ddp_worker(out_dir: Path) -> None:
    """One rank of a two-process gloo run; on torchrun's first attempt rank 1 SIGKILLs itself
    after step ``DDP_KILL_AT``, and the restarted ranks resume from the last checkpoint."""
    from sdeflow.training.distributed import init_distributed

    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    with init_distributed("cpu") as ctx:
        seen: dict[str, object] = {}

        def callback(trainer, step, record):
            if "first_step" not in seen:
                seen["first_step"], seen["rng"] = step, torch.get_rng_state()
            if attempt == 0 and ctx.rank == 1 and step == DDP_KILL_AT:
                os.kill(os.getpid(), signal.SIGKILL)

        trainer = build_trainer(out_dir / "run", steps=DDP_STEPS, distributed=ctx,
                                callbacks=[callback])
        ctx.seed(1)  # after the model is built: different trajectory noise on each rank
        trainer.fit(resume=True)
        torch.save({"attempt": attempt, "step": trainer.step, **seen,
                    "model": trainer.model.state_dict(),
                    "ema": trainer.eval_model.state_dict(),
                    "in_sync": ctx.max_param_deviation(trainer.model) == 0.0},
                   out_dir / f"rank{ctx.rank}.pt")
        ctx.barrier()


@pytest.mark.slow
def test_ddp_worker_killed_under_torchrun_resumes(tmp_path):
    # without it, a restarted rank may read the killed attempt's gloo address from torchrun's
    # shared store and fail or hang (pytorch/pytorch#135712): 3 of 6 runs here
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
               TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "--max-restarts", "1", "--monitor-interval", "0.1", str(THIS), "ddp",
           str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for r in ranks:  # the restarted job finished, resuming from the checkpoint of step 6
        assert r["attempt"] == 1 and r["step"] == DDP_STEPS and r["in_sync"]
        assert r["first_step"] == 7
    for part in ("model", "ema"):
        assert_identical(ranks[0][part], ranks[1][part], part)
    assert all(torch.isfinite(v).all() for v in ranks[0]["model"].values())
    # after the resume the ranks draw different noise (the checkpoint holds rank 0's RNG)
    assert not torch.equal(ranks[0]["rng"], ranks[1]["rng"])

    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    resumes = [r for r in records if r.get("event") == "resume"]
    assert [r["step"] for r in resumes] == [6]
    logged = [r["step"] for r in records if "loss" in r]
    assert logged == list(range(1, DDP_STEPS + 1))  # rank 0 alone, each step once
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == DDP_STEPS


if __name__ == "__main__" and len(sys.argv) == 3:
    {"worker": worker, "ddp": ddp_worker}[sys.argv[1]](Path(sys.argv[2]))
