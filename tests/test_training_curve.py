"""The training curve: metrics.jsonl (window-mean losses, periodic evaluations), the PNG, and that
evaluating during training neither changes the run nor survives a resume twice."""

import json

import pytest
import torch
from PIL import Image

from retinamask.config import load_config
from retinamask.engine import trainer as trainer_module
from retinamask.engine.train_metrics import read_metrics
from retinamask.engine.train_run import evaluate_checkpoint, train
from retinamask.modeling.checkpoint import read_checkpoint
from test_training import TINY_YAML

pytestmark = pytest.mark.filterwarnings("ignore:no detections to evaluate")


@pytest.fixture()
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML)
    return load_config(path)


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    from retinamask.data.shapes import generate_shapes_dataset

    root = tmp_path_factory.mktemp("shapes")
    generate_shapes_dataset(root, num_train=6, num_val=3, seed=5, max_objects=4)
    return root


def _record_steps(monkeypatch):
    """Wrap Trainer.train_step; returns the list of (iteration, losses) it produced."""
    steps, original = [], trainer_module.Trainer.train_step

    def recording(self, *args):
        values = original(self, *args)
        steps.append((self.iteration, values))
        return values

    monkeypatch.setattr(trainer_module.Trainer, "train_step", recording)
    return steps


def test_metrics_hold_window_means_and_the_evaluations_of_the_current_weights(
    tiny_config, shapes_dir, tmp_path, monkeypatch
):
    steps = _record_steps(monkeypatch)
    out = tmp_path / "run"
    final = train(tiny_config, shapes_dir, out, num_workers=0, progress=False, log_period=3, eval_period=2)
    records = read_metrics(out / "metrics.jsonl")

    losses = [r for r in records if "loss" in r]
    assert [r["iteration"] for r in losses] == [3, 4]  # every 3 iterations, and the last
    for record, window in zip(losses, (steps[0:3], steps[3:4])):
        for key in ("loss", "loss_retina_cls", "loss_retina_reg", "loss_mask"):
            assert record[key] == pytest.approx(sum(v[key] for _, v in window) / len(window), rel=1e-12), key
        assert record["it_per_s"] > 0 and record["lr"] > 0

    evals = [r for r in records if "bbox_AP" in r]
    assert [(r["iteration"], r["split"], r["images"]) for r in evals] == [(2, "val", 3), (4, "val", 3)]
    # the last evaluation is the final weights' own evaluation, made independently afterwards
    report = evaluate_checkpoint(final, out, shapes_dir)
    assert evals[-1]["bbox_AP"] == pytest.approx(report["bbox"]["AP"], abs=1e-12)
    assert evals[-1]["segm_AP"] == pytest.approx(report["segm"]["AP"], abs=1e-12)

    with Image.open(out / "training_curve.png") as png:
        assert png.format == "PNG" and png.size == (800, 650)
        assert len(png.convert("RGB").getcolors(maxcolors=1 << 20)) > 10  # something is drawn


def test_evaluating_during_training_does_not_change_the_run(tiny_config, shapes_dir, tmp_path):
    plain = read_checkpoint(train(tiny_config, shapes_dir, tmp_path / "a", num_workers=0, progress=False))
    evaluated = read_checkpoint(
        train(tiny_config, shapes_dir, tmp_path / "b", num_workers=0, progress=False, eval_period=1)
    )
    for key, value in plain["model"].items():
        assert torch.equal(evaluated["model"][key], value), key
    assert not (tmp_path / "a" / "training_curve.png").exists()  # no evaluation: no PNG, the losses still logged
    assert [r["iteration"] for r in read_metrics(tmp_path / "a" / "metrics.jsonl")] == [4]


def test_a_resumed_run_keeps_one_line_per_iteration(tiny_config, shapes_dir, tmp_path, monkeypatch):
    reference = read_metrics(
        train(tiny_config, shapes_dir, tmp_path / "a", num_workers=0, progress=False, log_period=1).parent
        / "metrics.jsonl"
    )
    original = trainer_module.Trainer.train_step

    def step_then_die(self, *args):
        if self.iteration == 3:  # iteration 3 is logged, the newest checkpoint is model_0000002.pth
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", step_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config, shapes_dir, tmp_path / "b", num_workers=0, progress=False, log_period=1)
    assert [r["iteration"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl")] == [1, 2, 3]
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 4, "lo')  # a line torn by the interruption is skipped, then dropped
    monkeypatch.setattr(trainer_module.Trainer, "train_step", original)
    train(tiny_config, shapes_dir, tmp_path / "b", num_workers=0, progress=False, log_period=1)

    resumed = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["iteration"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(reference, resumed):  # exact resume: the same losses and learning rates
        assert {k: v for k, v in a.items() if k != "it_per_s"} == {k: v for k, v in b.items() if k != "it_per_s"}
    assert json.loads((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()[-1])["iteration"] == 4


def test_a_missing_evaluation_split_is_reported_before_training(tmp_path, capsys):
    from retinamask.cli import main
    from retinamask.data.shapes import generate_shapes_dataset

    generate_shapes_dataset(tmp_path / "data", num_train=2, num_val=0, seed=1, max_objects=2)
    (tmp_path / "tiny.yaml").write_text(TINY_YAML)
    args = ["train", "--config", str(tmp_path / "tiny.yaml"), "--data", str(tmp_path / "data"), "--output"]
    assert main([*args, str(tmp_path / "run"), "--eval-period", "2", "--eval-split", "holdout"]) == 2
    err = capsys.readouterr().err
    assert "instances_holdout.json" in err and "--eval-period" in err
    assert not (tmp_path / "run" / "config.yaml").exists()  # nothing was trained
