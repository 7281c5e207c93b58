"""Phones for the offline mouth driver: speech -> English phone labels per 10 ms hop -> mouth targets.

A render has the whole clip, so its mouth can follow the sounds themselves instead of guessing
them from the spectrum a few hops at a time: P, B and M shut the lips, open vowels drop the jaw,
rounded vowels round the lips. The phones come from pocketsphinx's phone decoder (its English
acoustic model and phone language model ship inside the pip wheel: nothing is downloaded), the way
phonetic lip-sync tools do it. Speech in another language still gets the nearest English phones,
which is close enough for lips.

- `PhoneLabeller`: a growing 16 kHz signal in any chunks -> (samples, one label per hop) in
  segments of at most MAX_SEGMENT_S (a clip of up to 5 minutes is one segment), each cut at the
  quietest moment between MIN_SEGMENT_S and MAX_SEGMENT_S from its start. The cut depends only on the audio, so any chunking gives the same
  labels as the whole clip at once, and memory stays bounded on speech of any length.
- `recognise_hops(samples)`: the labels of one segment. pocketsphinx holds the GIL for the whole of
  a decode (a second per 20 s of speech), which would freeze every other thread of the process: the
  live streams of a `serve` that also renders, a render's own compositing. So each clip is decoded
  in a Python process of its own, started ahead of need (`start_recogniser`).
- `phone_target(label)`: the mouth a phone asks for, as the acoustic tracker's `HopTarget`, so the
  same frame smoother (coarticulation, lips with mass, closures, rest) turns it into frames.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np

from lipsync_cli.core.hops import HOP_MS, SILENT_TARGET, HopTarget

PHONE_SAMPLE_RATE_HZ = 16000  # the acoustic model's rate
MAX_SEGMENT_S = 300.0  # audio recognised at once at most (about 100 MB and 20 s of CPU time)
MIN_SEGMENT_S = 120.0  # ... and at least, unless the audio ends first. Long segments matter: the
# recogniser normalises the cepstrum over its whole input, and 15-30 s pieces of a 65 s clip were
# labelled differently from the whole clip (viseme AUC against whole-clip labels 0.86 against 0.98)
CUT_WINDOW_MS = 200  # a segment is cut in the middle of the quietest window this long
HOP_SAMPLES = PHONE_SAMPLE_RATE_HZ * HOP_MS // 1000
SILENCE = "SIL"

# a person's mouth in running speech, (open, wide, round), and the ARPAbet phones that take it: jaw
# low on open vowels, lips spread on front vowels and sibilants, rounded on back vowels and W
_MOUTHS: tuple[tuple[tuple[float, float, float], str], ...] = (
    ((0.95, 0.2, 0.0), "AA"), ((0.85, 0.5, 0.0), "AE"), ((0.7, 0.3, 0.0), "AH"), ((0.8, 0.0, 0.5), "AO"),
    ((0.85, 0.2, 0.3), "AW"), ((0.9, 0.3, 0.0), "AY"), ((0.7, 0.5, 0.0), "EH"), ((0.6, 0.6, 0.0), "EY"),
    ((0.35, 0.1, 0.4), "ER"), ((0.45, 0.6, 0.0), "IH"), ((0.3, 0.8, 0.0), "IY"), ((0.55, 0.0, 0.8), "OW"),
    ((0.6, 0.0, 0.6), "OY"), ((0.4, 0.0, 0.6), "UH"), ((0.25, 0.0, 1.0), "UW"),
    ((0.1, 0.3, 0.0), "F V"), ((0.25, 0.4, 0.0), "TH DH T D N"), ((0.35, 0.3, 0.0), "L K G"),
    ((0.15, 0.6, 0.0), "S Z"), ((0.2, 0.0, 0.6), "SH ZH CH JH"), ((0.3, 0.3, 0.0), "NG"),
    ((0.5, 0.3, 0.0), "HH"), ((0.25, 0.0, 0.5), "R"), ((0.15, 0.0, 1.0), "W"), ((0.25, 0.7, 0.0), "Y"),
)
CLOSURES = ("P", "B", "M")  # the lips shut
OPEN_GAIN = 1.25  # the slower render motion reaches less of each target: this brings the driver's 95th
# percentile of `open` in speech back to that of the live driver (about 0.7), the opening the generator is sized for
PHONE_TARGETS: dict[str, HopTarget] = {
    **{label: HopTarget(min(1.0, OPEN_GAIN * open_), wide, round_, False)
       for (open_, wide, round_), labels in _MOUTHS for label in labels.split()},
    **{label: HopTarget(0.0, 0.0, 0.0, True) for label in CLOSURES},
}


def is_phone(label: str) -> bool:
    """Whether `label` is a speech sound (not SIL, not a noise marker such as +NSN+ or +SPN+)."""
    return label in PHONE_TARGETS


def phone_target(label: str) -> HopTarget:
    """The mouth phone `label` asks for; silence and noise markers (+NSN+, +SPN+, ...) ask for rest."""
    return PHONE_TARGETS.get(label, SILENT_TARGET)


PHONE_MODEL = "en-us/en-us-phone.lm.bin"  # the phone language model, inside pocketsphinx's wheel
DECODER_OPTIONS = dict(lm=None, lw=2.0, pip=0.3, beam=1e-200, pbeam=1e-20, samprate=PHONE_SAMPLE_RATE_HZ,
                       logfn="/dev/null")
# A recogniser process: 16-bit PCM on stdin until it closes -> "start_frame end_frame phone" lines. It
# imports pocketsphinx alone (not this package, numpy or OpenCV), and loads the model (about 0.1 s)
# before it reads its clip: ready 0.2 s after its start instead of 0.3 s, which a render waits for.
_RECOGNISER_CODE = f"""
import sys
from pocketsphinx import Decoder, get_model_path
decoder = Decoder(allphone=get_model_path({PHONE_MODEL!r}), **{DECODER_OPTIONS!r})
pcm = sys.stdin.buffer.read()
decoder.start_utt()
decoder.process_raw(pcm, full_utt=True)
decoder.end_utt()
sys.stdout.write("".join(f"{{s.start_frame}} {{s.end_frame}} {{s.word}}\\n" for s in decoder.seg()))
"""


def _pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def _hop_labels(segments: list[tuple[int, int, str]], n_hops: int) -> list[str]:
    """One label per hop from the decoder's (first frame, last frame, phone) segments (10 ms frames)."""
    labels = [SILENCE] * n_hops
    for first, last, phone in segments:
        first, last = max(first, 0), min(last + 1, n_hops)
        labels[first:last] = [phone] * max(0, last - first)
    return labels


