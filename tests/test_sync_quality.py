"""The mouth as a viewer (and the outside judge) sees it: lips measured in rendered pixels.

Uses bench/sync_eval.py: render real speech onto an avatar, measure the inner-lip gap in every
output frame with a face-landmark detector, and compare with English phone labels.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import DRAWN_VIDEO, SAMPLE_VIDEO, SPEAKER_VIDEO, SPEECH_44K, SPEECH_48K, shared

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
pytest.importorskip("pocketsphinx", reason="pocketsphinx (the English phone labeller) is not installed")
from sync_eval import evaluate  # noqa: E402


@pytest.mark.parametrize("avatar", ["sample", "speaker", "drawn"])
def test_lips_open_on_vowels_close_on_pbm_and_rest_in_silence(avatar, store, tmp_path):
    video = {"sample": SAMPLE_VIDEO, "speaker": shared(SPEAKER_VIDEO), "drawn": shared(DRAWN_VIDEO)}[avatar]
    speech = shared(SPEECH_44K if avatar == "drawn" else SPEECH_48K)
    r = evaluate(video, speech, store=store, work_dir=tmp_path)
    assert r["face_found"] == 1.0, r
    assert r["auc"] > 0.80, r
    assert abs(r["best_offset"]) <= 1, r
    assert r["silence_closed"] >= 0.9, r
    assert r["step_p95"] < 0.5, r
