"""Fine-tuning: a fresh run started from another run's weights (MODEL.WEIGHT, --init-weights)
loads the tensors that fit, keeps the fresh initialization of the others, and says which."""

import logging

import pytest
import torch
from torch import nn

from retinamask.config import load_config
from retinamask.core.errors import CheckpointError
from retinamask.engine.train_run import train
from retinamask.modeling.checkpoint import load_matching, read_checkpoint
from test_training import TINY_YAML

NEW_LAYER = ("mask.feature_extractor.mask_fcn3.weight", "mask.feature_extractor.mask_fcn3.bias")


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    from retinamask.data.shapes import generate_shapes_dataset

    root = tmp_path_factory.mktemp("shapes")
    generate_shapes_dataset(root, num_train=4, num_val=1, seed=11, max_objects=3)
    return root


def _config(tmp_path, opts=()):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML)
    return load_config(path, list(opts))


def _weights(checkpoint):
    return read_checkpoint(checkpoint)["model"]


def test_a_fresh_run_starts_from_the_weights_that_fit(shapes_dir, tmp_path, caplog):
    base = _weights(train(_config(tmp_path), shapes_dir, tmp_path / "base", max_iter=2, num_workers=0, progress=False))

    deeper = ["MODEL.ROI_MASK_HEAD.CONV_LAYERS", "(16, 16, 16)"]
    fresh = _weights(train(_config(tmp_path, deeper), shapes_dir, tmp_path / "fresh", max_iter=0, progress=False))
    weight = str(tmp_path / "base" / "model_final.pth")
    with caplog.at_level(logging.INFO, logger="retinamask.engine.trainer"):
        tuned_path = train(
            _config(tmp_path, [*deeper, "MODEL.WEIGHT", weight]), shapes_dir, tmp_path / "tuned", max_iter=0
        )
    tuned = _weights(tuned_path)

    assert set(tuned) - set(base) == set(NEW_LAYER)
    for key, value in tuned.items():
        expected = base[key] if key in base else fresh[key]  # the new conv: the seed's own initialization
        assert torch.equal(value, expected), key
    assert any(not torch.equal(base[k], fresh[k]) for k in base)  # the two starts really differ
    assert f"initialized {len(base)} of {len(tuned)} tensors" in caplog.text
    assert "mask_fcn3.weight" in caplog.text
    assert weight == load_config(tmp_path / "tuned" / "config.yaml").MODEL.WEIGHT  # provenance

    # a resumed run continues its own checkpoint and ignores MODEL.WEIGHT
    resumed = _weights(
        train(_config(tmp_path, deeper + ["MODEL.WEIGHT", weight]), shapes_dir, tmp_path / "fresh", max_iter=0)
    )
    assert all(torch.equal(resumed[k], fresh[k]) for k in fresh)


def test_weights_of_another_architecture_are_refused_by_name():
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(CheckpointError, match="no tensor of the checkpoint fits") as e:
        load_matching(model, {"head.weight": torch.zeros(4, 3, 3, 3)}, "other.pth")
    assert "other.pth" in str(e.value)
    loaded, new, reshaped = load_matching(
        model, {"0.weight": torch.ones(4, 3, 3, 3), "0.bias": torch.ones(5), "extra": torch.ones(1)}
    )
    assert (loaded, new) == (["0.weight"], [])
    assert reshaped == ["0.bias: checkpoint (5,) vs model (4,)"]
    assert torch.equal(model[0].weight, torch.ones(4, 3, 3, 3))


def test_cli_names_an_init_weights_file_that_is_not_a_checkpoint(shapes_dir, tmp_path, capsys):
    from retinamask.cli import main

    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_YAML)
    bad = tmp_path / "notes.pth"
    bad.write_text("not a checkpoint")
    code = main(
        ["train", "--config", str(config), "--data", str(shapes_dir), "--output", str(tmp_path / "run")]
        + ["--init-weights", str(bad), "--workers", "0", "--max-iter", "1"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not a readable PyTorch checkpoint" in err
    assert not (tmp_path / "run" / "model_final.pth").exists()
