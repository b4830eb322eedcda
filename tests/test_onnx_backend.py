"""The learned stage's paths: the checkpoint's ONNX export on onnxruntime, cached, gives the
torch fp32 path's detections and segmentation on rendered rig frames; `backend: auto` times
the paths it may use once per machine and keeps the fastest."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stagepilot.core.config import LearnedPerceptionConfig, load_stack
from stagepilot.perception.paths import TORCH_FP32, candidates, cpu_identity
from stagepilot.perception.runner import NetworkRunner, native_bf16
from stagepilot.sim.scenario import load_scenario
from stagepilot.sim.world import EmbeddedSimulator


@pytest.fixture(scope="module")
def rig_frames() -> list[np.ndarray]:
    sim = EmbeddedSimulator(load_stack())
    obs = sim.reset(load_scenario("town_traffic"))
    return [image.rgb for image in obs.cameras.values()]


def test_onnxruntime_gives_the_torch_fp32_outputs_and_caches_its_export(rig_frames, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("STAGEPILOT_CACHE", str(tmp_path))
    torch_fp32 = NetworkRunner(LearnedPerceptionConfig(backend="torch", precision="fp32", threads=2))
    onnx = NetworkRunner(LearnedPerceptionConfig(backend="onnxruntime", threads=2))
    assert onnx.path["backend"] == "onnxruntime" and torch_fp32.path == {
        "backend": "torch", "device": "cpu", "dtype": "float32", "memory_format": "channels_last",
        "chosen_by": "configured"}
    exported = list((tmp_path / "onnx").glob("*.onnx"))
    assert len(exported) == 1
    want, got = torch_fp32.run(rig_frames), onnx.run(rig_frames)
    assert sum(len(w.boxes) for w in want) > 0, "the frames show something to detect"
    for w, g in zip(want, got):
        assert w.labels == g.labels
        assert np.abs(w.boxes - g.boxes).max(initial=0.0) < 0.5  # [px]
        assert np.abs(w.scores - g.scores).max(initial=0.0) < 1e-3
    assert (want[0].seg == got[0].seg).mean() > 0.999
    stamp = exported[0].stat().st_mtime_ns
    NetworkRunner(LearnedPerceptionConfig(backend="onnxruntime", threads=2))  # from the cache
    assert exported[0].stat().st_mtime_ns == stamp and len(list((tmp_path / "onnx").iterdir())) == 1


def test_auto_times_the_allowed_paths_on_the_stage_batch_keeps_the_fastest_and_remembers_it(tmp_path, monkeypatch):
    monkeypatch.setenv("STAGEPILOT_CACHE", str(tmp_path))
    first = NetworkRunner(LearnedPerceptionConfig(threads=2), batch=3)
    ms = first.path["candidates_ms"]
    assert first.path["chosen_by"] == "measured"
    assert {"torch-float32", "onnxruntime-float32"} <= set(ms)
    assert ("torch-bfloat16" in ms) == native_bf16(torch.device("cpu"))  # emulated bf16 is never a candidate
    chosen = f"{first.path['backend']}-{first.path['dtype']}"
    assert chosen == min(ms, key=ms.get)
    memory = json.loads((tmp_path / "paths.json").read_text())
    assert [entry["cpu"] for entry in memory.values()] == [cpu_identity()]
    again = NetworkRunner(LearnedPerceptionConfig(threads=2), batch=3)
    assert again.path["chosen_by"] == "remembered" and again.path["backend"] == first.path["backend"]
    # another batch is another measurement; a memory file this code cannot read is measured over
    (tmp_path / "paths.json").write_text("{not json")
    other = NetworkRunner(LearnedPerceptionConfig(threads=2), batch=1)
    assert other.path["chosen_by"] == "measured"
    assert len(json.loads((tmp_path / "paths.json").read_text())) == 1


def test_a_configured_path_is_not_timed(tmp_path, monkeypatch):
    monkeypatch.setenv("STAGEPILOT_CACHE", str(tmp_path))
    pinned = NetworkRunner(LearnedPerceptionConfig(backend="torch", threads=2), batch=3)
    assert pinned.path["chosen_by"] == "configured" and "candidates_ms" not in pinned.path
    bf16 = NetworkRunner(LearnedPerceptionConfig(precision="bf16", threads=2), batch=3)
    assert bf16.path["backend"] == "torch" and bf16.path["dtype"] == "bfloat16"
    assert not (tmp_path / "paths.json").exists()
    assert candidates("auto", native_bf16=False, onnx_available=False) == [TORCH_FP32]
