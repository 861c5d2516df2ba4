"""bench_bf16_matmul: the timed layer is the real `bf16_projections` conversion of all seven projections, both
copies compute the same function, and rows are kept per CPU."""

import pytest
import torch

from tests.conftest import load_script

bench = load_script("bench_bf16_matmul")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_layer_has_every_projection_and_bf16_copy_matches_fp32():
    torch.manual_seed(0)
    layer = bench.projection_layer(hidden=16, intermediate=24, kv_width=8)
    converted = bench.copy.deepcopy(layer)
    assert bench.bf16_projections(converted, list(bench.PROJECTIONS)) == 7
    weights = {name: module.weight for name, module in converted.named_modules() if hasattr(module, "weight")}
    assert len(weights) == 7 and all(weight.dtype == torch.bfloat16 for weight in weights.values())
    x = torch.randn(5, 16)  # (T, hidden)
    reference, rounded = layer(x), converted(x)
    assert rounded.dtype == torch.float32 and rounded.shape == (5, 16)
    assert torch.allclose(rounded, reference, rtol=0.1, atol=0.1 * reference.abs().max().item())
    inputs = x.clone().requires_grad_(True)
    converted(inputs).sum().backward()
    assert inputs.grad is not None and all(weight.grad is None for weight in weights.values())


def test_measure_reports_both_dtypes_and_their_ratio():
    row = bench.measure(hidden=16, intermediate=24, kv_width=8, tokens=4, repeats=3)
    assert row["converted_projections"] == 7
    assert row["float32_ms"] > 0 and row["bfloat16_ms"] > 0
    assert row["bf16_speedup"] == pytest.approx(row["float32_ms"] / row["bfloat16_ms"], rel=0.01)


def test_rows_are_kept_per_cpu_and_tabled():
    fields = {"torch": "2.13.0", "cpu_capability": "AVX512", "threads": 2, "model": "m", "tokens": 504}
    first = {"cpu": "B cpu", **fields, "float32_ms": 11.0, "bfloat16_ms": 13.2, "bf16_speedup": 0.833}
    other = {"cpu": "A cpu", **fields, "float32_ms": 9.0, "bfloat16_ms": 6.0, "bf16_speedup": 1.5}
    result = bench.merge_row(bench.merge_row({}, first), other)
    assert [row["cpu"] for row in result["rows"]] == ["A cpu", "B cpu"]
    rerun = bench.merge_row(result, {**first, "bf16_speedup": 0.9})
    assert len(rerun["rows"]) == 2 and rerun["rows"][1]["bf16_speedup"] == 0.9
    table = bench.markdown(rerun)
    assert "| A cpu | 2.13.0 | AVX512 | 2 | m | 504 | 9.0 | 6.0 | 1.50x |" in table
    assert "| B cpu | 2.13.0 | AVX512 | 2 | m | 504 | 11.0 | 13.2 | 0.90x |" in table
