"""`lipsync render` end to end: real audio in, a real MP4 out, checked with ffprobe and by pixels."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import cv2  # noqa: I001  (cv2 before av, see media/video.py)
import av
import numpy as np
import pytest

from conftest import SAMPLE_SPEECH, SAMPLE_VIDEO, SPEAKER_VIDEO, SPEECH_44K, SPEECH_48K, shared, write_wav
from helpers import assert_clean_error, make_video, run_cli
from lipsync_cli.core.driver import REST
from lipsync_cli.core.engine import MouthFrame
from lipsync_cli.core.timing import ping_pong
from lipsync_cli.errors import ServiceError
from lipsync_cli.media.audio import load_audio
from lipsync_cli.media.video import Mp4Writer, iter_frames
from lipsync_cli.render.pipeline import RenderOptions, _compose, _compose_for, render
from lipsync_cli.rpc.service import create_server


def ffprobe(path: Path) -> dict:
    if shutil.which("ffprobe") is None:
        pytest.skip("ffprobe is not installed (apt-get install ffmpeg)")
    out = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def check_mp4(path: Path, *, fps: int, duration_s: float, width: int, height: int) -> dict:
    info = ffprobe(path)
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    audio = next(s for s in info["streams"] if s["codec_type"] == "audio")
    assert video["codec_name"] == "h264" and video["pix_fmt"] == "yuv420p"
    assert audio["codec_name"] == "aac"
    assert video["r_frame_rate"] == f"{fps}/1"
    assert (int(video["width"]), int(video["height"])) == (width, height)
    assert abs(float(video["duration"]) - duration_s) <= 1.0 / fps + 1e-6, (video["duration"], duration_s)
    assert abs(float(audio["duration"]) - duration_s) < 0.05
    head = path.read_bytes()[: 1 << 20]
    moov, mdat = head.find(b"moov"), head.find(b"mdat")
    assert moov >= 0 and (mdat < 0 or moov < mdat)  # moov atom first: the file plays while downloading
    return info


def test_readme_command_renders_the_sample(tmp_path):
    out = tmp_path / "out.mp4"
    proc = run_cli("render", SAMPLE_SPEECH, "-o", out, "--cache-dir", tmp_path / "cache", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "real time" in proc.stdout and "frames" in proc.stdout
    duration = load_audio(SAMPLE_SPEECH).duration_s
    check_mp4(out, fps=25, duration_s=duration, width=576, height=768)
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".mp4"] == ["out.mp4"]


def _frames(path: Path) -> list[np.ndarray]:
    return list(iter_frames(path))


def test_mouth_moves_with_speech_and_the_rest_stays_the_model(tmp_path, store, sample_model):
    out = tmp_path / "sample.mp4"
    summary = render(SAMPLE_SPEECH, out, options=RenderOptions(model=str(SAMPLE_VIDEO)), store=store)
    assert summary.fallbacks == 0 and summary.frames == len(_frames(out))
    m = sample_model
    frames = _frames(out)
    b = m.mouth_bounds
    mouth_diff, rest_diff = [], []
    for i, frame in enumerate(frames):
        j = ping_pong(i, m.n_frames)
        ref = m.frame(j).astype(np.int16)
        x0, y0, x1, y1 = b[j].astype(int)
        d = np.abs(frame.astype(np.int16) - ref).mean(axis=2)
        inner = d[y0 + (y1 - y0) // 4: y1 - (y1 - y0) // 3, x0 + (x1 - x0) // 4: x1 - (x1 - x0) // 4]
        mouth_diff.append(float(inner.mean()))
        # a band just outside the region against the far top of the frame: both only encoder noise
        band = np.zeros(d.shape, bool)
        band[max(0, y0 - 24):y1 + 24, max(0, x0 - 24):x1 + 24] = True
        band[max(0, y0):y1, max(0, x0):x1] = False
        far = d[: max(8, y0 - 120)]
        rest_diff.append((float(d[band].mean()), float(far.mean())))
    mouth_diff = np.array(mouth_diff)
    # the rest of the frame is the model's own: next to the region it differs no more than far away
    band_d, far_d = np.array(rest_diff).T
    assert far_d.max() < 4.0 and (band_d < 1.3 * far_d + 0.5).all(), (band_d.max(), far_d.max())
    # speech changes the mouth; the leading silence and the pause leave it as the model had it
    samples = load_audio(SAMPLE_SPEECH).samples
    frame_rms = [np.sqrt(np.mean(samples[i * 640:(i + 1) * 640] ** 2)) for i in range(len(frames))]
    silent = [i for i, r in enumerate(frame_rms) if r < 1e-4]
    loud = [i for i, r in enumerate(frame_rms) if r > 0.05]
    assert len(silent) >= 8 and len(loud) >= 30
    assert np.median(mouth_diff[loud]) > 3 * np.median(mouth_diff[silent]) + 1.0, (
        np.median(mouth_diff[loud]), np.median(mouth_diff[silent]))


def test_an_unusable_mouth_is_a_fallback_frame_left_untouched(sample_model):
    """A mouth that came damaged off the wire (no image) or with bounds off the frame is not pasted."""
    m, index = sample_model, 5
    image, bounds = np.full((320, 320, 3), 255, np.uint8), m.mouth_bounds[index]
    damaged = [MouthFrame(index=0, model_frame=index, image=None, bounds=bounds, params=REST),
               MouthFrame(index=0, model_frame=index, image=image, bounds=np.array([-50.0, -50, -10, -10]),
                          params=REST)]
    for mouth in damaged:
        frame, pasted = _compose(m, mouth)
        assert not pasted and np.array_equal(frame, m.frame(index))
    frame, pasted = _compose(m, MouthFrame(index=0, model_frame=index, image=image, bounds=bounds, params=REST))
    assert pasted and not np.array_equal(frame, m.frame(index))


def test_the_encoders_frame_is_composited_as_in_bgr(sample_model, tmp_path):
    """The render decodes each model frame straight into the encoder's yuv420p frame and pastes the
    mouth there: the same picture as compositing in BGR and converting, for pasted and untouched frames."""
    m, index = sample_model, 7
    image = np.full((320, 320, 3), (60, 60, 190), np.uint8)
    mouths = [MouthFrame(index=0, model_frame=index, image=image, bounds=m.mouth_bounds[index], params=REST),
              MouthFrame(index=0, model_frame=index, image=None, bounds=m.mouth_bounds[index], params=REST)]
    with Mp4Writer(tmp_path / "x.mp4", fps=m.fps, width=m.width, height=m.height) as writer:
        for mouth in mouths:
            frame, pasted = _compose_for(writer, m, mouth)
            bgr, bgr_pasted = _compose(m, mouth)
            assert pasted == bgr_pasted
            diff = np.abs(frame.to_ndarray().astype(int) - writer.encoder_frame(bgr).to_ndarray().astype(int))
            assert diff.mean() < 1.0 and np.percentile(diff, 99.9) <= 8, (diff.mean(), diff.max())
            writer.write_frame(frame)


def test_hevc_portrait_speaker_with_stereo_44k_speech(tmp_path, store):
    video, speech = shared(SPEAKER_VIDEO), shared(SPEECH_44K)
    out = tmp_path / "speaker.mp4"
    summary = render(speech, out, options=RenderOptions(model=str(video)), store=store)
    info = check_mp4(out, fps=25, duration_s=load_audio(speech).duration_s, width=1080, height=1920)
    audio = next(s for s in info["streams"] if s["codec_type"] == "audio")
    assert int(audio["sample_rate"]) == 44100 and int(audio["channels"]) == 2
    assert summary.fallbacks == 0 and summary.speech_frames > 0.5 * summary.frames


def test_48k_stereo_speech_and_a_separate_server_give_the_same_result(tmp_path, store):
    speech = shared(SPEECH_48K)
    embedded = tmp_path / "embedded.mp4"
    render(speech, embedded, options=RenderOptions(model=str(SAMPLE_VIDEO)), store=store)
    check_mp4(embedded, fps=25, duration_s=load_audio(speech).duration_s, width=576, height=768)
    server, port = create_server("127.0.0.1:0", store=store)
    try:
        remote = tmp_path / "remote.mp4"
        render(speech, remote, options=RenderOptions(model=str(SAMPLE_VIDEO), server=f"127.0.0.1:{port}"),
               store=store)
    finally:
        server.stop(None)
    a, b = _frames(embedded), _frames(remote)
    assert len(a) == len(b)
    assert max(float(np.abs(x.astype(np.int16) - y).mean()) for x, y in zip(a, b)) < 0.5


def _bad_audio_cases(tmp_path: Path) -> list[tuple[Path, str]]:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    good = write_wav(tmp_path / "good.wav", np.zeros(16000, np.float32), 16000)
    header_only = tmp_path / "header_only.wav"
    header_only.write_bytes(good.read_bytes()[:44])
    cut = tmp_path / "cut.wav"
    cut.write_bytes(good.read_bytes()[:20000])
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all\n" * 100)
    nan = write_wav(tmp_path / "nan.wav", np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    short = write_wav(tmp_path / "short.wav", np.zeros(200, np.float32), 16000)
    return [
        (tmp_path / "missing.wav", "no such file"),
        (empty, "empty"),
        (header_only, "truncated"),
        (cut, "truncated"),
        (text, "not a readable audio file"),
        (nan, "NaN"),
        (short, "shorter than one video frame"),
    ]


def test_bad_input_gets_one_line_and_leaves_nothing(tmp_path, cache_dir):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "out.mp4"
    for path, needle in _bad_audio_cases(tmp_path):
        proc = run_cli("render", path, "-o", out, "--cache-dir", cache_dir, cwd=tmp_path)
        assert_clean_error(proc, needle)
    speech = SAMPLE_SPEECH
    assert_clean_error(run_cli("render", speech, "-o", out, "--model", "nobody", "--cache-dir", cache_dir,
                               cwd=tmp_path), "nobody", "not found")
    assert_clean_error(run_cli("render", speech, "-o", tmp_path / "no" / "such" / "dir.mp4",
                               "--cache-dir", cache_dir, cwd=tmp_path), "does not exist")
    assert_clean_error(run_cli("render", speech, "-o", tmp_path / "out.avi", "--cache-dir", cache_dir,
                               cwd=tmp_path), ".mp4")
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert_clean_error(run_cli("render", speech, "-o", out, "--server", f"127.0.0.1:{free}",
                               "--cache-dir", cache_dir, cwd=tmp_path), "nothing answers")
    assert list(out_dir.iterdir()) == []


def test_a_server_dying_mid_render_leaves_no_file(tmp_path, store):
    server, port = create_server("127.0.0.1:0", store=store)
    out = tmp_path / "out.mp4"

    def progress(stage, done, total):
        if stage == "rendering" and done == 20:
            threading.Thread(target=server.stop, args=(0,)).start()

    with pytest.raises(ServiceError, match="went away|failed|cancel"):
        render(SAMPLE_SPEECH, out, options=RenderOptions(model=str(SAMPLE_VIDEO), server=f"127.0.0.1:{port}"),
               store=store, progress=progress)
    assert list(tmp_path.iterdir()) == []


def test_a_30_fps_landscape_model_renders_at_its_own_rate(tmp_path, store):
    # a 640x480 landscape clip at 30 fps: the sample's frames shrunk to 360x480, edges extended sideways
    frames = [np.pad(cv2.resize(f, (360, 480), interpolation=cv2.INTER_AREA), ((0, 0), (140, 140), (0, 0)),
                     mode="edge") for i, f in enumerate(iter_frames(SAMPLE_VIDEO)) if i < 45]
    video = make_video(tmp_path / "wide30.mp4", frames, fps=30)
    speech = write_wav(tmp_path / "speech.wav", load_audio(SAMPLE_SPEECH).samples[: 16000 * 2], 16000)
    out = tmp_path / "wide30_out.mp4"
    summary = render(speech, out, options=RenderOptions(model=str(video)), store=store)
    check_mp4(out, fps=30, duration_s=2.0, width=640, height=480)
    assert summary.frames == 60 and summary.fallbacks == 0  # longer than the 45-frame video: ping-pong


def test_frames_converted_ahead_encode_exactly_like_the_encoders_own_conversion(tmp_path):
    """`render` converts frames to yuv420p in its compose threads (`Mp4Writer.encoder_frame`); the
    file must be the same as when the encoder converts BGR frames itself."""
    rng = np.random.default_rng(7)
    # odd sizes: the writer crops to the even size H.264 needs
    frames = [cv2.GaussianBlur(rng.integers(0, 256, (97, 131, 3), np.uint8), (5, 5), 0) for _ in range(6)]
    for name in ("encoder", "ahead"):
        with Mp4Writer(tmp_path / f"{name}.mp4", fps=25, width=131, height=97) as writer:
            for f in frames:
                writer.write_frame(writer.encoder_frame(f) if name == "ahead" else
                                   av.VideoFrame.from_ndarray(np.ascontiguousarray(f[:96, :130]), format="bgr24"))
    decoded = {name: list(iter_frames(tmp_path / f"{name}.mp4")) for name in ("encoder", "ahead")}
    assert len(decoded["encoder"]) == 6 and decoded["encoder"][0].shape == (96, 130, 3)
    assert all(np.array_equal(a, b) for a, b in zip(decoded["encoder"], decoded["ahead"]))


@pytest.mark.parametrize("args, needle", [
    (("render", "--bogus"), "No such option: --bogus"),
    (("render", SAMPLE_SPEECH, "-o", "x.mp4", "--crf", "-5"), "Invalid value for '--crf'"),
    (("serve", "--max-streams", "0"), "Invalid value for '--max-streams'"),
])
def test_usage_mistakes_get_clicks_message_and_no_traceback(args, needle, tmp_path):
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and needle in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == [], "a usage mistake writes nothing"


def test_an_output_that_is_the_model_video_or_the_speech_is_refused_and_both_stay(tmp_path, cache_dir):
    model = tmp_path / "mine.mp4"
    shutil.copy(SAMPLE_VIDEO, model)
    talk = tmp_path / "talk.mp4"  # speech as the sound track of a clip
    with Mp4Writer(talk, fps=25, width=64, height=64, audio_rate_hz=16000) as writer:
        writer.write_frame(np.zeros((64, 64, 3), np.uint8))
        writer.write_audio(load_audio(SAMPLE_SPEECH).samples[:16000])
    before = {p: p.read_bytes() for p in (model, talk)}
    for speech, out in ((SAMPLE_SPEECH, model), (talk, talk)):
        proc = run_cli("render", speech, "-o", out, "--model", model, "--cache-dir", cache_dir, cwd=tmp_path)
        assert_clean_error(proc, "OutputError", "is an input of this render")
    assert {p: p.read_bytes() for p in (model, talk)} == before


def test_frames_where_the_model_shows_no_face_get_no_mouth(tmp_path, store):
    # 30 of the sample's frames at half size, frames 10-19 black (the person gone, a hand over the camera)
    frames = [cv2.resize(f, (288, 384), interpolation=cv2.INTER_AREA) if not 10 <= i < 20 else
              np.zeros((384, 288, 3), np.uint8) for i, f in enumerate(iter_frames(SAMPLE_VIDEO)) if i < 30]
    video = make_video(tmp_path / "gone.mp4", frames)
    speech = write_wav(tmp_path / "speech.wav", load_audio(SAMPLE_SPEECH).samples[: 16000 * 6 // 5], 16000)
    out = tmp_path / "out.mp4"
    summary = render(speech, out, options=RenderOptions(model=str(video)), store=store)
    assert summary.frames == 30 and summary.speech_frames > 15
    shown = list(iter_frames(out))
    assert all(shown[i].max() < 30 for i in range(11, 19)), "a mouth was drawn where there is no face"


def test_the_mp4_says_its_colours_are_bt601_video_range(tmp_path):
    # untagged, players take an HD picture for BT.709 and show BT.601 colours shifted
    with Mp4Writer(tmp_path / "hd.mp4", fps=25, width=1280, height=720) as writer:
        writer.write_frame(np.full((720, 1280, 3), (120, 150, 200), np.uint8))
    video = next(s for s in ffprobe(tmp_path / "hd.mp4")["streams"] if s["codec_type"] == "video")
    assert (video.get("color_space"), video.get("color_range")) == ("smpte170m", "tv"), video


def test_the_sound_track_ends_with_the_sound_not_on_a_whole_aac_frame(tmp_path):
    with Mp4Writer(tmp_path / "one.mp4", fps=25, width=64, height=64, audio_rate_hz=16000) as writer:
        for _ in range(25):
            writer.write_frame(np.zeros((64, 64, 3), np.uint8))
        writer.write_audio(load_audio(SAMPLE_SPEECH).samples[:16000])  # 1 s: 15.6 AAC frames of 1024 samples
    info = ffprobe(tmp_path / "one.mp4")
    audio = next(s for s in info["streams"] if s["codec_type"] == "audio")
    assert abs(float(audio["duration"]) - 1.0) < 0.001 and abs(float(info["format"]["duration"]) - 1.0) < 0.001
    assert len(load_audio(tmp_path / "one.mp4").samples) == 16000
