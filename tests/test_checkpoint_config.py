"""Checkpoint loading/saving and config errors."""

import os
import pickle

import pytest
import torch

from retinamask.config import load_config, shipped_configs
from retinamask.core.errors import CheckpointError, ConfigError
from retinamask.modeling import build_model
from retinamask.modeling.checkpoint import load_checkpoint, read_state_dict, save_checkpoint
from tiny_model import TINY_OPTS


@pytest.fixture(scope="module")
def tiny_model():
    return build_model(load_config("retinanet_mask_R-50-FPN_2x_adjust_std011_ms", TINY_OPTS))


def _randomised(model):
    torch.manual_seed(0)
    return {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}


def test_upstream_wrapped_module_prefixed_checkpoint_loads(tmp_path, tiny_model):
    state = _randomised(tiny_model)
    path = tmp_path / "model_0020001.pth"
    torch.save(
        {
            "model": {f"module.{k}": v for k, v in state.items()},
            "optimizer": {"state": {}, "param_groups": []},
            "scheduler": {"last_epoch": 5},
            "iteration": 20001,
        },
        path,
    )
    fresh = build_model(load_config("retinanet_mask_R-50-FPN_2x_adjust_std011_ms", TINY_OPTS))
    load_checkpoint(fresh, path)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_bare_state_dict_loads_and_save_round_trips(tmp_path, tiny_model):
    state = _randomised(tiny_model)
    bare = tmp_path / "bare.pth"
    torch.save(state, bare)
    model = build_model(load_config("retinanet_mask_R-50-FPN_2x_adjust_std011_ms", TINY_OPTS))
    load_checkpoint(model, bare)
    saved = tmp_path / "saved.pth"
    save_checkpoint(saved, model, iteration=7)
    raw = torch.load(saved, weights_only=True)
    assert raw["iteration"] == 7 and set(raw["model"]) == set(state)
    assert all(torch.equal(read_state_dict(saved)[k], state[k]) for k in state)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_wrong_shape_and_missing_keys_are_named_in_one_message(tmp_path, tiny_model):
    state = _randomised(tiny_model)
    state["rpn.head.cls_logits.weight"] = torch.zeros(7, 32, 3, 3)
    del state["mask.predictor.mask_fcn_logits.bias"]
    state["rpn.head.extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tiny_model, path)
    message = str(err.value)
    assert str(path) in message
    assert "missing keys: mask.predictor.mask_fcn_logits.bias" in message
    assert "unexpected keys: rpn.head.extra.weight" in message
    assert "rpn.head.cls_logits.weight: checkpoint (7, 32, 3, 3) vs model (27, 32, 3, 3)" in message


def test_config_that_does_not_match_the_checkpoint(tmp_path, tiny_model):
    path = tmp_path / "tiny.pth"
    save_checkpoint(path, tiny_model)
    r50 = build_model(load_config("retinanet_mask_R-50-FPN_2x_adjust_std011_ms"))
    with pytest.raises(CheckpointError, match="does not match the model built from the config"):
        load_checkpoint(r50, path)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickled_arbitrary_object_is_refused_never_executed(tmp_path, tiny_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    payload = {"model": tiny_model.state_dict(), "payload": _RunsCode()}
    torch.save(payload, tmp_path / "evil.pth")
    with open(tmp_path / "evil_raw.pkl", "wb") as f:
        pickle.dump(payload, f, protocol=2)
    for name in ("evil.pth", "evil_raw.pkl"):
        with pytest.raises(CheckpointError, match=r"refused: .*GLOBAL"):
            read_state_dict(tmp_path / name)
    assert not (tmp_path / "pwned").exists()


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_state_dict(path)


def test_unknown_config_key_names_key_and_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("MODEL:\n  BACKBONE:\n    CONV_BODYY: R-50-FPN\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "MODEL.BACKBONE.CONV_BODYY" in str(err.value) and str(path) in str(err.value)
    assert "CONV_BODY" in str(err.value)  # the suggestion


def test_wrong_value_type_names_key_and_file(tmp_path):
    path = tmp_path / "type.yaml"
    path.write_text("RETINANET:\n  NUM_MASKS_TEST: fifty\n")
    with pytest.raises(ConfigError, match=r"RETINANET.NUM_MASKS_TEST expects int"):
        load_config(path)
    with pytest.raises(ConfigError, match="command line"):
        load_config(None, ["SOLVER.BASE_LR", "fast"])


def test_every_upstream_config_loads_and_matches_the_effective_config(reference_dir):
    import yaml

    for path in sorted((reference_dir / "configs").glob("*.yaml")):
        load_config(path)
    cfg = load_config(
        reference_dir / "configs" / "retinanet_mask_R-50-FPN_2x_adjust_std011_ms.yaml", ["MODEL.DEVICE", "cpu"]
    )
    effective = yaml.safe_load((reference_dir / "retinamask_R-50-FPN_effective_config.yaml").read_text())

    def compare(ours, theirs, prefix=""):
        for key, value in theirs.items():
            if key == "PATHS_CATALOG":
                continue
            assert key in ours, f"{prefix}{key} missing"
            if isinstance(value, dict):
                compare(ours[key], value, f"{prefix}{key}.")
            else:
                mine = list(ours[key]) if isinstance(ours[key], tuple) else ours[key]
                assert mine == value, f"{prefix}{key}: {mine!r} != {value!r}"

    compare(cfg, effective)


def test_shipped_configs_build_models_with_the_original_names(reference_dir):
    import json

    spec = json.loads((reference_dir / "retinamask_R-50-FPN_state_dict_spec.json").read_text())
    names = {"R-50": [n for n, _, _ in spec]}
    assert {
        "retinanet_mask_R-50-FPN_2x_adjust_std011_ms.yaml",
        "retinanet_mask_R-101-FPN_2x_adjust_std011_ms.yaml",
        "retinanet_mask_R-50-FPN_2x_adjust_std011_ms_gn.yaml",
        "retinanet_mask_R-101-FPN_2x_adjust_std011_ms_gn.yaml",
    } <= set(shipped_configs())
    r50 = build_model(load_config("retinanet_mask_R-50-FPN_2x_adjust_std011_ms")).state_dict()
    assert list(r50) == names["R-50"]
    r101 = build_model(load_config("retinanet_mask_R-101-FPN_2x_adjust_std011_ms")).state_dict()
    assert "backbone.body.layer3.22.conv3.weight" in r101 and "backbone.body.layer3.23.conv1.weight" not in r101
    gn = build_model(load_config("retinanet_mask_R-50-FPN_2x_adjust_std011_ms_gn")).state_dict()
    # GroupNorm sits after each tower conv: conv indices 0, 3, 6, 9 and GN at 1, 4, 7, 10
    assert "rpn.head.cls_tower.1.weight" in gn and "rpn.head.cls_tower.9.weight" in gn
    assert gn["rpn.head.bbox_tower.10.weight"].shape == (256,)
