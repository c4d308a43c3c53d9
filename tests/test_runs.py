"""The run folder's rules (``sdeflow.runs.folder``): what a training command does with its
``--out``, decided before anything is written or deleted."""

from __future__ import annotations

import json

import pytest
import torch

from sdeflow.recipes import apply_overrides, load_recipe
from sdeflow.runs import (
    RUN_FILES,
    RunError,
    clear_run,
    plan_run,
    read_run_config,
    recipe_differences,
    write_run_config,
)
from sdeflow.training.checkpoint import save_checkpoint


def config(*overrides: str, seed: int = 0) -> dict:
    return {"recipe": apply_overrides(load_recipe("toy-2d"), list(overrides)), "seed": seed}


def test_a_new_folder_and_an_empty_one_start_a_run(tmp_path):
    assert plan_run(tmp_path / "a" / "b", config()).action == "new"
    assert plan_run(tmp_path, config()).action == "new"
    assert not (tmp_path / "a").exists()  # planning writes nothing


def test_the_same_run_resumes_from_its_checkpoint_step(tmp_path):
    write_run_config(tmp_path, config())
    plan = plan_run(tmp_path, config())
    assert (plan.action, plan.step) == ("resume", 0)  # killed before its first checkpoint
    save_checkpoint({"step": 7}, tmp_path / "checkpoint.pt")
    plan = plan_run(tmp_path, config())
    assert (plan.action, plan.step) == ("resume", 7)
    assert plan.message == f"resuming {tmp_path} at step 7 of 3000"


def test_more_iterations_extend_fewer_than_the_step_are_refused(tmp_path):
    write_run_config(tmp_path, config("train.iterations=10"))
    save_checkpoint({"step": 10}, tmp_path / "checkpoint.pt")
    assert plan_run(tmp_path, config("train.iterations=10")).action == "finished"
    assert plan_run(tmp_path, config("train.iterations=20")).action == "extend"
    with pytest.raises(RunError, match="is at step 10; train.iterations=5 would end before it"):
        plan_run(tmp_path, config("train.iterations=5"))


def test_another_recipe_or_seed_is_refused_with_the_differing_keys(tmp_path):
    write_run_config(tmp_path, config())
    with pytest.raises(RunError, match=r"grid.t0: 0.001 -> 0.002; seed: 0 -> 1"):
        plan_run(tmp_path, config("grid.t0=0.002", seed=1))
    assert plan_run(tmp_path, config("grid.t0=0.002"), overwrite=True).action == "overwrite"


def test_differences_list_added_and_removed_keys():
    assert recipe_differences({"a": {"x": 1}}, {"a": {"x": 1, "y": 2}, "b": 3}) == {
        "a.y": (None, 2), "b": (None, 3)}
    assert recipe_differences(config()["recipe"], config()["recipe"]) == {}


def test_clear_run_deletes_run_files_only(tmp_path):
    write_run_config(tmp_path, config())
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "eval" / "3").mkdir(parents=True)
    (tmp_path / "mine.txt").write_text("keep")
    deleted = clear_run(tmp_path)
    assert set(deleted) == {"config.json", "metrics.jsonl", "eval"} <= set(RUN_FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_a_folder_of_other_files_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(RunError, match="holds files but no config.json"):
        plan_run(tmp_path, config())
    file = tmp_path / "notes.txt"
    with pytest.raises(RunError, match="is a file, not a folder"):
        plan_run(file, config())


def test_config_round_trip_and_a_broken_config(tmp_path):
    write_run_config(tmp_path, config(seed=4))
    saved = read_run_config(tmp_path)
    assert saved["seed"] == 4 and saved["format"] == 2
    assert saved["recipe"] == json.loads(json.dumps(config()["recipe"]))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_run_config(tmp_path)
    with pytest.raises(RunError, match="not valid JSON.*--overwrite"):
        plan_run(tmp_path, config())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_run_config(tmp_path / "missing")


def test_checkpoints_are_plain_torch_files(tmp_path):
    path = save_checkpoint({"step": 2, "w": torch.ones(3)}, tmp_path / "checkpoint.pt")
    state = torch.load(path, weights_only=True)
    assert state["step"] == 2 and torch.equal(state["w"], torch.ones(3))


def test_each_process_trains_the_recipes_batch():
    """``train.batch_size`` is the batch of each process (the official per-GPU batch)."""
    from sdeflow.runs import DataSource, load_run_data

    recipe = config("data.dataset=moons", "data.train_size=64", "data.val_size=8",
                    "train.batch_size=10")["recipe"]
    data = load_run_data(recipe, DataSource(), seed=0)
    for rank in (0, 1):
        batch = data.batches(recipe, seed=0, rank=rank, world_size=2).next_batch()
        assert batch.shape == (10, 2)
