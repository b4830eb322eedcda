"""The run video: H.264 in an mp4 that a browser streams, written frame by frame, and still
playable when the drive dies half-way."""

from __future__ import annotations

import struct

import av
import numpy as np
import pytest

from stagepilot.sim.video import VideoWriter

FPS = 20.0
SIZE = (160, 90)  # [px] width, height


def _frame(i: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    """A camera-like BGR frame: sky over road, and a box that moves with i."""
    w, h = size
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = (200, 150, 100)  # sky
    img[h // 2:] = (90, 90, 90)  # road
    x = (4 * i) % max(w - 20, 1)
    img[h // 2 - 10: h // 2 + 10, x: x + 20] = (0, 0, 220)  # a red car
    return img


def _decoded(path) -> tuple[str, str, list[np.ndarray], float]:
    """(codec, pixel format, BGR frames, frame rate) of a video file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="bgr24") for frame in container.decode(stream)]
        return stream.codec_context.name, stream.codec_context.pix_fmt, frames, float(stream.average_rate)


def _top_level_boxes(path) -> list[bytes]:
    data, boxes, at = path.read_bytes(), [], 0
    while at + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[at: at + 8])
        if size == 1:
            size = struct.unpack(">Q", data[at + 8: at + 16])[0]
        boxes.append(kind)
        if size < 8:
            break
        at += size
    return boxes


def test_writes_h264_yuv420p_with_every_frame(tmp_path) -> None:
    path = tmp_path / "video.mp4"
    writer = VideoWriter(path, fps=1.0 / 0.05)  # 20.000000000000004: what 1 / dt_s gives
    for i in range(30):
        writer.write(_frame(i))
    writer.close()
    codec, pix_fmt, frames, rate = _decoded(path)
    assert (codec, pix_fmt, len(frames), rate) == ("h264", "yuv420p", 30, FPS)
    assert frames[0].shape == (SIZE[1], SIZE[0], 3)
    # colours survive (BGR order, BT.709 both ways): the car stays red, the sky blue
    assert np.abs(frames[0].astype(int) - _frame(0)).mean() < 4.0
    boxes = _top_level_boxes(path)
    assert boxes.index(b"moov") < boxes.index(b"mdat")  # faststart: plays while it downloads


def test_odd_sizes_are_padded_to_even(tmp_path) -> None:
    path = tmp_path / "odd.mp4"
    with VideoWriter(path, fps=FPS) as writer:
        for i in range(5):
            writer.write(_frame(i, (161, 91)))
    _, _, frames, _ = _decoded(path)
    assert len(frames) == 5 and frames[0].shape == (92, 162, 3)
    assert np.abs(frames[0][:91, :161].astype(int) - _frame(0, (161, 91))).mean() < 4.0


@pytest.mark.parametrize("error", [RuntimeError("planner crashed"), KeyboardInterrupt()])
def test_a_writer_closed_after_an_exception_leaves_a_playable_file(tmp_path, error) -> None:
    path = tmp_path / "video.mp4"
    writer = VideoWriter(path, fps=FPS)
    with pytest.raises(type(error)):
        try:
            for i in range(12):
                writer.write(_frame(i))
                if i == 7:
                    raise error
        finally:
            writer.close()
    writer.close()  # idempotent
    codec, _, frames, _ = _decoded(path)
    assert codec == "h264" and len(frames) == 8


def test_a_frame_of_another_size_is_refused_and_the_file_still_closes(tmp_path) -> None:
    path = tmp_path / "video.mp4"
    with pytest.raises(ValueError, match="frame 80x45, the video is 160x90"), VideoWriter(path, FPS) as writer:
        writer.write(_frame(0))
        writer.write(_frame(1, (80, 45)))
    assert len(_decoded(path)[2]) == 1
    with pytest.raises(RuntimeError, match="after close"):
        writer.write(_frame(2))


def test_closing_without_a_frame_writes_nothing(tmp_path) -> None:
    writer = VideoWriter(tmp_path / "video.mp4", FPS)
    writer.close()
    writer.close()
    assert not (tmp_path / "video.mp4").exists()
