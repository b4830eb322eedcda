"""The onnxruntime backend of the learned stage: the checkpoint's ONNX export, cached, gives
the torch fp32 path's detections and segmentation on rendered rig frames."""

from __future__ import annotations

import numpy as np
import pytest

from stagepilot.core.config import LearnedPerceptionConfig, load_stack
from stagepilot.perception.runner import NetworkRunner
from stagepilot.sim.scenario import load_scenario
from stagepilot.sim.world import EmbeddedSimulator


@pytest.fixture(scope="module")
def rig_frames() -> list[np.ndarray]:
    sim = EmbeddedSimulator(load_stack())
    obs = sim.reset(load_scenario("town_traffic"))
    return [image.rgb for image in obs.cameras.values()]


def test_onnxruntime_gives_the_torch_fp32_outputs_and_caches_its_export(rig_frames, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("STAGEPILOT_CACHE", str(tmp_path))
    torch_fp32 = NetworkRunner(LearnedPerceptionConfig(precision="fp32", threads=2))
    onnx = NetworkRunner(LearnedPerceptionConfig(backend="onnxruntime", threads=2))
    assert onnx.path["backend"] == "onnxruntime" and torch_fp32.path == {
        "backend": "torch", "device": "cpu", "dtype": "float32", "memory_format": "channels_last"}
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
