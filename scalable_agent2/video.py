"""MP4 videos of episodes (H.264 through imageio-ffmpeg, whose wheel ships an ffmpeg binary).

    with VideoWriter('/tmp/pong.mp4', fps=60) as video:
        for frame in frames:          # uint8 [H, W, 3] (or [H, W] / [H, W, 1] grayscale)
            video.append(frame)

Frames are padded (with black) to even sizes, which the yuv420p pixel format needs and which
players expect, instead of being rescaled; `scale` enlarges small frames (nearest neighbour).
"""

import os
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

_UNSAFE = re.compile(r'[^A-Za-z0-9._-]+')


def video_filename(level_name: str, episode_index: int, episode_return: float) -> str:
    """A file name that says the level, the episode and its return.

    Example: `atari_Pong_episode0_return-21.0.mp4` for ('atari/Pong', 0, -21.0).
    """
    level = _UNSAFE.sub('_', level_name).strip('_') or 'level'
    return f'{level}_episode{episode_index}_return{episode_return:.1f}.mp4'


def to_rgb(frame: Any, scale: int = 1) -> np.ndarray:
    """A frame as uint8 `[H', W', 3]`: grayscale expanded, scaled, padded to even H' and W'.

    Args:
      frame: uint8 `[H, W]`, `[H, W, 1]` or `[H, W, 3]`.
      scale: integer enlargement factor (nearest neighbour), >= 1.
    """
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise ValueError(f'video frames must be uint8, got {frame.dtype}')
    if frame.ndim == 2:
        frame = frame[..., None]
    if frame.ndim != 3 or frame.shape[-1] not in (1, 3):
        raise ValueError(f'video frames must be [H, W], [H, W, 1] or [H, W, 3]; got {frame.shape}')
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, axis=-1)
    if scale < 1:
        raise ValueError(f'scale must be >= 1, got {scale}')
    if scale > 1:
        frame = np.repeat(np.repeat(frame, scale, axis=0), scale, axis=1)
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if pad_h or pad_w:
        frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)))
    return np.ascontiguousarray(frame)


class VideoWriter:
    """Writes frames to an MP4 file as they come; a context manager.

    The frame size is fixed by the first frame; later frames must match it.
    """

    def __init__(self, path: str, fps: float, scale: int = 1, quality: int = 8):
        """Opens nothing yet: the file is created with the first frame.

        Args:
          path: output `.mp4` path (its directory is created).
          fps: frames per second of the video (the environment's native rate).
          scale: integer enlargement of each frame.
          quality: imageio-ffmpeg quality, 0 (worst) to 10 (best).
        """
        if fps <= 0:
            raise ValueError(f'fps must be > 0, got {fps}')
        self._path = path
        self._fps = float(fps)
        self._scale = scale
        self._quality = quality
        self._writer = None
        self._shape: tuple[int, ...] | None = None
        self.num_frames = 0

    @property
    def path(self) -> str:
        return self._path

    def append(self, frame: Any) -> None:
        """Adds one frame (uint8 `[H, W]`, `[H, W, 1]` or `[H, W, 3]`)."""
        import imageio.v2 as imageio

        rgb = to_rgb(frame, self._scale)
        if self._writer is None:
            os.makedirs(os.path.dirname(os.path.abspath(self._path)), exist_ok=True)
            self._writer = imageio.get_writer(
                self._path,
                format='FFMPEG',
                mode='I',
                fps=self._fps,
                codec='libx264',
                pixelformat='yuv420p',
                quality=self._quality,
                macro_block_size=1,  # Sizes are made even above; never rescale.
                ffmpeg_log_level='error',
            )
            self._shape = rgb.shape
        elif rgb.shape != self._shape:
            raise ValueError(f'frame shape {rgb.shape} differs from the first frame {self._shape}')
        self._writer.append_data(rgb)
        self.num_frames += 1

    def close(self) -> None:
        """Finishes the file (idempotent). A writer that got no frame writes no file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> 'VideoWriter':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EpisodeVideo:
    """One episode's video, named with its return once the episode has ended.

    Frames go to a temporary file in `directory`; `finish(episode_return)` closes it and
    renames it to `video_filename(level_name, episode_index, episode_return)`.
    """

    def __init__(
        self, directory: str, level_name: str, episode_index: int, fps: float, scale: int = 1
    ):
        self._directory = directory
        self._level_name = level_name
        self._episode_index = episode_index
        partial = video_filename(level_name, episode_index, 0.0).rsplit('_return', 1)[0]
        self._writer = VideoWriter(os.path.join(directory, f'.{partial}.partial.mp4'), fps, scale)

    @property
    def num_frames(self) -> int:
        return self._writer.num_frames

    def append(self, frame: Any) -> None:
        self._writer.append(frame)

    def finish(self, episode_return: float) -> str:
        """Closes the video and gives it its final name; returns the path.

        Raises:
          ValueError: the episode had no frames.
        """
        self._writer.close()
        if self._writer.num_frames == 0:
            raise ValueError(f'no frames recorded for {self._level_name}')
        path = os.path.join(
            self._directory,
            video_filename(self._level_name, self._episode_index, episode_return),
        )
        os.replace(self._writer.path, path)
        return path

    def discard(self) -> None:
        """Closes and deletes the partial video (an episode that was cut short)."""
        self._writer.close()
        if os.path.exists(self._writer.path):
            os.remove(self._writer.path)


def write_mp4(path: str, frames: Iterable[Any], fps: float, scale: int = 1) -> int:
    """Writes `frames` to `path` as an MP4; returns the number of frames written.

    Raises:
      ValueError: no frames, or frames of a bad dtype/shape.
    """
    with VideoWriter(path, fps, scale) as video:
        for frame in frames:
            video.append(frame)
    if video.num_frames == 0:
        raise ValueError(f'no frames to write to {path}')
    return video.num_frames
