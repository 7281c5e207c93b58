"""The one clock: which video frame a given audio sample belongs to.

Every module that maps between samples and frames calls these functions; nothing recomputes the
mapping on its own. fps is a `Fraction` so that 30000/1001 is exact.
"""

from fractions import Fraction


def frame_of_sample(sample_index: int, *, fps: Fraction, sample_rate_hz: int) -> int:
    """The output frame shown while audio sample `sample_index` plays: n * fps // rate."""
    return sample_index * fps.numerator // (fps.denominator * sample_rate_hz)


def first_sample_of_frame(frame_index: int, *, fps: Fraction, sample_rate_hz: int) -> int:
    """The first audio sample that falls in frame `frame_index` (inverse of `frame_of_sample`)."""
    # smallest n with n * num // (den * rate) >= i, that is n >= i * den * rate / num
    return -(-frame_index * fps.denominator * sample_rate_hz // fps.numerator)


def frame_centre_sample(frame_index: int, *, fps: Fraction, sample_rate_hz: int) -> int:
    """The audio sample in the middle of frame `frame_index` (where its audio window is centred)."""
    start = first_sample_of_frame(frame_index, fps=fps, sample_rate_hz=sample_rate_hz)
    return (start + first_sample_of_frame(frame_index + 1, fps=fps, sample_rate_hz=sample_rate_hz)) // 2


def frame_count(n_samples: int, *, fps: Fraction, sample_rate_hz: int) -> int:
    """How many output frames cover `n_samples` of audio (the last sample's frame plus one)."""
    if n_samples <= 0:
        return 0
    return frame_of_sample(n_samples - 1, fps=fps, sample_rate_hz=sample_rate_hz) + 1


def ping_pong(frame_index: int, n_frames: int) -> int:
    """Map an ever-growing frame index onto a video of `n_frames`, playing it back and forth.

    0, 1, ..., n-1, n-2, ..., 1, 0, 1, ... so the loop never jumps.
    """
    if n_frames <= 1:
        return 0
    period = 2 * (n_frames - 1)
    k = frame_index % period
    return k if k < n_frames else period - k
