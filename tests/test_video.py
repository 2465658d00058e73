"""Videos: exact frame counts and timestamps, exact random access, backward iteration, clear errors."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from scribblebox.models.synthetic import make_moving_box_video, make_vfr_video, moving_box_scene
from scribblebox.models.video import (ArrayVideo, FrameFolder, VideoFile, _LRU, is_variable_frame_rate,
                                      open_video)

N, FPS, SIZE = 40, 25, (320, 180)


@pytest.fixture(scope="module")
def box_mp4(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "box.mp4"
    make_moving_box_video(path, num_frames=N, size=SIZE, fps=FPS, start=(30, 40, 60, 45), velocity=(3, 1), gop=12)
    return path


@pytest.fixture(scope="module")
def sequential(box_mp4: Path) -> list[np.ndarray]:
    with VideoFile(box_mp4) as video:
        return [frame for _, frame in video.frames(0, video.num_frames)]


def test_metadata_is_exact(box_mp4: Path) -> None:
    with VideoFile(box_mp4) as video:
        assert (video.num_frames, video.fps, video.width, video.height) == (N, FPS, *SIZE)
        assert len(video) == N and not video.variable_frame_rate
        np.testing.assert_allclose(video.timestamps, np.arange(N) / FPS, atol=1e-9)
        assert video.duration == pytest.approx(N / FPS)
        assert video.frame(0).shape == (SIZE[1], SIZE[0], 3) and video.frame(0).dtype == np.uint8


def test_the_test_video_has_b_frames_and_several_keyframes(box_mp4: Path) -> None:
    """Otherwise the seeking tests below would prove little."""
    with av.open(str(box_mp4)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
    pts = [p.pts for p in packets]
    assert pts != sorted(pts)
    assert sum(p.is_keyframe for p in packets) >= 3


@pytest.mark.parametrize("cache_size", [0, 5])
def test_random_access_equals_sequential_decode(box_mp4: Path, sequential: list[np.ndarray], cache_size: int) -> None:
    order = np.random.default_rng(cache_size).permutation(N)
    with VideoFile(box_mp4, cache_size=cache_size) as video:
        for i in order:
            np.testing.assert_array_equal(video.frame(i), sequential[i], err_msg=f"frame {i}")
        for i in order[:10]:  # again, now partly from the cache
            np.testing.assert_array_equal(video.frame(i), sequential[i], err_msg=f"frame {i} (second read)")
        assert video._cache._held <= cache_size * sequential[0].nbytes  # the bytes of cache_size BGR frames


def test_frames_passed_over_after_a_seek_are_kept_in_the_cache(box_mp4: Path, sequential: list[np.ndarray]) -> None:
    """Frame 10 is decoded from the keyframe at 0: frames 1..9 come out on the way and are kept (as decoded YUV),
    so reading them next neither seeks nor decodes again."""
    with VideoFile(box_mp4) as video:
        video._reader = None  # forget the decoder position left by opening
        start = video.frames_decoded
        np.testing.assert_array_equal(video.frame(10), sequential[10])
        after_ten = video.frames_decoded
        assert after_ten - start >= 10  # from the keyframe at 0
        for i in range(9, 0, -1):
            np.testing.assert_array_equal(video.frame(i), sequential[i], err_msg=f"frame {i}")
        assert video.frames_decoded == after_ten


def test_the_cache_holds_costs_not_items() -> None:
    cache = _LRU(4)
    cache.put(0, "bgr", 2)
    cache.put(1, "yuv", 1)
    cache.put(2, "yuv", 1)
    assert len(cache) == 3 and 0 in cache
    cache.put(3, "bgr", 2)  # over by 2: the least recently used (0) goes
    assert 0 not in cache and [k in cache for k in (1, 2, 3)] == [True, True, True]
    cache.put(1, "bgr", 2)  # replacing an item counts its new cost only: 2 goes
    assert 2 not in cache and cache.get(1) == "bgr" and cache.get(3) == "bgr"
    cache.put(9, "huge", 5)  # never fits: not stored, nothing evicted
    assert 9 not in cache and len(cache) == 2


def test_frames_are_read_only(box_mp4: Path) -> None:
    with VideoFile(box_mp4) as video:
        with pytest.raises(ValueError):
            video.frame(3)[0, 0] = 0


@pytest.mark.parametrize(("start", "stop"), [(N - 1, -1), (30, 7), (12, 11)])
def test_backward_iteration_equals_reversed_forward(box_mp4: Path, sequential: list[np.ndarray],
                                                    start: int, stop: int) -> None:
    with VideoFile(box_mp4, cache_size=0) as video:
        video.backward_block = 5  # several blocks, some of them cut by keyframes
        got = list(video.frames(start, stop))
    assert [i for i, _ in got] == list(range(start, stop, -1))
    for i, frame in got:
        np.testing.assert_array_equal(frame, sequential[i], err_msg=f"frame {i}")


def test_forward_iteration_survives_random_access_in_between(box_mp4: Path, sequential: list[np.ndarray]) -> None:
    with VideoFile(box_mp4, cache_size=0) as video:
        for i, frame in video.frames(5, 30):
            np.testing.assert_array_equal(frame, sequential[i], err_msg=f"frame {i}")
            np.testing.assert_array_equal(video.frame((i * 7) % N), sequential[(i * 7) % N])


def test_iteration_ranges_are_checked(box_mp4: Path) -> None:
    with VideoFile(box_mp4) as video:
        assert list(video.frames(4, 4)) == []
        with pytest.raises(IndexError, match="outside"):
            video.frame(N)
        with pytest.raises(ValueError, match="outside"):
            video.frame(-1)
        with pytest.raises(IndexError):
            list(video.frames(N - 2, N + 1))


def test_backward_iteration_decodes_at_most_three_times_the_forward_work(tmp_path: Path) -> None:
    path = tmp_path / "long_gop.mp4"
    make_moving_box_video(path, num_frames=130, size=(96, 64), start=(10, 10, 30, 20), velocity=(0.3, 0.2), gop=250)

    def decoded_frames(start: int, stop: int) -> int:
        video = VideoFile(path, cache_size=0)
        video._reader = None  # forget the decoder position left by opening, so both directions start cold
        before = video.frames_decoded
        assert len(list(video.frames(start, stop))) == 100
        video.close()
        return video.frames_decoded - before

    assert decoded_frames(120, 20) <= 3 * decoded_frames(21, 121)


def test_index_at_time_picks_the_nearest_frame(box_mp4: Path) -> None:
    with VideoFile(box_mp4) as video:
        # Label Studio frame f (1-based) at the video's own rate is video frame f - 1
        assert [video.index_at_time((f - 1) / FPS) for f in range(1, N + 1)] == list(range(N))
        assert video.index_at_time(10.4 / FPS) == 10 and video.index_at_time(10.6 / FPS) == 11
        assert video.index_at_time(-3) == 0 and video.index_at_time(1e6) == N - 1
        with pytest.raises(ValueError, match="finite"):
            video.index_at_time(float("nan"))


def test_variable_frame_rate_is_detected(tmp_path: Path, box_mp4: Path) -> None:
    times, _ = make_vfr_video(tmp_path / "vfr.mp4", num_frames=30)
    with VideoFile(tmp_path / "vfr.mp4") as video:
        assert video.variable_frame_rate and video.num_frames == 30
        np.testing.assert_allclose(video.timestamps, times, atol=1e-6)
        assert [video.index_at_time(t) for t in times] == list(range(30))
    with VideoFile(box_mp4) as video:
        assert not video.variable_frame_rate


def test_variable_frame_rate_rule_tolerates_rounding_and_one_glitch() -> None:
    assert not is_variable_frame_rate(np.round(np.arange(300) / 30, 3), tick=0.001)  # WebM milliseconds: 33/34 ms
    glitch = np.arange(1000) / 25.0
    glitch[500:] += 0.04  # one dropped frame
    assert not is_variable_frame_rate(glitch)
    assert is_variable_frame_rate(np.cumsum(np.tile([0.04, 0.08], 50)))


def test_webm_vp9(tmp_path: Path) -> None:
    path = tmp_path / "box.webm"
    make_moving_box_video(path, num_frames=20, size=(160, 96), start=(10, 10, 40, 30), gop=8)
    with VideoFile(path) as video, VideoFile(path, cache_size=0) as other:
        assert (video.num_frames, video.fps, video.width, video.height) == (20, FPS, 160, 96)
        sequential = [frame for _, frame in video.frames(0, 20)]
        for i in (17, 3, 9, 0, 19):
            np.testing.assert_array_equal(other.frame(i), sequential[i])


def test_display_rotation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "phone.mp4"
    gt = make_moving_box_video(path, num_frames=5, size=(96, 160), start=(20, 30, 40, 50), velocity=(2, 3), rotation=90)
    scene = moving_box_scene(5, (96, 160), (20, 30, 40, 50), (2, 3))
    with VideoFile(path) as video:
        assert (video.width, video.height) == (96, 160)
        for i in range(5):
            assert np.abs(video.frame(i).astype(int) - scene.render(i)).mean() < 6
    np.testing.assert_allclose(gt, scene.boxes)


def test_missing_file_folder_and_non_video_raise_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        VideoFile(tmp_path / "nope.mp4")
    with pytest.raises(ValueError, match="folder"):
        VideoFile(tmp_path)
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 100)
    with pytest.raises(ValueError, match="cannot open"):
        VideoFile(text)


def test_audio_only_file_raises_value_error(tmp_path: Path) -> None:
    path = tmp_path / "sound.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 8000, 0, Fraction(1, 8000)
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(ValueError, match="no video stream"):
        VideoFile(path)


def test_truncated_mp4_fails_at_open(tmp_path: Path, box_mp4: Path) -> None:
    """Our MP4s keep the index first (faststart): half a file still parses, so the declared frame count gives it away.
    (With the index at the end, half a file has no index at all and fails to open: also a ValueError.)"""
    data = box_mp4.read_bytes()
    half = tmp_path / "half.mp4"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        VideoFile(half)
    head = tmp_path / "head.mp4"
    head.write_bytes(data[:2000])
    with pytest.raises(ValueError):
        VideoFile(head)


def test_damaged_packets_are_skipped_like_a_player_does(tmp_path: Path, box_mp4: Path,
                                                        sequential: list[np.ndarray]) -> None:
    with av.open(str(box_mp4)) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    data = bytearray(box_mp4.read_bytes())
    for k in (20, 21, 26):  # in the second and third GOP (keyframes every 11 frames)
        pos, size = packets[k]
        data[pos:pos + size] = np.random.default_rng(k).integers(0, 256, size, dtype=np.uint8).tobytes()
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    with VideoFile(damaged) as video:
        got = list(video.frames(0, N))
        assert video.num_frames == N and [i for i, _ in got] == list(range(N)) and video.decode_errors > 0
        assert all(frame.shape == (SIZE[1], SIZE[0], 3) for _, frame in got)
    undamaged = [*range(10), *range(N - 5, N)]  # GOPs without damage decode exactly, in order or not
    with VideoFile(damaged, cache_size=0) as video:
        for i in undamaged[::-1]:
            np.testing.assert_array_equal(got[i][1], sequential[i])
            np.testing.assert_array_equal(video.frame(i), sequential[i])


def _write_frames(folder: Path, count: int, size=(32, 24)) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) for _ in range(count)]
    folder.mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"frame{i}.png"), frame)  # unpadded: frame10 must come after frame9
    (folder / "notes.txt").write_text("ignored")
    return frames


def test_frame_folder(tmp_path: Path) -> None:
    frames = _write_frames(tmp_path / "frames", 12)
    video = open_video(tmp_path / "frames")
    assert isinstance(video, FrameFolder)
    assert (video.num_frames, video.fps, video.width, video.height) == (12, 24.0, 32, 24)
    assert not video.variable_frame_rate and video.index_at_time(5 / 24) == 5
    for i in (11, 0, 10, 2):
        np.testing.assert_array_equal(video.frame(i), frames[i])
    assert [i for i, _ in video.frames(11, -1)] == list(range(11, -1, -1))
    assert all(np.array_equal(f, frames[i]) for i, f in video.frames(3, 12))
    with pytest.raises(IndexError):
        video.frame(12)
    assert open_video(tmp_path / "frames", fps=30).fps == 30


def test_frame_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no"):
        FrameFolder(tmp_path / "empty")
    with pytest.raises(ValueError, match="not found"):
        FrameFolder(tmp_path / "missing")
    _write_frames(tmp_path / "bad", 3)
    (tmp_path / "bad" / "frame1.png").write_bytes(b"not a png")
    cv2.imwrite(str(tmp_path / "bad" / "frame2.png"), np.zeros((10, 10, 3), np.uint8))
    video = FrameFolder(tmp_path / "bad")
    with pytest.raises(ValueError, match="readable"):
        video.frame(1)
    with pytest.raises(ValueError, match="same size"):
        video.frame(2)


def test_array_video() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (6, 8, 10, 3), dtype=np.uint8)
    video = ArrayVideo(frames, fps=10)
    assert (video.num_frames, video.width, video.height, video.duration) == (6, 10, 8, pytest.approx(0.6))
    assert [i for i, _ in video.frames(5, 1)] == [5, 4, 3, 2]
    np.testing.assert_array_equal(video.frame(4), frames[4])
    assert video.index_at_time(0.26) == 3
    with pytest.raises(ValueError, match="uint8"):
        ArrayVideo(frames.astype(np.float32))


def test_open_video_picks_the_reader(box_mp4: Path) -> None:
    video = open_video(box_mp4, fps=5)
    assert isinstance(video, VideoFile) and video.fps == FPS  # a file keeps its own rate
    video.close()
    with pytest.raises(ValueError, match="closed"):
        video.frame(N - 1)
