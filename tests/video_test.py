"""MP4 writing: frames read back with imageio (count, order, content, size, rate), padding,
grayscale, file names and errors."""

import os

import imageio.v2 as imageio
import numpy as np
import pytest

from scalable_agent2 import video


def _read(path):
    reader = imageio.get_reader(path, format='FFMPEG')
    try:
        frames = [np.asarray(f) for f in reader]
        return frames, reader.get_meta_data()
    finally:
        reader.close()


def _solid(level, shape=(210, 160, 3)):
    return np.full(shape, level, np.uint8)


def test_frames_read_back_in_order(tmp_path):
    path = str(tmp_path / 'sub' / 'ep.mp4')
    levels = [10 * i for i in range(25)]
    assert video.write_mp4(path, (_solid(v) for v in levels), fps=60) == 25
    frames, meta = _read(path)
    assert len(frames) == 25
    assert frames[0].shape == (210, 160, 3)
    # Lossy H.264, but a solid grey survives: each frame's mean is its level, in order.
    np.testing.assert_allclose([f.mean() for f in frames], levels, atol=3)
    assert meta['fps'] == pytest.approx(60)


def test_structured_content_survives(tmp_path):
    # A left-dark / right-bright frame (Atari-sized) keeps its halves.
    frame = np.zeros((210, 160, 3), np.uint8)
    frame[:, 80:] = 200
    path = str(tmp_path / 'halves.mp4')
    video.write_mp4(path, [frame] * 5, fps=30)
    frames, meta = _read(path)
    assert len(frames) == 5 and meta['fps'] == pytest.approx(30)
    assert frames[2][:, :70].mean() < 10 and frames[2][:, 90:].mean() > 190


def test_odd_sizes_are_padded_and_grayscale_expanded(tmp_path):
    gray = np.arange(7 * 9, dtype=np.uint8).reshape(7, 9) * 4
    rgb = video.to_rgb(gray)
    assert rgb.shape == (8, 10, 3)
    np.testing.assert_array_equal(rgb[:7, :9, 1], gray)
    assert not rgb[7].any() and not rgb[:, 9].any()
    scaled = video.to_rgb(gray[..., None], scale=3)
    assert scaled.shape == (22, 28, 3)  # 21x27 enlarged, then padded to even.
    np.testing.assert_array_equal(scaled[3:6, 6:9, 0], np.full((3, 3), gray[1, 2]))

    path = str(tmp_path / 'odd.mp4')
    assert video.write_mp4(path, [np.full((71, 95, 3), 120, np.uint8)] * 4, fps=15) == 4
    frames, _ = _read(path)
    assert len(frames) == 4 and frames[0].shape == (72, 96, 3)


def test_writer_counts_and_checks_frames(tmp_path):
    path = str(tmp_path / 'w.mp4')
    with video.VideoWriter(path, fps=60, scale=2) as writer:
        for i in range(3):
            writer.append(_solid(50 * i, (72, 96, 3)))
        with pytest.raises(ValueError, match='differs from the first frame'):
            writer.append(_solid(0, (10, 10, 3)))
    assert writer.num_frames == 3
    frames, _ = _read(path)
    assert len(frames) == 3 and frames[0].shape == (144, 192, 3)


def test_bad_inputs():
    with pytest.raises(ValueError, match='uint8'):
        video.to_rgb(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r'\[H, W'):
        video.to_rgb(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match='fps'):
        video.VideoWriter('x.mp4', fps=0)


def test_no_frames_writes_no_file(tmp_path):
    path = str(tmp_path / 'empty.mp4')
    with pytest.raises(ValueError, match='no frames'):
        video.write_mp4(path, [], fps=60)
    assert not os.path.exists(path)


def test_video_filename():
    assert video.video_filename('atari/Pong', 0, -21.0) == 'atari_Pong_episode0_return-21.0.mp4'
    assert (
        video.video_filename('contributed/dmlab30/rooms_watermaze', 2, 34.25)
        == 'contributed_dmlab30_rooms_watermaze_episode2_return34.2.mp4'
    )
    assert (
        video.video_filename('gym/CartPole-v1', 1, 500)
        == 'gym_CartPole-v1_episode1_return500.0.mp4'
    )


def test_episode_video_is_named_with_its_return(tmp_path):
    episode = video.EpisodeVideo(str(tmp_path / 'videos'), 'atari/Pong', 0, fps=60)
    for i in range(12):
        episode.append(_solid(20 * i))
    assert episode.num_frames == 12
    path = episode.finish(-20.0)
    assert os.path.basename(path) == 'atari_Pong_episode0_return-20.0.mp4'
    assert os.listdir(tmp_path / 'videos') == ['atari_Pong_episode0_return-20.0.mp4']
    frames, meta = _read(path)
    assert len(frames) == 12 and meta['fps'] == pytest.approx(60)


def test_episode_video_discard_and_empty(tmp_path):
    episode = video.EpisodeVideo(str(tmp_path), 'gym/CartPole-v1', 3, fps=50)
    episode.append(_solid(0, (400, 600, 3)))
    episode.discard()
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match='no frames'):
        video.EpisodeVideo(str(tmp_path), 'x', 0, fps=50).finish(1.0)
