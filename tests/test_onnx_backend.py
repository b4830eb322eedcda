"""The learned stage's paths: the checkpoint's ONNX export on onnxruntime and on OpenVINO, cached,
gives the torch fp32 path's detections and segmentation on rendered rig frames (OpenVINO's bf16,
where the CPU has it, those of torch's bf16 autocast to bf16 rounding); `backend: auto` times the
paths it may use once per machine and keeps the fastest; the torch paths run the network with
its batch norms folded into its convolutions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stagepilot.core.config import LearnedPerceptionConfig, load_stack
from stagepilot.perception.paths import (ONNX_FP32, OPENVINO_BF16, OPENVINO_FP32, TORCH_BF16, TORCH_FP32, candidates,
                                         cpu_identity, isa_capped)
from stagepilot.perception import runner as runner_module
from stagepilot.perception.runner import NetworkRunner, native_bf16
from stagepilot.sim.scenario import load_scenario
from stagepilot.sim.world import EmbeddedSimulator


@pytest.fixture(scope="module")
def rig_frames() -> list[np.ndarray]:
    sim = EmbeddedSimulator(load_stack())
    obs = sim.reset(load_scenario("town_traffic"))
    return [image.rgb for image in obs.cameras.values()]


def assert_same_outputs(want, got) -> None:
    """Another path's outputs are torch fp32's: the same labels, boxes within 0.5 px, scores within
    1e-3, the segmentation on 99.9 % of its pixels."""
    assert sum(len(w.boxes) for w in want) > 0, "the frames show something to detect"
    for w, g in zip(want, got):
        assert w.labels == g.labels
        assert np.abs(w.boxes - g.boxes).max(initial=0.0) < 0.5  # [px]
        assert np.abs(w.scores - g.scores).max(initial=0.0) < 1e-3
    assert (want[0].seg == got[0].seg).mean() > 0.999


def test_onnxruntime_gives_the_torch_fp32_outputs_and_caches_its_export(rig_frames, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("STAGEPILOT_CACHE", str(tmp_path))
    torch_fp32 = NetworkRunner(LearnedPerceptionConfig(backend="torch", precision="fp32", threads=2))
    onnx = NetworkRunner(LearnedPerceptionConfig(backend="onnxruntime", threads=2))
    assert onnx.path["backend"] == "onnxruntime" and torch_fp32.path == {
        "backend": "torch", "device": "cpu", "dtype": "float32", "memory_format": "channels_last",
        "chosen_by": "configured"}
    exported = list((tmp_path / "onnx").glob("*.onnx"))
    assert len(exported) == 1
    assert_same_outputs(torch_fp32.run(rig_frames), onnx.run(rig_frames))
    stamp = exported[0].stat().st_mtime_ns
    NetworkRunner(LearnedPerceptionConfig(backend="onnxruntime", threads=2))  # from the cache
    assert exported[0].stat().st_mtime_ns == stamp and len(list((tmp_path / "onnx").iterdir())) == 1


def test_openvino_gives_the_torch_outputs_in_fp32_and_in_bf16(rig_frames, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("STAGEPILOT_CACHE", str(tmp_path))
    torch_fp32 = NetworkRunner(LearnedPerceptionConfig(backend="torch", precision="fp32", threads=2))
    ov_fp32 = NetworkRunner(LearnedPerceptionConfig(backend="openvino", precision="fp32", threads=2))
    assert ov_fp32.path["backend"] == "openvino" and ov_fp32.path["dtype"] == "float32"
    assert ov_fp32.path["chosen_by"] == "configured" and ov_fp32.path["version"]
    assert_same_outputs(torch_fp32.run(rig_frames), ov_fp32.run(rig_frames))
    # another shape (a side camera's band, two at once) is compiled on first use and decoded alike
    band = [f[96:] for f in rig_frames[1:]]
    sizes = [(264, 640)] * 2
    for w, g in zip(torch_fp32.run(band, sizes=sizes), ov_fp32.run(band, sizes=sizes)):
        assert w.labels == g.labels and np.abs(w.boxes - g.boxes).max(initial=0.0) < 0.5
    if not native_bf16(torch.device("cpu")):
        return
    torch_bf16 = NetworkRunner(LearnedPerceptionConfig(backend="torch", precision="bf16", threads=2))
    ov_bf16 = NetworkRunner(LearnedPerceptionConfig(backend="openvino", precision="bf16", threads=2))
    assert ov_bf16.path["dtype"] == "bfloat16"
    for w, g in zip(torch_bf16.run(rig_frames), ov_bf16.run(rig_frames)):
        assert w.labels == g.labels
        assert np.abs(w.boxes - g.boxes).max(initial=0.0) < 1.5  # [px]
        assert np.abs(w.scores - g.scores).max(initial=0.0) < 0.02


def test_a_cpu_capped_below_bf16_is_not_a_bf16_cpu(monkeypatch) -> None:
    """scripts/avx2_only.sh caps oneDNN at AVX2: bf16 is then emulated (OpenVINO will not compile it)."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not native_bf16(torch.device("cpu"))
    assert candidates("auto", native_bf16=False, onnx_available=True, openvino_available=True) == [
        TORCH_FP32, ONNX_FP32, OPENVINO_FP32]
    assert candidates("auto", native_bf16=True, onnx_available=True, openvino_available=True) == [
        TORCH_FP32, TORCH_BF16, ONNX_FP32, OPENVINO_FP32, OPENVINO_BF16]
    assert candidates("bf16", native_bf16=True, onnx_available=True, openvino_available=True) == [
        TORCH_BF16, OPENVINO_BF16]


