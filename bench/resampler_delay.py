"""How much audio the live streaming resampler holds back: each held-back millisecond is a millisecond of
live latency before the mouth driver hears the sound.

    python bench/resampler_delay.py [--chunk-ms 10] [--seconds 5]

Feeds noise in chunks of --chunk-ms at the rates live audio comes in (a web page's 44.1 or 48 kHz, the
OpenAI voice's 24 kHz) to `StreamResampler` (to 16 kHz) and prints, after each chunk, how far its
output lags the input: mean and worst, in ms. When libsoxr's Python binding is installed (it was the
resampler until stop 26), its high-quality stream is measured the same way beside it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lipsync_cli.media.audio import SAMPLE_RATE_HZ, StreamResampler  # noqa: E402

RATES_HZ = (44_100, 48_000, 24_000)
SETTLE_CHUNKS = 10  # the first chunks fill the filter: not counted


def held_back_ms(push, rate_hz: int, chunk_ms: int, seconds: float) -> tuple[float, float]:
    """(mean, worst) of input duration minus output duration after each chunk, in ms."""
    rng = np.random.default_rng(0)
    n = rate_hz * chunk_ms // 1000
    n_in = n_out = 0
    lags_ms = []
    for _ in range(int(seconds * 1000 / chunk_ms)):
        n_in += n
        n_out += len(push((0.1 * rng.standard_normal(n)).astype(np.float32)))
        lags_ms.append(1000 * (n_in / rate_hz - n_out / SAMPLE_RATE_HZ))
    settled = lags_ms[SETTLE_CHUNKS:]
    return float(np.mean(settled)), float(np.max(settled))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunk-ms", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    try:
        import soxr
    except ImportError:
        soxr = None
    print(f"held back, {args.chunk_ms} ms chunks (mean / worst, ms)")
    for rate_hz in RATES_HZ:
        ours = held_back_ms(StreamResampler(from_rate_hz=rate_hz).push, rate_hz, args.chunk_ms, args.seconds)
        line = f"{rate_hz:>6} Hz  StreamResampler {ours[0]:5.1f} / {ours[1]:5.1f}"
        if soxr is not None:
            stream = soxr.ResampleStream(rate_hz, SAMPLE_RATE_HZ, 1, dtype="float32", quality="HQ")
            old = held_back_ms(stream.resample_chunk, rate_hz, args.chunk_ms, args.seconds)
            line += f"   libsoxr HQ {old[0]:5.1f} / {old[1]:5.1f}"
        print(line)


if __name__ == "__main__":
    main()
