"""Data-parallel training (DDP, gloo, CPU): sharding, gradient averaging, identical weights.

The two-process test launches this file under ``torchrun --standalone --nproc_per_node 2``: the
``__main__`` block below is the worker, and the test reads what each rank wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdeflow import StandardNormal, TimeGrid
from sdeflow.data import write_tiny_cifar10_archive
from sdeflow.gradients import Backprop, StochasticAdjoint
from sdeflow.nets import FourierMLP
from sdeflow.training import Checkpointing, Logging, Optimization, Trainer
from sdeflow.training.batches import TensorBatches
from sdeflow.training.distributed import (
    DistributedContext,
    LossModule,
    ShardSampler,
    init_distributed,
)
from sdeflow.training.models import DiffFlowModel

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = {"backprop": Backprop, "adjoint": StochasticAdjoint}
STEPS = 3


def _model(dim: int = 4) -> DiffFlowModel:
    return DiffFlowModel(FourierMLP(dim, 16, 1), FourierMLP(dim, 16, 1), 0.5,
                         TimeGrid.power(5, 1e-3, 0.1, 0.9, dtype=torch.float64),
                         StandardNormal((dim,), dtype=torch.float64), jitter=True).double()


class PoisonedBatches:
    """A batch source whose batch ``bad_step`` gives a non-finite loss on rank ``bad_rank``
    only."""

    def __init__(self, source: TensorBatches, rank: int, bad_rank: int = 1,
                 bad_step: int = 2) -> None:
        self.source, self.rank, self.bad_rank, self.bad_step, self.calls = (
            source, rank, bad_rank, bad_step, 0)

    def next_batch(self) -> torch.Tensor:
        self.calls += 1
        batch = self.source.next_batch()
        # finite data (the objective rejects NaN input) whose loss overflows
        return batch * 1e300 if (self.rank, self.calls) == (self.bad_rank,
                                                              self.bad_step) else batch

    def state_dict(self) -> dict:
        return self.source.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state)


def _worker(out_dir: Path) -> None:
    """One rank: for each gradient strategy, wrap a model whose initialization differs per rank,
    check one DDP gradient against the average of the ranks' local gradients, train a few
    steps on this rank's shard, and save what the test compares."""
    ctx = init_distributed("cpu")
    data = torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    record: dict = {"world_size": ctx.world_size, "backend": ctx.backend,
                    "mean_rank": ctx.all_reduce_mean({"r": float(ctx.rank)})["r"]}
    for name, strategy in STRATEGIES.items():
        torch.manual_seed(100 + ctx.rank)  # different initial weights on each rank
        model = _model()
        model.objective.gradient = strategy()
        before = [p.detach().clone() for p in model.parameters()]
        step_fn = ctx.wrap(model)  # broadcasts rank 0's weights
        after_wrap = [p.detach().clone() for p in model.parameters()]
        ctx.seed(7)  # different noise on each rank
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        batches = TensorBatches(data, batch_size=4, seed=3, rank=ctx.rank,
                                world_size=ctx.world_size)
        seen, grad_error = [], None
        for step in range(1, STEPS + 1):
            batch = batches.next_batch()
            seen.append(batch)
            if step == 1:  # the DDP gradient is the average of the ranks' local gradients
                rng = torch.get_rng_state()
                local_loss, _ = model.loss(batch, step)
                local = torch.autograd.grad(local_loss, list(model.parameters()))
                torch.set_rng_state(rng)
            optimizer.zero_grad(set_to_none=True)
            loss, info = step_fn(batch, step)
            loss.backward()
            if step == 1:
                grad_error = max(
                    float((p.grad - ctx.all_reduce_sum(g) / ctx.world_size).abs().max())
                    for p, g in zip(model.parameters(), local)
                )
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        record[name] = {
            "before": before, "after_wrap": after_wrap,
            "final": [p.detach().clone() for p in model.parameters()],
            "batches": torch.cat(seen), "grad_error": grad_error,
            "deviation": ctx.max_param_deviation(model),
            "loss": ctx.all_reduce_mean({"loss": loss})["loss"],
        }
    # the Trainer under DDP: a non-finite loss on rank 1 makes every rank skip that step
    torch.manual_seed(100 + ctx.rank)
    model = _model()
    local_losses: dict[int, float] = {}
    trainer = Trainer(
        model, PoisonedBatches(TensorBatches(data, 4, seed=3, rank=ctx.rank,
                                             world_size=ctx.world_size), ctx.rank),
        steps=STEPS, optimization=Optimization(lr=1e-2), distributed=ctx, on_nonfinite="skip",
        out_dir=out_dir / "run", logging=Logging(every=1, progress=False),
        checkpointing=Checkpointing(every=1),  # and by time: a collective decision
        callbacks=[lambda tr, step, rec: local_losses.__setitem__(step, rec.get("loss"))])
    trainer.fit()
    record["trainer"] = {"final": [p.detach().clone() for p in model.parameters()],
                         "ema": [p.detach().clone() for p in trainer.ema.module.parameters()],
                         "skipped": trainer.skipped, "losses": local_losses,
                         "deviation": ctx.max_param_deviation(model)}
    # a run stopped after its step-2 checkpoint and restarted equals the uninterrupted run on
    # every rank: each rank's random stream (noise, jittered grids) is in the checkpoint
    def run(out: Path, steps: int, resume: bool = False) -> list[torch.Tensor]:
        torch.manual_seed(100 + ctx.rank)
        model = _model()
        trainer = Trainer(model, TensorBatches(data, 4, seed=3, rank=ctx.rank,
                                               world_size=ctx.world_size),
                          steps=steps, optimization=Optimization(lr=1e-2), distributed=ctx,
                          out_dir=out, checkpointing=Checkpointing(every=2),
                          logging=Logging(progress=False))
        if resume:
            torch.manual_seed(999 + ctx.rank)  # the restarted process's own seed must not matter
        trainer.fit(resume=resume)
        return [p.detach().clone() for p in model.parameters()]

    full = run(out_dir / "full", 4)
    run(out_dir / "resumed", 2)
    record["resume"] = {"full": full, "resumed": run(out_dir / "resumed", 4, resume=True)}
    torch.save(record, out_dir / f"rank{ctx.rank}.pt")
    ctx.barrier()
    ctx.close()


