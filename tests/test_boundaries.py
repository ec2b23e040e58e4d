"""The toy world is a plugin: general code (decoding, drafters, models, training, the bench) never
imports it, and everything still finds the toy targets and default inputs through mmvsd.plugins."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mmvsd"
GENERAL = ["decoding", "drafters", "models", "training", "bench.py"]


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def test_general_code_imports_nothing_from_the_toy_world():
    files = [f for part in GENERAL for f in ([PACKAGE / part] if part.endswith(".py") else (PACKAGE / part).rglob("*.py"))]
    assert len(files) > 20
    leaks = {str(f.relative_to(PACKAGE)): sorted(m for m in imported_modules(f) if m.startswith("mmvsd.toyworld"))
             for f in files}
    assert not {f: m for f, m in leaks.items() if m}


def test_the_toy_world_loads_only_when_a_plugin_table_is_asked():
    code = ("import sys, mmvsd.bench, mmvsd.train, mmvsd.models, mmvsd.decoding, mmvsd.drafters, mmvsd.training.vsd; "
            "assert not [m for m in sys.modules if m.startswith('mmvsd.toyworld')], 'imported early'; "
            "from mmvsd.plugins import target_folder, default_inputs; "
            "print(target_folder('toy-s').name, len(default_inputs().prompts) > 0, target_folder('nope'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.split() == ["toy-s", "True", "None"], result.stderr
