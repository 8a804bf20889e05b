"""Video decode: probe a video, choose the frames to sample, and decode only those, resized and cropped.

`probe` reads a header, `sample_frame_indices` picks source frames (a pure function), `decode_clip`
decodes them with PyAV (any fsspec URI, read in place) or decord (local files; remote ones are copied
to a temporary file first). Source frame k is the frame whose pts is k / fps after the stream's start,
so seeking and scanning name the same frames, and both backends agree on constant-frame-rate video.
Frames come out upright: the container's display matrix (a phone's portrait video) is applied, as
players and `ffmpeg` do.

Inputs are untrusted: every failure becomes a `DecodeError` with a reason code from `REASONS`, and the
limits of `DecodeConfig` are checked from the container header before any frame is decoded, against the
longest of the durations the header states, and again against the timestamps of the frames read.
Nothing here raises "timeout": that reason is for callers that bound the time a decode may take.

The public names are imported here from the submodules; callers import them from `vtok.video`. Each
submodule imports only from those above it in this list:

- `config`: REASONS, BACKENDS, SEEK_MODES, DecodeError, DecodeConfig, VideoInfo, DecodedClip, and the
  constants the decoders share.
- `sampling`: sample_frame_indices and SAMPLING_POLICY; rounding, clip bounds, resize sizes and the
  centre crop (pure functions).
- `orientation`: the display orientation of coded frames, from a display matrix (pure functions).
- `sources`: opening inputs (local paths, fsspec URIs, byte ranges of a bigger file), reads of an
  input's first bytes, local copies for decord.
- `header`: opening the container, mp4/mov box checks and display matrix, reading the header into
  VideoInfo, the limits checked against it, and probe.
- `pyav`: PyAV decoding of the sampled frames, the swscale resize, and resize_center_crop.
- `decord`: decord decoding (it imports the real `decord` package, absolutely, inside its functions).
- `decode`: decode_clip, the entry point that runs one of the two backends.
"""

from __future__ import annotations

from vtok.video.config import BACKENDS, REASONS, SEEK_MODES, DecodeConfig, DecodedClip, DecodeError, VideoInfo
from vtok.video.decode import decode_clip
from vtok.video.header import probe
from vtok.video.pyav import resize_center_crop
from vtok.video.sampling import SAMPLING_POLICY, sample_frame_indices

__all__ = [
    "BACKENDS",
    "REASONS",
    "SAMPLING_POLICY",
    "SEEK_MODES",
    "DecodeConfig",
    "DecodeError",
    "DecodedClip",
    "VideoInfo",
    "decode_clip",
    "probe",
    "resize_center_crop",
    "sample_frame_indices",
]
