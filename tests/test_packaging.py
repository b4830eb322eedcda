"""Installing the project puts one package, `stagepilot`, at the top of site-packages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_pip_install_puts_only_stagepilot_at_the_top(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(ROOT)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    top = sorted(p.name for p in target.iterdir() if p.name != "bin")
    assert top[0] == "stagepilot"
    assert len(top) == 2 and top[1].startswith("stagepilot-") and top[1].endswith(".dist-info")
    for name in ("sim", "perception", "planning", "control", "pipeline", "configs"):
        assert (target / "stagepilot" / name / "__init__.py").exists()
    assert (target / "stagepilot" / "configs" / "stack.yaml").exists()
    assert (target / "stagepilot" / "configs" / "maps" / "town.xodr").exists()
    assert (target / "stagepilot" / "configs" / "scenarios" / "town_loop.yaml").exists()
    assert (target / "stagepilot" / "sim" / "render" / "renderer.py").exists()
    # the shipped perception model and its card travel with the package
    assert (target / "stagepilot" / "perception" / "weights" / "mtl_mbv3small_fpn96_s48_seg4_cs.pt").exists()
    assert (target / "stagepilot" / "perception" / "weights" / "MODEL_CARD.md").exists()
