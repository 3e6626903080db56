"""retinamask bench: ais_bench-style pure inference stats, JSON output and the --compare table."""

import json

import pytest

from retinamask.cli import main
from retinamask.runtime.auto_backend import choose_backend
from retinamask.runtime.bench import latency_stats, run_benchmark
from test_runtime_fakes import build_fake_model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return build_fake_model(tmp_path_factory.mktemp("model") / "m.onnx", canvas_side=64)


def test_latency_stats():
    stats = latency_stats([10.0, 20.0, 30.0, 40.0], batch_size=2)
    assert stats["mean_ms"] == 25.0 and stats["p50_ms"] == 25.0 and stats["min_ms"] == 10.0
    assert stats["throughput"] == pytest.approx(80.0)
    assert stats["NPU_compute_time"]["percentile(99%)"] == pytest.approx(39.7)


def test_cli_prints_stats_and_writes_json(tmp_path, model_path, capsys):
    out = tmp_path / "bench.json"
    code = main(
        ["bench", "--model", str(model_path), "--loop", "5", "--warmup", "1", "--batchsize", "2", "--json", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    expected = choose_backend("fp32", "cpu").backend  # --backend auto, the default
    assert f"{expected}-cpu-fp32" in printed and "p90" in printed and "throughput 1000*batchsize(2)" in printed
    result = json.loads(out.read_text())
    assert result["loop"] == 5 and result["batchsize"] == 2 and result["mean_ms"] > 0
    assert result["throughput"] == pytest.approx(2000.0 / result["mean_ms"])


def test_fixed_batch_model_refuses_another_batch(tmp_path, capsys):
    fixed = build_fake_model(tmp_path / "fixed.onnx", canvas_side=64, batch=2)
    assert run_benchmark(fixed, loop=2, warmup=0, batch_size=None)["batchsize"] == 2
    assert main(["bench", "--model", str(fixed), "--loop", "2", "--batchsize", "4"]) == 2
    assert "fixed batch of 2" in capsys.readouterr().err


def test_compare_prints_one_markdown_table(tmp_path, model_path, capsys):
    out = tmp_path / "compare.json"
    assert (
        main(["bench", "--model", str(model_path), "--compare", "--loop", "3", "--warmup", "1", "--json", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith("|")]
    assert table[0].startswith("| backend | device | precision |")
    rows = json.loads(out.read_text())["rows"]
    assert len(table) == 2 + len(rows)
    by_key = {(r["backend"], r["device"], r["precision"]): r for r in rows}
    assert by_key[("onnxruntime", "cpu", "fp32")]["mean_ms"] > 0
    assert "error" in by_key[("onnxruntime", "cuda", "fp32")] or by_key[("onnxruntime", "cuda", "fp32")]["mean_ms"] > 0
    # the row --backend auto runs is marked, and one line says why
    chosen = [r for r in rows if r.get("auto")]
    assert [(r["backend"], r["device"], r["precision"]) for r in chosen] == [
        (choose_backend("fp32", "cpu").backend, "cpu", "fp32")
    ]
    assert f"--backend auto (the default) runs {chosen[0]['backend']} cpu fp32" in printed