def test_an_emulated_cpu_leaves_out_the_path_its_cap_does_not_reach(tmp_path, monkeypatch) -> None:
    """onnxruntime picks its kernels from the CPU itself, so under oneDNN's cap its time is the
    uncapped CPU's: `auto` leaves it out, and run.json's path says so."""
    monkeypatch.setenv("STAGEPILOT_CACHE", str(tmp_path))
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    assert isa_capped() is None
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")
    assert isa_capped() is None
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")
    assert isa_capped() == "AVX2"
    assert candidates("auto", native_bf16=False, onnx_available=True, openvino_available=True, capped=True) == [
        TORCH_FP32, OPENVINO_FP32]
    runner = NetworkRunner(LearnedPerceptionConfig(threads=2, precision="fp32"), batch=1)
    assert runner.path["backend"] != "onnxruntime" and "onnxruntime-float32" not in runner.path["candidates_ms"]
    assert "AVX2" in runner.path["left_out"]["onnxruntime-float32"]
    again = NetworkRunner(LearnedPerceptionConfig(threads=2, precision="fp32"), batch=1)  # remembered: still says so
    assert again.path["chosen_by"] == "remembered" and "onnxruntime-float32" in again.path["left_out"]
    pinned = NetworkRunner(LearnedPerceptionConfig(backend="onnxruntime", threads=2), batch=1)  # a pin is the user's
    assert pinned.path["backend"] == "onnxruntime"


def test_auto_times_the_allowed_paths_on_the_stage_batch_keeps_the_fastest_and_remembers_it(tmp_path, monkeypatch):
    monkeypatch.setenv("STAGEPILOT_CACHE", str(tmp_path))
    first = NetworkRunner(LearnedPerceptionConfig(threads=2), batch=3)
    ms = first.path["candidates_ms"]
    assert first.path["chosen_by"] == "measured"
    assert {"torch-float32", "onnxruntime-float32", "openvino-float32"} <= set(ms)
    assert ("torch-bfloat16" in ms) == native_bf16(torch.device("cpu"))  # emulated bf16 is never a candidate
    assert ("openvino-bfloat16" in ms) == native_bf16(torch.device("cpu"))
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
    bf16 = NetworkRunner(LearnedPerceptionConfig(backend="torch", precision="bf16", threads=2), batch=3)
    assert bf16.path["backend"] == "torch" and bf16.path["dtype"] == "bfloat16"
    ov = NetworkRunner(LearnedPerceptionConfig(backend="openvino", precision="fp32", threads=2), batch=3)
    assert ov.path["backend"] == "openvino" and ov.path["chosen_by"] == "configured"
    assert not (tmp_path / "paths.json").exists()
    assert candidates("auto", native_bf16=False, onnx_available=False) == [TORCH_FP32]