def _torchrun(*args: str) -> None:
    """Run ``torchrun --standalone --nproc_per_node 2 *args`` on the CPU; fail with its log."""
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


@pytest.mark.slow
def test_ddp_gloo_two_processes_identical_weights(tmp_path: Path) -> None:
    _torchrun(__file__, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["world_size"] == 2 and r0["backend"] == "gloo"
    assert r0["mean_rank"] == r1["mean_rank"] == 0.5
    for name in STRATEGIES:
        a, b = r0[name], r1[name]
        # ranks started from different weights; wrapping gave both rank 0's
        assert any(not torch.equal(x, y) for x, y in zip(a["before"], b["before"]))
        for x, y, z in zip(a["after_wrap"], b["after_wrap"], a["before"]):
            assert torch.equal(x, y) and torch.equal(x, z)
        # each step's gradient is the mean of the ranks' gradients (float64)
        assert a["grad_error"] < 1e-12 and b["grad_error"] < 1e-12, name
        # trained, and identical on both ranks
        assert any(not torch.equal(x, y) for x, y in zip(a["final"], a["after_wrap"]))
        for x, y in zip(a["final"], b["final"]):
            assert torch.equal(x, y), name
        assert a["deviation"] == b["deviation"] == 0.0
        # disjoint shards of each global batch
        rows0 = {tuple(row.tolist()) for row in a["batches"]}
        rows1 = {tuple(row.tolist()) for row in b["batches"]}
        assert len(rows0) == len(rows1) == 4 * STEPS and not rows0 & rows1
        assert a["loss"] == b["loss"] and torch.isfinite(torch.tensor(a["loss"]))

    # the Trainer: both ranks skipped the step poisoned on rank 1 only, and stayed in sync
    a, b = r0["trainer"], r1["trainer"]
    assert a["skipped"] == b["skipped"] == 1
    for x, y in zip(a["final"] + a["ema"], b["final"] + b["ema"]):
        assert torch.equal(x, y)
    assert a["deviation"] == 0.0
    # rank 0 alone logged, each step once, with the loss averaged over the ranks
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[1].get("skipped") and "some rank" in records[1]["reason"]
    for r in (records[0], records[2]):
        expected = (a["losses"][r["step"]] + b["losses"][r["step"]]) / 2
        assert abs(r["loss"] - expected) <= 1e-12 * abs(expected)
    assert (tmp_path / "run" / "checkpoint.pt").exists()

    # resumed after a checkpoint = uninterrupted, bit for bit, on both ranks
    for r in (r0, r1):
        assert all(torch.equal(x, y) for x, y in zip(r["resume"]["full"], r["resume"]["resumed"]))
    assert any(not torch.equal(x, y) for x, y in zip(r0["resume"]["full"], r0["trainer"]["final"]))


@pytest.mark.slow
def test_train_command_under_torchrun(tmp_path: Path) -> None:
    """``sdeflow train --preset cifar-b --smoke`` on two CPU processes: one log, one
    checkpoint, metrics averaged, weights identical on both ranks at the end, and each process
    trains ``train.batch_size`` images per step (the official per-GPU batch)."""
    data, out = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    write_tiny_cifar10_archive(data, n_train=24, n_test=8, seed=1)
    _torchrun("-m", "sdeflow", "train", "--preset", "cifar-b", "--smoke", "--data-dir",
              str(data), "--no-verify", "--out", str(out), "--set", "train.iterations=2",
              "--eval-size", "2", "--fid-samples", "0", "--no-progress", "--log-every", "1",
              "--plot-every", "2")
    results = json.loads((out / "metrics.json").read_text())
    assert results["world_size"] == 2 and results["params_in_sync"] is True
    assert results["steps"] == 2 and all(torch.isfinite(torch.tensor(results[k]))
                                         for k in ("bpd_elbo", "bpd_ode", "final_loss"))
    steps = [json.loads(line).get("step") for line in (out / "metrics.jsonl").open()
             if "loss" in json.loads(line)]
    assert steps == [1, 2]  # rank 0 alone writes
    assert (out / "samples" / "step_000002.png").exists() and (out / "checkpoint.pt").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"]["train"]["batch_size"] == 4  # per process: 8 images per step


def test_single_process_context() -> None:
    ctx = init_distributed("cpu", env={})
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.is_main, ctx.enabled) == \
        (0, 1, None, True, False)
    assert ctx.all_reduce_mean({"a": torch.tensor([1.0, 3.0]), "b": 4}) == {"a": 2.0, "b": 4.0}
    assert ctx.any(True) and not ctx.any(False)
    assert ctx.split_batch_size(100) == 100
    module = ctx.wrap(_model())
    assert isinstance(module, LossModule)
    loss, info = module(torch.randn(3, 4, dtype=torch.float64), 1)
    assert loss.shape == () and info["n_steps"] == 5
    ctx.close()


