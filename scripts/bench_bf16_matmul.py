r"""Are bf16 projections faster than fp32 on this CPU? Check before choosing `--base_dtype` for a long SFT run.

    python scripts/bench_bf16_matmul.py [--model smollm2-135m-instruct] [--tokens 504] [--repeats 30]

Builds one decoder layer's projections with the model's shapes (SmolLM2-135M: q/o 576x576, k/v 576x192, gate/up
576x1536, down 1536x576), converts a copy with `llmrec.model.bf16_projections` (bf16 weights, input cast to bf16,
output back to fp32: what `--base_dtype bfloat16` trains with) and times a forward + backward pass through all seven
on `--tokens` rows (a `sequence` batch: 8 runs of ~63 tokens), the two copies alternating, median over the repeats.
Only the input gets a gradient, as in LoRA training, where the frozen weights get none. bf16 speed depends on the
CPU's matrix units, not on whether it lists a bf16 instruction: one row per CPU model is kept in
`eval/results/bf16_matmul.json` (a new machine adds its row) and the table in `bf16_matmul.md`.
"""

import argparse
import copy
import json
import statistics
import time

import torch
from bench_base_dtype import cpu_name  # scripts/ is on sys.path when this file runs as a script
from bench_quality import RESULTS, save_bench
from transformers import AutoConfig

from llmrec.model import DEFAULT_MODEL, bf16_projections, resolve_model_path

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
STEM = "bf16_matmul"


def projection_layer(hidden: int, intermediate: int, kv_width: int) -> torch.nn.Module:
    """One decoder layer's seven projections, named `layers.0.<name>` as in a HF decoder so that
    `bf16_projections` finds them; forward runs them in sequence with the attention and MLP shapes."""

    class Layer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            shapes = {
                "q_proj": (hidden, hidden), "k_proj": (hidden, kv_width), "v_proj": (hidden, kv_width),
                "o_proj": (hidden, hidden), "gate_proj": (hidden, intermediate), "up_proj": (hidden, intermediate),
                "down_proj": (intermediate, hidden),
            }  # fmt: skip
            self.layers = torch.nn.ModuleList(
                [torch.nn.ModuleDict({name: torch.nn.Linear(i, o, bias=False) for name, (i, o) in shapes.items()})]
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (T, hidden)
            # Not a real attention: every projection runs once on its real input width, which is what is timed.
            layer = self.layers[0]
            attention = layer["o_proj"](layer["q_proj"](x)) + layer["k_proj"](x).sum() + layer["v_proj"](x).sum()
            return layer["down_proj"](layer["gate_proj"](attention) * layer["up_proj"](attention))  # (T, hidden)

    return Layer().requires_grad_(False)


def time_pass(layer: torch.nn.Module, x: torch.Tensor) -> float:
    """Seconds for one forward + backward (gradient to the input only)."""
    started = time.perf_counter()
    inputs = x.detach().requires_grad_(True)
    layer(inputs).sum().backward()
    return time.perf_counter() - started


def measure(hidden: int, intermediate: int, kv_width: int, tokens: int, repeats: int, seed: int = 0) -> dict:
    """Median milliseconds per layer pass in fp32 and with bf16 projections, alternating the two."""
    torch.manual_seed(seed)
    fp32 = projection_layer(hidden, intermediate, kv_width)
    bf16 = copy.deepcopy(fp32)
    converted = bf16_projections(bf16, list(PROJECTIONS))
    x = torch.randn(tokens, hidden)  # (T, hidden)
    for _ in range(3):  # warm-up: kernel selection, allocator
        time_pass(fp32, x), time_pass(bf16, x)
    times = {"float32": [], "bfloat16": []}
    for _ in range(repeats):
        times["float32"].append(time_pass(fp32, x))
        times["bfloat16"].append(time_pass(bf16, x))
    fp32_ms, bf16_ms = (1000 * statistics.median(times[name]) for name in ("float32", "bfloat16"))
    return {
        "converted_projections": converted,
        "float32_ms": round(fp32_ms, 3),
        "bfloat16_ms": round(bf16_ms, 3),
        "bf16_speedup": round(fp32_ms / bf16_ms, 3),
    }


def merge_row(saved: dict, row: dict) -> dict:
    """`saved` with this CPU's row replaced or added; rows are kept sorted by CPU name."""
    rows = {entry["cpu"]: entry for entry in saved.get("rows", [])}
    rows[row["cpu"]] = row
    return {"rows": [rows[name] for name in sorted(rows)]}


def markdown(result: dict) -> str:
    lines = [
        "One decoder layer's seven projections (forward + backward to the input), fp32 against bf16 weights with fp32 "
        "inputs and outputs (`llmrec.model.bf16_projections`, what `--base_dtype bfloat16` trains with); median "
        "milliseconds per pass, one row per CPU model. A speed-up below 1 means keep `--base_dtype float32` there.",
        "",
        "| CPU | torch | ISA | threads | model | tokens | fp32 ms | bf16 ms | bf16 speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['cpu']} | {row['torch']} | {row['cpu_capability']} | {row['threads']} | {row['model']} | "
            f"{row['tokens']} | {row['float32_ms']} | {row['bfloat16_ms']} | {row['bf16_speedup']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="HF name or path whose layer shapes are timed")
    parser.add_argument("--tokens", type=int, default=504, help="rows per pass (batch x sequence length)")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    if args.tokens < 1 or args.repeats < 1:
        parser.error(f"--tokens and --repeats must be >= 1, got {args.tokens} and {args.repeats}")
    config = AutoConfig.from_pretrained(resolve_model_path(args.model))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_width = head_dim * (config.num_key_value_heads or config.num_attention_heads)
    row = {
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "model": args.model,
        "tokens": args.tokens,
        "repeats": args.repeats,
        **measure(config.hidden_size, config.intermediate_size, kv_width, args.tokens, args.repeats),
    }
    path = RESULTS / f"{STEM}.json"
    saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    result = merge_row(saved, row)
    save_bench(STEM, result, markdown(result))


if __name__ == "__main__":
    main()
