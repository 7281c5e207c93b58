"""Mouth generators: for one model frame and one set of mouth parameters, the 320x320 mouth
region image and where it goes.

The service holds one generator and opens a `GeneratorStream` per client stream (streams may keep
temporal state, such as which source mouth was used last). Two kinds exist:

- `own` (the default, `lipsync_cli.core.mouth`): the avatar's own mouth, taken from the frames of its
  video that match the wanted opening and aligned onto the current frame, warped and with the
  inner mouth drawn where the video never opens that wide. No weights.
- `onnx` (`lipsync_cli.core.onnx_generator`): a user's own neural network, see docs/onnx-contract.md.

This module holds only the shared types, so both generators import it; `core.generators.make_generator`
picks one by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from lipsync_cli.media.audio import SAMPLE_RATE_HZ
from lipsync_cli.core.driver import MouthParams
from lipsync_cli.media.store import Model

AUDIO_WINDOW_MS = 200  # audio around each frame handed to generators that want it (the ONNX one)
AUDIO_WINDOW_SAMPLES = SAMPLE_RATE_HZ * AUDIO_WINDOW_MS // 1000  # 3200 samples at 16 kHz


@dataclass(frozen=True)
class MouthImage:
    image: np.ndarray  # (320, 320, 3) uint8 BGR: the mouth region
    bounds: np.ndarray  # (4,) float32 [xmin, ymin, xmax, ymax], full-frame pixels of the model frame


class GeneratorStream(Protocol):
    def render(self, *, model_frame: int, params: MouthParams, audio: np.ndarray) -> MouthImage:
        """The mouth region for `model_frame` showing `params`.

        audio: (AUDIO_WINDOW_SAMPLES,) float32 mono at 16 kHz centred on the frame (zeros where none).
        """


class MouthGenerator(Protocol):
    name: str

    def open_stream(self, model: Model) -> GeneratorStream:
        """Per-client-stream state for rendering frames of `model`."""