@pytest.mark.parametrize(("env", "match"), [
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_PORT": "1"}, "MASTER_ADDR"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE"),
    ({"WORLD_SIZE": "2", "RANK": "5", "LOCAL_RANK": "0", "MASTER_ADDR": "x",
      "MASTER_PORT": "1"}, "RANK=5"),
])
def test_bad_environment_is_named(env: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        init_distributed("cpu", env=env)


def test_split_batch_size_and_wrap_errors() -> None:
    ctx = DistributedContext(rank=0, world_size=3)
    with pytest.raises(ValueError, match="divisible by the world size 3"):
        ctx.split_batch_size(100)
    assert ctx.split_batch_size(99) == 33
    with pytest.raises(ValueError, match="no method 'elbo'"):
        LossModule(torch.nn.Linear(2, 2), "elbo")


@pytest.mark.parametrize("n", [1, 7, 10])
@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_shard_sampler_partitions(n: int, world_size: int, drop_last: bool) -> None:
    if drop_last and n < world_size:
        with pytest.raises(ValueError, match="drop_last"):
            ShardSampler(n, 0, world_size, drop_last=drop_last)
        return
    shards = [ShardSampler(n, r, world_size, seed=5, drop_last=drop_last)
              for r in range(world_size)]
    for s in shards:
        s.set_epoch(2)
    lists = [list(s) for s in shards]
    assert len({len(x) for x in lists}) == 1 and all(len(x) == len(shards[0]) for x in lists)
    flat = [i for x in lists for i in x]
    if drop_last:  # disjoint, nothing repeated
        assert len(set(flat)) == len(flat) == (n // world_size) * world_size
    else:  # everything covered; only the padding repeats
        assert set(flat) == set(range(n)) and len(flat) - n < world_size
    # a new epoch, a new permutation shared by the ranks
    again = ShardSampler(n, 0, world_size, seed=5, drop_last=drop_last)
    again.set_epoch(2)
    assert list(again) == lists[0]


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