def recognise_hops(samples: np.ndarray) -> list[str]:
    """One ARPAbet label (or SIL) per 10 ms hop of (n,) float32 mono 16 kHz speech; n // 160 labels.

    Decoded in a process of its own (the one `start_recogniser` started, or a new one); where no
    process can be started or it fails, in this one.
    """
    n_hops = len(samples) // HOP_SAMPLES
    try:
        proc = _RECOGNISER.take()
        out, _ = proc.communicate(_pcm16(samples))
        segments = [(int(a), int(b), phone) for a, b, phone in
                    (line.split() for line in out.decode("ascii", "replace").splitlines())]
    except (OSError, ValueError):
        return decode_hops(samples)
    return _hop_labels(segments, n_hops) if proc.returncode == 0 else decode_hops(samples)


def start_recogniser() -> None:
    """Start the process that will decode the next clip now (0.2 s of its own CPU), so that it is
    ready when the phones are wanted."""
    _RECOGNISER.start_spare()


def decode_hops(samples: np.ndarray) -> list[str]:
    """`recognise_hops` in this process (holding the GIL throughout)."""
    from pocketsphinx import Decoder, get_model_path

    n_hops = len(samples) // HOP_SAMPLES
    if n_hops == 0:
        return [SILENCE] * n_hops
    decoder = Decoder(allphone=get_model_path(PHONE_MODEL), **DECODER_OPTIONS)
    decoder.start_utt()
    decoder.process_raw(_pcm16(samples), full_utt=True)
    decoder.end_utt()
    return _hop_labels([(s.start_frame, s.end_frame, s.word) for s in decoder.seg()], n_hops)


class _Recogniser:
    """Recogniser processes, one per clip, the next one kept started. A process started by a plain
    `python -c` (not multiprocessing) never imports the caller's main module, and ends when its
    stdin closes: with the clip, or when this process ends."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spare: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", _RECOGNISER_CODE], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def take(self) -> subprocess.Popen:
        with self.lock:
            proc, self.spare = self.spare, None
        return proc if proc is not None and proc.poll() is None else self._start()

    def start_spare(self) -> None:
        with self.lock:
            if self.spare is None or self.spare.poll() is not None:
                try:
                    self.spare = self._start()
                except OSError:
                    self.spare = None


_RECOGNISER = _Recogniser()


class PhoneLabeller:
    """Streaming phone labels: `push(samples)` -> (samples now labelled, their hop labels).

    The samples come back in order, whole hops only, each with its label; `flush()` returns the
    rest at the end (a last partial hop is labelled SIL).
    """

    def __init__(self, *, max_segment_s: float = MAX_SEGMENT_S, min_segment_s: float = MIN_SEGMENT_S) -> None:
        self.hop = HOP_SAMPLES
        self.max_samples = int(max_segment_s * PHONE_SAMPLE_RATE_HZ) // self.hop * self.hop
        self.min_samples = int(min_segment_s * PHONE_SAMPLE_RATE_HZ) // self.hop * self.hop
        self.cut_hops = CUT_WINDOW_MS // HOP_MS
        self.buffer = np.zeros(0, dtype=np.float32)

    def push(self, samples: np.ndarray) -> tuple[np.ndarray, list[str]]:
        self.buffer = np.concatenate([self.buffer, np.asarray(samples, dtype=np.float32)])
        done: list[np.ndarray] = []
        labels: list[str] = []
        while len(self.buffer) >= self.max_samples:
            cut = self._cut(self.buffer[:self.max_samples])
            done.append(self.buffer[:cut])
            labels += recognise_hops(self.buffer[:cut])
            self.buffer = self.buffer[cut:]
        return (np.concatenate(done) if done else np.zeros(0, dtype=np.float32)), labels

    def flush(self) -> tuple[np.ndarray, list[str]]:
        rest, self.buffer = self.buffer, np.zeros(0, dtype=np.float32)
        labels = recognise_hops(rest)
        if len(rest) % self.hop:
            labels.append(SILENCE)
        return rest, labels

    def _cut(self, segment: np.ndarray) -> int:
        """Where to end a full segment: the middle of its quietest CUT_WINDOW_MS after min_samples."""
        hops = segment.reshape(-1, self.hop)
        power = np.square(hops.astype(np.float64)).mean(axis=1)
        window = np.convolve(power, np.ones(self.cut_hops), mode="valid")  # window starting at each hop
        first = self.min_samples // self.hop
        quietest = first + int(np.argmin(window[first:]))
        return (quietest + self.cut_hops // 2) * self.hop
