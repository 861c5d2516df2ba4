"""The dependency rule (STYLE.md section 1): `llmrec` never imports `tokenizer`, `eval` or `scripts`.

Only the composition roots, `llmrec/cli.py` and `llmrec/demo.py`, call into them, lazily inside functions.
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPOSITION_ROOTS = {"cli.py", "demo.py"}
FORBIDDEN = {"tokenizer", "eval", "scripts"}


def _imported_top_levels(tree: ast.AST, module_level_only: bool) -> set[str]:
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_library_modules_do_not_import_tokenizer_or_eval():
    offenders = {}
    for path in sorted((ROOT / "llmrec").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        only_top = path.parent.name == "llmrec" and path.name in COMPOSITION_ROOTS
        bad = _imported_top_levels(tree, module_level_only=only_top) & FORBIDDEN
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


def test_importing_llmrec_and_its_cli_loads_neither():
    code = (
        "import sys, llmrec, llmrec.cli; print(sorted(m for m in ('eval.metrics', 'tokenizer') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_required_top_level_layout():
    for name in ("pyproject.toml", "README.md", "llmrec", "tokenizer", "prompts", "tests", "scripts", "eval"):
        assert (ROOT / name).exists(), name
