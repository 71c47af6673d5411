"""The benchmark scripts still import: they are run by hand (figures in docs/PERFORMANCE.md), so a module they lean
on can move without any test noticing, and the next person to measure finds an ImportError instead."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_benchmark_module_imports():
    names = sorted(path.stem for path in (REPO / "benchmarks").glob("*.py"))
    assert "bench_server" in names and "bench_abuse" in names
    script = "; ".join(["import importlib, sys", f"sys.path.insert(0, {str(REPO)!r})",
                        f"[importlib.import_module('benchmarks.' + name) for name in {names!r}]", "print('ok')"])
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
