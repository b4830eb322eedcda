"""`stagepilot bench perception`: the stage's network against the torchvision pair, timed in turn,
and the frame with its horizon band as the stage reads the rig's main camera."""

from stagepilot.core.config import load_stack
from stagepilot.perception.bench import bench_perception


def test_the_bench_times_the_pair_and_the_main_cameras_band(tmp_path, monkeypatch):
    monkeypatch.setenv("STAGEPILOT_CACHE", str(tmp_path))
    config = load_stack([], ["perception.learned.backend=torch", "perception.learned.precision=fp32"])
    front = next(iter(config.sim.cameras.values()))
    result = bench_perception(config.perception.learned, iters=2, warmup=1, threads=2, camera=front)
    assert result["ours_weights"] == "shipped" and result["path"]["backend"] == "torch"
    assert result["speedup_p50"] == round(result["torchvision_pair"]["p50_ms"] / result["ours"]["p50_ms"], 2)
    # the default front camera (3 deg down): rows 131-211 across the middle 0.675, read at 864x160
    assert result["ours_with_zoom"]["band"] == [104, 131, 536, 211] and result["ours_with_zoom"]["band_input"] == "864x160"
    # the band follows the configured camera: pitched further down, the horizon rises in the image
    lower = bench_perception(config.perception.learned, iters=1, warmup=0, threads=2,
                             camera=front.model_copy(update={"pitch_deg": 8.0}))
    assert lower["ours_with_zoom"]["band"][1] < 131
    # no camera, or the zoom off: the frame alone
    assert "ours_with_zoom" not in bench_perception(config.perception.learned, iters=1, warmup=0, threads=2)
    off = load_stack([], ["perception.learned.backend=torch", "perception.learned.horizon_zoom=1"])
    assert "ours_with_zoom" not in bench_perception(off.perception.learned, iters=1, warmup=0, threads=2, camera=front)