def test_each_candidate_is_timed_as_itself(tmp_path, monkeypatch):
    """The bf16 candidate runs under bf16 autocast and the fp32 ones without, whatever order they
    are set up in (each timed closure takes its own settings, not the runner's last)."""
    monkeypatch.setenv("STAGEPILOT_CACHE", str(tmp_path))
    seen = {}

    def record(runs, **_):
        for name, run in runs.items():
            seen[name] = run()[0]["cls"][0].dtype
        return {name: float(i) for i, name in enumerate(runs)}

    monkeypatch.setattr(runner_module, "measure", record)
    chosen = NetworkRunner(LearnedPerceptionConfig(threads=2), batch=1)
    assert seen["torch-float32"] == torch.float32 and seen["onnxruntime-float32"] == torch.float32
    assert seen["openvino-float32"] == torch.float32  # its outputs come back in fp32 at either precision
    if native_bf16(torch.device("cpu")):
        assert seen["torch-bfloat16"] == torch.bfloat16
    assert chosen.path["backend"] == "torch" and chosen.path["dtype"] == "float32"  # the first is "fastest"
    # the ONNX export worked on a copy: the stage's own network keeps its channels-last weights
    assert chosen.model.cls_out.weight.is_contiguous(memory_format=torch.channels_last)


def test_the_path_is_chosen_again_on_the_work_an_operating_point_sends(tmp_path, monkeypatch):
    """Timed on the rig's three frames, then again on one smaller frame: each choice measured on
    the shapes it will run, remembered apart, and the rig's own shapes are not timed twice."""
    monkeypatch.setenv("STAGEPILOT_CACHE", str(tmp_path))
    timed = []

    def fake(runs, **_):
        shapes = []
        for name, run in runs.items():
            shapes = [tuple(out["image_size"]) + (out["cls"][0].shape[0],) for out in run()]
        timed.append(shapes)
        order = ["onnxruntime-float32", "openvino-float32"] if len(timed) == 1 else ["openvino-float32", "onnxruntime-float32"]
        return {name: 1.0 + (order.index(name) if name in order else 5.0) for name in runs}

    monkeypatch.setattr(runner_module, "measure", fake)
    runner = NetworkRunner(LearnedPerceptionConfig(threads=2), batch=3)
    assert timed == [[(360, 640, 3)]] and runner.path["backend"] == "onnxruntime"
    runner.choose_for([(3, (360, 640))])
    assert len(timed) == 1                                        # the work it was chosen on
    runner.choose_for([(1, (288, 512))])
    assert timed[1] == [(288, 512, 1)] and runner.path["backend"] == "openvino"
    assert runner.path["chosen_by"] == "measured" and len(json.loads((tmp_path / "paths.json").read_text())) == 2
    again = NetworkRunner(LearnedPerceptionConfig(threads=2), batch=3)
    again.choose_for([(1, (288, 512))])
    assert len(timed) == 2 and again.path["backend"] == "openvino" and again.path["chosen_by"] == "remembered"


