"""Short fuzz runs of the loaders and servers (the long ones: bench/fuzz.py), and a regression test
for every crash the fuzzing found.

Targets and contracts are in fuzz_support.py. The runs are derandomized, so CI sees the same cases
every time. Failures already pinned by a regression test below (KNOWN_FAILURES) are counted, not
raised, so a short run keeps looking for new ones; when a fix lands, its strict xfail regression
test starts passing and fails the run: remove the xfail and the KNOWN_FAILURES entry together.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import fuzz_support as F
from fuzz_support import Mutation, Tamper
from lipsync_cli.errors import AudioError, VideoError
from lipsync_cli.media.audio import load_audio
from lipsync_cli.media.cache import check_cache
from lipsync_cli.media.video import iter_frames, probe_video

# no wall-clock limits in unit tests (deadline=None): a hang is caught by fuzz_support.hang_guard
SHORT = settings(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))

# signature regex -> the regression test that pins the bug
KNOWN_FAILURES: dict[str, str] = {}


def _run(target, case) -> None:
    try:
        with F.hang_guard():
            target.check(case)
    except Exception as exc:
        if not any(re.match(p, F.signature(exc)) for p in KNOWN_FAILURES):
            raise


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def audio(work):
    (work / "audio").mkdir()
    return F.AudioTarget(work / "audio")


@pytest.fixture(scope="module")
def video(work):
    (work / "video").mkdir()
    return F.VideoTarget(work / "video")


@pytest.fixture(scope="module")
def cache(work):
    return F.CacheTarget(work / "cache")


@pytest.fixture(scope="module")
def rpc(work, cache):
    target = F.GrpcTarget(work / "cache")  # the tiny model and its cache are the cache target's
    yield target
    target.close()


@pytest.fixture(scope="module")
def web(work):
    target = F.HttpTarget(work / "http", strict_units=False)  # see the unknown-unit regression test
    yield target
    target.close()


# --- short runs ---------------------------------------------------------------------------------

def test_audio_loading_survives_damaged_files(audio):
    @settings(SHORT, max_examples=60)
    @given(audio.strategy())
    def run(case):
        _run(audio, case)

    run()


def test_video_probing_survives_damaged_files(video):
    @settings(SHORT, max_examples=30)
    @given(video.strategy())
    def run(case):
        _run(video, case)

    run()


def test_damaged_caches_are_rebuilt_or_refused_before_use(cache):
    """Byte damage that check_cache sees is rebuilt; what it accepts must load (see the xfails below)."""
    @settings(SHORT, max_examples=25)
    @given(F.mutations())
    def run(edits):
        data = F.mutate(cache.good, edits)
        cache.cache_file.write_bytes(data)
        if check_cache(cache.video, cache.cache_file) == "" and data != cache.good:
            return  # accepted damage: test_damaged_member_the_check_accepts_is_rebuilt pins it
        _run(cache, edits)

    run()


def test_grpc_request_fields_get_a_proper_status(rpc):
    @settings(SHORT, max_examples=40)
    @given(rpc.strategy())
    def run(case):
        _run(rpc, case)

    run()


def test_http_ranges_and_paths(web):
    @settings(SHORT, max_examples=80)
    @given(web.strategy())
    def run(case):
        _run(web, case)

    run()


# --- the contracts hold for the cases written out ---------------------------------------------

def test_truncated_cache_is_rebuilt_for_real(work, cache):
    target = F.CacheTarget(work / "cache", real_rebuild=True)
    before = target.rebuilds
    target.check_bytes(cache.good[: len(cache.good) // 2])
    assert target.rebuilds == before + 1


@pytest.mark.parametrize("tamper", [Tamper("object", "landmarks"), Tamper("extra", "landmarks"),
                                    Tamper("raw_pickle", "landmarks")], ids=lambda t: t.kind)
def test_a_pickle_in_the_cache_is_never_executed(cache, tamper):
    try:
        cache.check(tamper)
    except F.ContractBroken as exc:
        assert "pickle" not in str(exc), exc
    except Exception:  # a crash is pinned by the xfails below; here only "never unpickled" counts
        pass
    assert not cache.marker.exists()


@pytest.mark.parametrize("value", ["bytes=0-9", "bytes=-500", "bytes=0-", "BYTES=5-5", "bytes=0-0,-1"])
def test_valid_ranges_are_206_with_the_files_bytes(web, value):
    web.check(F.HttpCase(F.TINY_MODEL, value))


@pytest.mark.parametrize("value", ["bytes=999999999-", "bytes=-0"])
def test_unsatisfiable_ranges_are_416(web, value):
    web.check(F.HttpCase(F.TINY_MODEL, value))


@pytest.mark.parametrize("path", ["..%2fsecret.txt", "%2e%2e/secret.mp4", "tiny2",
                                  "..%2f..%2fetc%2fpasswd", "tiny%00", "%c0%ae%c0%ae%c0%afsecret.txt", "models%2ftiny"])
def test_paths_outside_the_models_are_refused(web, path):
    web.check(F.HttpCase(path, None))


# --- regressions: crashes the fuzzing found (each fixed; they stay as regression tests) ---------------------------

def test_wav_with_an_absurd_sample_rate_is_an_audio_error(audio, tmp_path):
    data = bytearray(audio.seeds["pcm16.wav"])
    data[24:28] = struct.pack("<I", 2**31 - 1)  # the fmt chunk's sample rate
    (tmp_path / "rate.wav").write_bytes(bytes(data))
    with pytest.raises(AudioError):
        load_audio(tmp_path / "rate.wav")


def test_huge_float_samples_never_become_nan(tmp_path):
    import soundfile as sf

    loud = np.full((4410, 2), 3e38, np.float32)
    loud[::2] *= -1
    sf.write(tmp_path / "loud.wav", loud, 44_100, subtype="FLOAT")
    try:
        clip = load_audio(tmp_path / "loud.wav")
    except AudioError:
        return
    assert np.isfinite(clip.samples).all()


def test_mp3_announcing_trillions_of_frames_is_an_audio_error(audio, tmp_path):
    (tmp_path / "long.mp3").write_bytes(F.mutate(audio.seeds["speech.mp3"], [Mutation("word", 28, b"\xff\xff\x00\x00")]))
    with pytest.raises(AudioError):
        load_audio(tmp_path / "long.mp3")


def test_m4a_whose_stream_lost_its_parameters_is_an_audio_error(audio, tmp_path):
    seed = audio.seeds["speech.m4a"]
    (tmp_path / "cut.m4a").write_bytes(F.mutate(seed, [Mutation("delete", 181379, b"\x81\xc3")]))
    with pytest.raises(AudioError):
        load_audio(tmp_path / "cut.m4a")


def test_mp4_whose_stream_lost_its_parameters_is_a_video_error(video, tmp_path):
    edits = [Mutation("delete", 3402, b"\x07\xa6"), Mutation("truncate", 444041), Mutation("set", 929565, b"\xb9"),
             Mutation("insert", 421, b"F")]
    (tmp_path / "cut.mp4").write_bytes(F.mutate(video.seed, edits))
    with pytest.raises(VideoError):
        probe_video(tmp_path / "cut.mp4")
        list(iter_frames(tmp_path / "cut.mp4"))


@pytest.mark.parametrize("case", [
    [Mutation("flip", 13847, b"\x00")],  # a bit of frame_jpeg's data: the zip's CRC no longer matches
    Tamper("object", "region_offsets"), Tamper("extra", "landmarks"), Tamper("dtype", "frame_offsets"),
    Tamper("shorter", "face_found"), Tamper("shorter", "region_jpeg"), Tamper("raw_pickle", "face_found"),
], ids=["crc", "object", "extra_object", "dtype", "shorter_found", "shorter_jpeg", "raw_pickle"])
def test_damaged_member_the_check_accepts_is_rebuilt(cache, case):
    cache.check(case)


@pytest.mark.parametrize("value", ["items=0-9", "seconds=1-2", "none=0-0"])
def test_range_of_an_unknown_unit_is_ignored(work, value):
    target = F.HttpTarget(work / f"strict-{value.split('=')[0]}")
    try:
        target.check(F.HttpCase(F.TINY_MODEL, value))
    finally:
        target.close()


def test_known_failures_name_their_regression_tests():
    names = {n for n in globals() if n.startswith("test_")}
    assert set(KNOWN_FAILURES.values()) <= names
    assert np.isfinite(F.tone(0.1, 16_000)).all()
