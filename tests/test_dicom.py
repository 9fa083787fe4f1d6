"""DICOM and imaging share the leaf `pixels`, not a cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def test_dicom_and_imaging_share_a_leaf_not_a_cycle():
    """dicom needs nothing of imaging (pixels holds what both use), and no private name crosses."""
    for name in ("dicom", "imaging", "pixels"):
        tree = ast.parse((PROJECT / "xray_core" / f"{name}.py").read_text(encoding="utf-8"))
        imported = [(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    and (node.module or "").startswith("xray_core") for alias in node.names]
        assert [a for a in imported if a[1].startswith("_")] == [], name
        if name == "dicom":
            assert all(module == "xray_core.pixels" for module, _ in imported), imported
        if name == "pixels":
            assert imported == []
    code = "import sys, xray_core.dicom; sys.exit('xray_core.imaging' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
