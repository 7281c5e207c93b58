"""Judge rendered videos as the outside judge does (definitions in `judge.py`), on every avatar.

Renders speech onto each avatar through the real `render` pipeline (embedded gRPC service), then
measures the lips in the output pixels. Avatars: the two neutral ones made from the stills in
../shared/data (`avatars.neutral_avatar`), the bundled sample, the illustrated and the talking
speaker. Speech: by default the long held-out mix (all recordings joined with pauses, ~65 s);
`--speech NAME` for one recording.

    python bench/sync_eval.py                      # every avatar x the long mix
    python bench/sync_eval.py --avatars man,girl   # some avatars
    python bench/sync_eval.py VIDEO WAV            # your own pair
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2  # noqa: F401  (cv2 before av)

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import soundfile as sf  # noqa: E402

from avatars import STILLS, long_speech, neutral_avatar  # noqa: E402
from common import DRAWN_VIDEO, SAMPLE_VIDEO, SHARED_DATA, SPEAKER_VIDEO, need  # noqa: E402
from judge import Scores, judge_video  # noqa: E402
from lipsync_cli.media.audio import SAMPLE_RATE_HZ, load_audio  # noqa: E402
from lipsync_cli.media.store import ModelStore  # noqa: E402
from lipsync_cli.render.pipeline import RenderOptions, render  # noqa: E402

AVATARS = ("man", "girl", "sample", "drawn", "speaker")


def avatar_video(name: str, work_dir: Path) -> Path:
    """The model video of avatar `name` (neutral ones are made from the stills into work_dir once)."""
    if name in ("man", "girl"):
        still = need(SHARED_DATA / STILLS[0 if name == "man" else 1])
        return neutral_avatar(still, work_dir / f"{name}.mp4")
    return {"sample": SAMPLE_VIDEO, "drawn": need(DRAWN_VIDEO), "speaker": need(SPEAKER_VIDEO)}[name]


def evaluate(video: Path, speech_wav: Path, *, store: ModelStore, work_dir: Path) -> Scores:
    """Render `speech_wav` onto `video` and judge the output."""
    out = work_dir / f"{video.stem}-{speech_wav.stem}.mp4"
    render(speech_wav, out, options=RenderOptions(model=str(video)), store=store)
    return judge_video(out, load_audio(speech_wav).samples)


def row(avatar: str, speech: str, s: Scores) -> str:
    verdict = "meets the goal" if not s.misses() else "MISSES: " + "; ".join(s.misses())
    return (f"| {avatar} | {speech} | {s.auc:.3f} | {s.best_lag:+d} | {s.jumpiness:.2f} | {s.closed_in_silence:.2f} "
            f"| {s.mouth_range:.3f} | {100 * s.face_found:.0f}% | {verdict} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pair", nargs="*", help="VIDEO WAV (your own pair)")
    ap.add_argument("--avatars", default=",".join(AVATARS))
    ap.add_argument("--speech", help="one recording of ../shared/data instead of the long mix")
    ap.add_argument("--work-dir", type=Path, help="keep the made avatars and renders here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        store = ModelStore(cache_dir=work / "cache")
        if args.pair:
            pairs = [(Path(args.pair[0]).stem, Path(args.pair[0]), Path(args.pair[1]))]
        else:
            if args.speech:
                wav = need(SHARED_DATA / args.speech)
            else:
                wav = work / "long_mix.wav"
                sf.write(str(wav), long_speech(), SAMPLE_RATE_HZ, subtype="PCM_16")
            pairs = [(a, avatar_video(a, work), wav) for a in args.avatars.split(",")]
        print("| avatar | speech | AUC lag 0 | best lag | jumpiness | closed in silence | range | face | verdict |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, video, wav in pairs:
            print(row(name, wav.stem, evaluate(video, wav, store=store, work_dir=work)), flush=True)


if __name__ == "__main__":
    main()