def test_the_torch_path_folds_batch_norms_into_the_convolutions_of_a_copy(rig_frames):
    """The runner's network has no BatchNorm2d left and gives the checkpoint's own network's raw
    heads to float rounding; a network handed to the runner is left as it was (it may be training)."""
    from stagepilot.perception.checkpoint import load_checkpoint

    given, _ = load_checkpoint(runner_module.SHIPPED_CHECKPOINT)
    given.eval()
    runner = NetworkRunner(LearnedPerceptionConfig(backend="torch", precision="fp32", threads=2), model=given)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in runner.model.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in given.modules()) > 40
    x = runner.preprocess(rig_frames[:1])
    with torch.inference_mode():
        want, got = given(x.contiguous()), runner.forward(x)
    for name in ("cls", "box"):
        for w, g in zip(want[name], got[name]):
            assert (w - g).abs().max() < 1e-3
    assert (want["seg"] - got["seg"]).abs().max() < 1e-3


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_torch_works_on_one_thread_around_a_network_another_runtime_runs(backend, rig_frames, tmp_path, monkeypatch):
    """torch's spinning OpenMP threads would take a core from onnxruntime's or OpenVINO's own:
    around their network torch gets one thread, and the caller's count comes back after; on
    the torch path the network and the work around it keep every thread."""
    monkeypatch.setenv("STAGEPILOT_CACHE", str(tmp_path))
    runner = NetworkRunner(LearnedPerceptionConfig(backend=backend, precision="fp32", threads=2))
    seen = {}
    for name in ("preprocess", "_decode", "forward"):
        def watched(*args, _name=name, _own=getattr(runner, name), **kwargs):
            seen[_name] = torch.get_num_threads()
            return _own(*args, **kwargs)
        monkeypatch.setattr(runner, name, watched)
    outputs = runner.run(rig_frames[:1])
    assert len(outputs) == 1 and outputs[0].seg.size > 0
    side = 1 if backend == "onnxruntime" else 2
    assert seen == {"preprocess": side, "forward": side, "_decode": side}
    assert torch.get_num_threads() == 2


def test_paths_and_points_are_timed_with_the_threads_the_stage_gives_them(tmp_path, monkeypatch):
    """`auto` times a network that onnxruntime runs with torch on one thread around it, as the stage
    runs it (timed with torch's threads spinning beside it, the points read 1.3-1.5x slower than
    they run), and the torch paths with every thread; the caller's count comes back after."""
    from stagepilot.perception import operating
    from stagepilot.perception.onnx_backend import OnnxHeads

    monkeypatch.setenv("STAGEPILOT_CACHE", str(tmp_path))
    torch.set_num_threads(2)
    seen: dict[str, set[int]] = {}
    own_call = OnnxHeads.__call__

    def watched(self, x):
        seen.setdefault("onnxruntime", set()).add(torch.get_num_threads())
        return own_call(self, x)

    monkeypatch.setattr(OnnxHeads, "__call__", watched)
    own_forward = runner_module.PerceptionNet.forward

    def torch_watched(self, x):
        seen.setdefault("torch", set()).add(torch.get_num_threads())
        return own_forward(self, x)

    monkeypatch.setattr(runner_module.PerceptionNet, "forward", torch_watched)

    def run_each(runs, **_):
        for run in runs.values():
            run()
        return {name: float(i) for i, name in enumerate(reversed(list(runs)))}  # the last is "fastest"

    monkeypatch.setattr(runner_module, "measure", run_each)
    config = LearnedPerceptionConfig(precision="fp32", threads=2)
    monkeypatch.setattr(runner_module, "candidates", lambda *a, **k: [TORCH_FP32, ONNX_FP32])
    runner = NetworkRunner(config, batch=1)
    assert runner.path["backend"] == "onnxruntime" and seen == {"onnxruntime": {1}, "torch": {2}}
    assert torch.get_num_threads() == 2

    seen.clear()
    monkeypatch.setattr(operating.paths, "measure", run_each)
    cameras = operating.spec_cameras(list(load_stack([], []).sim.cameras.values()))
    operating.choose(runner, "auto", cameras, 10.0, 40.0, 0.35)
    assert seen == {"onnxruntime": {1}} and torch.get_num_threads() == 2
