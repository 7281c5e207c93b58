"""The ONNX generator: a user's own neural lip-sync network (Wav2Lip / SyncTalk style) as the mouth maker.

The network's contract is in docs/onnx-contract.md. In short, per output frame with speech:

- `audio`: float32 (1, 1, 80, 16), the log-mel spectrogram of the 200 ms of audio centred on the
  middle of the frame (`log_mel_window` computes it: 80 bands, 16 frames of 12.5 ms).
- `face`: float32 (1, 6, S, S) in [0, 1], the face square of the model frame (`face_square`, cut
  from the full frame and resized to S x S): first with its lower half zeroed, then as it is
  (Wav2Lip's order). A network may take (1, 3, S, S) instead, the face as it is, and mask itself.
- `mouth` (output): float32 (1, 3, S, S) in [0, 1], that face square with the mouth speaking.

The face square, not the 320x320 mouth region, is what the network sees: the region is centred
below the nose, so its lower half would hide the chin and leave the mouth in view, where the face
square's lower half covers nose to chin as Wav2Lip-style networks are trained to expect.

Colours are RGB unless the model's metadata says `colour_order=bgr` (Wav2Lip trains on BGR). The
output is mapped into the frame's 320x320 region and blended there under the feathered lower-face
mask the default generator uses, so only the mouth and jaw change. Frames without speech skip the
network and show the region untouched: a network asked to render silence tends to mumble, and the
avatar's own closed mouth is the best rest pose there is.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
from scipy.signal import get_window, lfilter

from lipsync_cli.media.audio import SAMPLE_RATE_HZ
from lipsync_cli.media.cache import REGION_PX, crop_region
from lipsync_cli.core.driver import MouthParams
from lipsync_cli.errors import GeneratorError
from lipsync_cli.core.generator import AUDIO_WINDOW_SAMPLES, MouthImage
from lipsync_cli.core.region import lower_face_mask
from lipsync_cli.media.store import Model

# the mel recipe (docs/onnx-contract.md), with the numbers of Wav2Lip's published hyper-parameters
MEL_BANDS = 80
MEL_FRAME_RATE_HZ = 80  # one mel frame per 12.5 ms
HOP_SAMPLES = SAMPLE_RATE_HZ // MEL_FRAME_RATE_HZ  # 200
N_FFT_SAMPLES = 4 * HOP_SAMPLES  # 800 = 50 ms, also the Hann window length
MEL_FRAMES = AUDIO_WINDOW_SAMPLES // HOP_SAMPLES  # 16
MEL_MIN_HZ = 55.0
MEL_MAX_HZ = 7600.0
PREEMPHASIS = 0.97  # y[n] = x[n] - 0.97 x[n-1], lifts the consonant bands
AMPLITUDE_FLOOR = 1e-5  # -100 dB: keeps log10 finite on silence
REF_LEVEL_DB = 20.0  # subtracted from every level
MIN_LEVEL_DB = -100.0  # levels from here to 0 dB map linearly onto -FEATURE_LIMIT .. +FEATURE_LIMIT
FEATURE_LIMIT = 4.0

AUDIO_INPUT, FACE_INPUT, MOUTH_OUTPUT = "audio", "face", "mouth"
AUDIO_SHAPE = (1, 1, MEL_BANDS, MEL_FRAMES)
FACE_CHANNELS = (6, 3)  # masked + reference (Wav2Lip), or the face alone
FACE_MARGIN = 0.1  # the face square's side is this much more than the face box's, so an opening jaw stays in
COLOUR_ORDER_KEY = "colour_order"  # ONNX metadata: "rgb" (default) or "bgr"
CONTRACT = "see docs/onnx-contract.md"

# onnxruntime raises its own exception classes, none of them derived from a common base
_ORT_ERRORS = (ort_state.Fail, ort_state.InvalidArgument, ort_state.InvalidGraph, ort_state.InvalidProtobuf,
               ort_state.NoSuchFile, ort_state.NotImplemented, ort_state.RuntimeException, RuntimeError)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (15 mel there), logarithmic above (27 mel per 6.4x)."""
    hz = np.asarray(hz, dtype=np.float64)
    log_step = np.log(6.4) / 27.0
    # np.where evaluates both branches: keep the logarithm's argument positive
    return np.where(hz < 1000.0, hz * 3.0 / 200.0, 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) / log_step)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_step = np.log(6.4) / 27.0
    return np.where(mel < 15.0, mel * 200.0 / 3.0, 1000.0 * np.exp((mel - 15.0) * log_step))


