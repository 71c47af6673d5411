"""benchmarks/bench_gpu.py: its CPU-side logic in a dry run, and its one-line exit without CUDA."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from pipeline.diffusion.riffusion import img2img_timesteps
from pipeline.model.tiny import build_tiny_components
from tests.server_support import REPO

SCRIPT = str(REPO / "benchmarks" / "bench_gpu.py")


def test_dry_run_measures_every_section_and_writes_json_and_tables(tmp_path):
    out = tmp_path / "gpu.json"
    result = subprocess.run([sys.executable, SCRIPT, "--dry-run", "--out", str(out)], cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    document = json.loads(out.read_text())
    assert document["plan"]["device"] == "cpu" and document["plan"]["steps"] == 8
    (report,) = document["models"]
    unet = report["unet_steps_per_second"]
    assert all(unet[variant][batch] > 0 for variant in ("eager", "channels_last") for batch in ("2", "4"))
    assert unet["torch.compile"]["2"].startswith("skipped") and unet["CUDA graph"]["4"].startswith("skipped")
    split = report["clip_seconds"]
    scheduler = build_tiny_components()["scheduler"]
    assert split["unet_evaluations"] == len(img2img_timesteps(scheduler, 8, 0.75))  # int(8 x 0.75) PLMS steps
    stages = ("encode", "prepare", "steps", "decode", "dsp", "mp3")
    assert all(split[stage] > 0 for stage in stages)
    assert split["total"] == pytest.approx(sum(split[stage] for stage in stages), abs=1e-3)
    assert [row["rooms"] for row in report["engine"]] == [1, 2]
    for row in report["engine"]:
        assert row["clips"] == row["rooms"] and row["clips_per_second"] > 0
        assert row["real_time_rooms"] == pytest.approx(row["clips_per_second"] * 5.12, rel=0.01)
    assert "| variant | batch 2 | batch 4 |" in result.stdout and "| rooms | clips/s |" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has CUDA: the real benchmark would run")
def test_without_cuda_it_exits_with_one_line():
    result = subprocess.run([sys.executable, SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "bench_gpu: no CUDA device (torch.cuda.is_available() is False); run it on an NVIDIA GPU, or --dry-run"]
