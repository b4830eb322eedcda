"""The dependency direction of DESIGN.md's layout, checked on the source with `ast`.

core <- sim, perception, planning, control <- pipeline: `core` imports nothing of ours, the
four stage packages import only `core` (and themselves), and nothing but the application
imports `pipeline`. Imports inside functions count too: dodging a cycle there is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("sim", "perception", "planning", "control")
# What each package may import of ours, besides itself.
ALLOWED = {"core": set(), **{name: {"core"} for name in STAGES}, "pipeline": {"core", *STAGES}}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import of a `stagepilot.*` module in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            if node.module == "stagepilot":  # `from stagepilot import sim` names a package
                found += [(node.lineno, f"stagepilot.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name == "stagepilot" or name.startswith("stagepilot.")]


def layer_violations(root: Path) -> list[str]:
    """One line per import against the direction, naming the module, the line and the import."""
    lines = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            module = path.relative_to(root).with_suffix("").as_posix().replace("/", ".")
            for line, name in _imports(path):
                parts = name.split(".")
                target = parts[1] if len(parts) > 1 else None
                if target is None or target == "configs" or target == package or target in allowed:
                    continue
                if target == "__version__" and package == "pipeline":
                    continue
                lines.append(f"stagepilot.{module} (line {line}) imports {name}: "
                             f"{package} may import only {sorted(allowed | {package}) or 'nothing of ours'}")
    return lines


def test_every_import_follows_the_layer_direction():
    violations = layer_violations(ROOT)
    assert not violations, "imports against core <- sim/perception/planning/control <- pipeline:\n" + "\n".join(violations)


@pytest.mark.parametrize("package, bad_import, named", [
    ("core", "from stagepilot.sim.world import EmbeddedSimulator", "stagepilot.sim.world"),
    ("planning", "from stagepilot.perception.geometry import world_to_ego", "stagepilot.perception.geometry"),
    ("sim", "import stagepilot.pipeline.runtime", "stagepilot.pipeline.runtime"),
    ("control", "def f():\n    from stagepilot.pipeline.drive import drive\n", "stagepilot.pipeline.drive"),
])
def test_a_planted_import_against_the_direction_is_named(tmp_path, package, bad_import, named):
    for name in ALLOWED:
        (tmp_path / name).mkdir()
    (tmp_path / package / "planted.py").write_text(bad_import + "\n")
    violations = layer_violations(tmp_path)
    assert len(violations) == 1
    assert violations[0].startswith(f"stagepilot.{package}.planted (line ")
    assert f" imports {named}: " in violations[0]