@lru_cache(maxsize=1)
def mel_filterbank() -> np.ndarray:
    """(MEL_BANDS, N_FFT_SAMPLES // 2 + 1) float64: triangular filters evenly spaced in mel between
    MEL_MIN_HZ and MEL_MAX_HZ, each scaled to unit area (Slaney normalisation)."""
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(MEL_MIN_HZ), _hz_to_mel(MEL_MAX_HZ), MEL_BANDS + 2))
    bins_hz = np.arange(N_FFT_SAMPLES // 2 + 1) * SAMPLE_RATE_HZ / N_FFT_SAMPLES
    lo, centre, hi = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bins_hz - lo) / (centre - lo)
    falling = (hi - bins_hz) / (hi - centre)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return triangles * (2.0 / (hi - lo))


def log_mel_window(audio: np.ndarray) -> np.ndarray:
    """The network's `audio` features for one frame: (MEL_BANDS, MEL_FRAMES) float32 in [-4, 4].

    audio: (AUDIO_WINDOW_SAMPLES,) float32 mono at 16 kHz, centred on the frame. Mel frame k is the
    50 ms Hann-windowed spectrum centred on the middle of the window's k-th 12.5 ms hop (zeros
    beyond the window's ends), after pre-emphasis; magnitudes go through the mel filters, to dB
    with a floor, and onto [-4, 4].
    """
    audio = np.asarray(audio, dtype=np.float64)
    if audio.shape != (AUDIO_WINDOW_SAMPLES,):
        raise ValueError(f"the audio window must be ({AUDIO_WINDOW_SAMPLES},) samples, got {audio.shape}")
    emphasised = lfilter([1.0, -PREEMPHASIS], [1.0], audio)
    pad = (N_FFT_SAMPLES - HOP_SAMPLES) // 2  # centres each analysis frame on its hop's middle
    padded = np.pad(emphasised, pad)
    starts = np.arange(MEL_FRAMES) * HOP_SAMPLES
    frames = padded[starts[:, None] + np.arange(N_FFT_SAMPLES)]  # (MEL_FRAMES, N_FFT_SAMPLES)
    magnitude = np.abs(np.fft.rfft(frames * get_window("hann", N_FFT_SAMPLES), axis=1))
    mel = mel_filterbank() @ magnitude.T  # (MEL_BANDS, MEL_FRAMES)
    level_db = 20.0 * np.log10(np.maximum(mel, AMPLITUDE_FLOOR)) - REF_LEVEL_DB
    scaled = 2 * FEATURE_LIMIT * (level_db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - FEATURE_LIMIT
    return np.clip(scaled, -FEATURE_LIMIT, FEATURE_LIMIT).astype(np.float32)


def face_square(face_bounds: np.ndarray) -> np.ndarray:
    """The square the network sees, (4,) float64 [xmin, ymin, xmax, ymax] in full-frame pixels: centred
    on the face box (Model.face_bounds[i]), its side the box's longer side plus FACE_MARGIN."""
    x0, y0, x1, y1 = (float(v) for v in face_bounds)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = (1 + FACE_MARGIN) * max(x1 - x0, y1 - y0) / 2
    return np.array([cx - half, cy - half, cx + half, cy + half])


def _shape_text(shape) -> str:
    return "(" + ", ".join(str(d) if d is not None else "?" for d in shape) + ")"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _fits(declared, wanted) -> bool:
    """A declared input/output shape fits the wanted one: same rank, named (dynamic) dims accept anything."""
    return len(declared) == len(wanted) and all(not isinstance(d, int) or d == w for d, w in zip(declared, wanted))


class OnnxGenerator:
    """Mouths from a user's ONNX network (see the module docstring and docs/onnx-contract.md).

    onnx_path: the .onnx file. threads: onnxruntime intra-op threads per inference; each gRPC stream
    runs its frames on its own thread, so 1 uses one core per stream. Loading checks the model's
    inputs and outputs against the contract and runs it once, raising GeneratorError with one line
    saying what was expected.
    """

    name = "onnx"

    def __init__(self, onnx_path: Path | str | None, *, threads: int = 1):
        if onnx_path is None:
            raise GeneratorError("the onnx generator needs a network: pass --onnx MODEL.onnx")
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.path = Path(onnx_path)
        if not self.path.exists():
            raise GeneratorError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise GeneratorError(f"{self.path}: is a folder, not an ONNX file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.use_deterministic_compute = True
        options.log_severity_level = 3  # errors only: warnings about the graph are not the user's business
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except ort_state.InvalidProtobuf as exc:
            raise self._fail("not an ONNX file (it does not parse as an ONNX model)") from exc
        except _ORT_ERRORS as exc:
            raise self._fail(f"onnxruntime cannot load this network ({_first_line(exc)})") from exc
        self.side_px, self.face_channels = self._check_signature()
        colour_order = self.session.get_modelmeta().custom_metadata_map.get(COLOUR_ORDER_KEY, "rgb").lower()
        if colour_order not in ("rgb", "bgr"):
            raise self._fail(f"metadata {COLOUR_ORDER_KEY}={colour_order!r}; use 'rgb' or 'bgr'")
        self.bgr = colour_order == "bgr"
        # a trial run catches what declared shapes cannot show (dynamic dims, a wrong output size)
        self.network(np.full((self.side_px, self.side_px, 3), 128, np.uint8), np.zeros(AUDIO_WINDOW_SAMPLES, np.float32))

    def _fail(self, what: str) -> GeneratorError:
        return GeneratorError(f"{self.path}: {what} ({CONTRACT})")

    def _check_signature(self) -> tuple[int, int]:
        """(side in pixels, face channels) from the declared inputs and output, or GeneratorError."""
        inputs = {a.name: a for a in self.session.get_inputs()}
        outputs = {a.name: a for a in self.session.get_outputs()}
        wanted = (f"inputs '{AUDIO_INPUT}' float32 {_shape_text(AUDIO_SHAPE)} and '{FACE_INPUT}' float32 "
                  f"(1, 6, S, S) or (1, 3, S, S)")
        if set(inputs) != {AUDIO_INPUT, FACE_INPUT}:
            raise self._fail(f"the network's inputs are {sorted(inputs)}; lipsync feeds exactly {wanted}")
        if MOUTH_OUTPUT not in outputs:
            raise self._fail(f"the network's outputs are {sorted(outputs)}; lipsync reads '{MOUTH_OUTPUT}' "
                             f"float32 (1, 3, S, S)")
        for arg in (inputs[AUDIO_INPUT], inputs[FACE_INPUT], outputs[MOUTH_OUTPUT]):
            if arg.type != "tensor(float)":
                raise self._fail(f"'{arg.name}' is {arg.type}; it must be float32")
        audio, face, mouth = inputs[AUDIO_INPUT].shape, inputs[FACE_INPUT].shape, outputs[MOUTH_OUTPUT].shape
        if not _fits(audio, AUDIO_SHAPE):
            raise self._fail(f"input '{AUDIO_INPUT}' has shape {_shape_text(audio)}; it must be "
                             f"{_shape_text(AUDIO_SHAPE)} (80 mel bands x 16 frames of 12.5 ms)")
        face_text = (f"input '{FACE_INPUT}' has shape {_shape_text(face)}; it must be (1, 6, S, S) or "
                     f"(1, 3, S, S) with S the same size for height and width")
        if len(face) != 4 or face[1] not in FACE_CHANNELS or not _fits(face[:1], (1,)):
            raise self._fail(face_text)
        height, width = face[2], face[3]
        if (isinstance(height, int) or isinstance(width, int)) and height != width:
            raise self._fail(face_text)
        side_px = height if isinstance(height, int) else REGION_PX  # a size-agnostic network: full resolution
        if not _fits(mouth, (1, 3, side_px, side_px)):
            raise self._fail(f"output '{MOUTH_OUTPUT}' has shape {_shape_text(mouth)}; it must be "
                             f"(1, 3, {side_px}, {side_px}), the size of '{FACE_INPUT}'")
        return side_px, int(face[1])

    def network(self, face_bgr: np.ndarray, audio: np.ndarray) -> np.ndarray:
        """One run of the network: (S, S, 3) uint8 BGR face square -> (S, S, 3) uint8 BGR with the mouth.

        audio: (AUDIO_WINDOW_SAMPLES,) float32 mono at 16 kHz centred on the frame.
        """
        img = face_bgr if self.bgr else cv2.cvtColor(face_bgr, cv2.COLOR_BGR2RGB)
        face = img.astype(np.float32).transpose(2, 0, 1) / 255.0
        if self.face_channels == 6:
            masked = face.copy()
            masked[:, self.side_px // 2:] = 0.0
            face = np.concatenate([masked, face])
        feeds = {AUDIO_INPUT: log_mel_window(audio)[None, None], FACE_INPUT: face[None]}
        try:
            (out,) = self.session.run([MOUTH_OUTPUT], feeds)
        except _ORT_ERRORS as exc:
            raise self._fail(f"the network failed to run ({_first_line(exc)})") from exc
        want = (1, 3, self.side_px, self.side_px)
        if out.shape != want:
            raise self._fail(f"output '{MOUTH_OUTPUT}' came out {out.shape}; it must be {want}")
        if not np.isfinite(out).all():
            raise self._fail(f"output '{MOUTH_OUTPUT}' holds NaN or infinite values")
        img = np.round(np.clip(out[0].transpose(1, 2, 0), 0.0, 1.0) * 255.0).astype(np.uint8)
        return img if self.bgr else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)

    def open_stream(self, model: Model) -> "OnnxStream":
        return OnnxStream(self, model)


class OnnxStream:
    """Renders frames of one model for one client stream (the network keeps no state between frames)."""

    def __init__(self, generator: OnnxGenerator, model: Model):
        self.generator, self.model = generator, model

    def render(self, *, model_frame: int, params: MouthParams, audio: np.ndarray) -> MouthImage:
        """The region of `model_frame` with the network's mouth blended in (untouched without speech)."""
        model, side_px = self.model, self.generator.side_px
        i = int(model_frame)
        region = model.region(i)
        bounds = model.mouth_bounds[i]
        if not params.speech:
            return MouthImage(region, bounds)
        square = face_square(model.face_bounds[i])
        # the network's input is small: decode the frame at a reduced size when it keeps enough pixels
        reduce = next(r for r in (8, 4, 2, 1) if r == 1 or (square[2] - square[0]) / r >= side_px)
        face = self.generator.network(crop_region(model.frame(i, reduce=reduce), square / reduce, side_px), audio)
        # region pixel -> full-frame pixel -> face-square pixel (crop_region's convention on both sides)
        to_frame = (bounds[2:] - bounds[:2]) / REGION_PX
        to_face = side_px / (square[2:] - square[:2])
        scale = to_frame * to_face
        shift = (bounds[:2] - square[:2]) * to_face
        m = np.array([[scale[0], 0.0, shift[0]], [0.0, scale[1], shift[1]]])
        mouth = cv2.warpAffine(face, m, (REGION_PX, REGION_PX), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REPLICATE)
        alpha = lower_face_mask(region.shape[:2], model.region_points(i))[..., None]
        blended = region.astype(np.float32) * (1.0 - alpha) + mouth.astype(np.float32) * alpha
        return MouthImage(np.round(blended).clip(0, 255).astype(np.uint8), bounds)
