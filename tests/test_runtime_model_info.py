"""read_model_info: the contract's inputs/outputs/metadata, and clear errors naming the file."""

import numpy as np
import pytest

from retinamask.core.errors import InputError
from retinamask.formats.model_info import output_specs, read_model_info
from test_runtime_fakes import build_fake_model


@pytest.mark.parametrize("layout,rows", [("end2end", 10), ("seed", 1000)])
def test_reads_layout_size_batch_and_metadata(tmp_path, layout, rows):
    path = build_fake_model(tmp_path / "m.onnx", layout=layout, canvas_side=96)
    info = read_model_info(path)
    assert info.layout == layout and info.canvas_side == 96 and info.batch_size is None and info.dynamic_batch
    assert info.input_name == "input" and info.num_rows == rows
    assert [o.shape for o in info.outputs] == [(rows, 4), (rows,), (rows,), (rows, 1, 28, 28)]
    assert [o.dtype for o in info.outputs] == [np.float32, np.int32, np.float32, np.float32]
    assert info.class_names == ("red box", "white box") and info.pixel_mean[0] == pytest.approx(102.9801)
    assert info.supplied == ()
    assert info.summary()["outputs"][3]["shape"] == [rows, 1, 28, 28]


def test_fixed_batch(tmp_path):
    info = read_model_info(build_fake_model(tmp_path / "m.onnx", batch=2))
    assert info.batch_size == 2 and not info.dynamic_batch


def test_output_specs_sizes():
    boxes, labels, _scores, masks = output_specs("end2end")
    assert boxes.nbytes == 100 * 16 and labels.nbytes == 400 and masks.nbytes == 100 * 28 * 28 * 4
    assert output_specs("seed")[0].name == "bboxs" and output_specs("seed")[0].shape == (1000, 4)


def test_not_onnx(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x00\x01 this is not a protobuf at all" * 10)
    with pytest.raises(InputError) as e:
        read_model_info(path)
    assert e.value.path == str(path) and "not an ONNX model" in e.value.cause
    with pytest.raises(InputError, match="not found"):
        read_model_info(tmp_path / "missing.onnx")


def test_missing_metadata_names_keys_and_flags(tmp_path):
    path = build_fake_model(tmp_path / "m.onnx", layout="seed", metadata=False)
    with pytest.raises(InputError) as e:
        read_model_info(path)
    assert "retinamask.layout" in e.value.cause and "--layout" in e.value.cause
    assert "suggest seed" in e.value.cause  # output names bboxs, labels, scores, masks
    info = read_model_info(path, layout="seed")
    # the static input shape gives the size; the flag gave the layout
    assert info.layout == "seed" and info.canvas_side == 96 and set(info.supplied) == {"layout", "input_size"}


def test_disagreements_are_errors(tmp_path):
    path = build_fake_model(tmp_path / "m.onnx", layout="end2end", canvas_side=96)
    with pytest.raises(InputError, match="input size disagreement"):
        read_model_info(path, canvas_side=128)
    with pytest.raises(InputError, match="disagrees with the model's metadata"):
        read_model_info(path, layout="seed")
    bare = build_fake_model(tmp_path / "bare.onnx", layout="end2end", rows=10, metadata=False)
    with pytest.raises(InputError, match="wrong --layout"):
        read_model_info(bare, layout="seed")  # 10 rows cannot be the seed's 1000
