"""`lipsync prepare` and the model cache, on the bundled sample and real media."""

from __future__ import annotations

import multiprocessing as mp
import shutil
import subprocess
import zipfile

import cv2
import numpy as np
import pytest

from conftest import DRAWN_VIDEO, SAMPLE_VIDEO, SPEAKER_VIDEO, shared
from helpers import assert_clean_error, make_video, run_cli
from lipsync_cli.media import cache as cache_module
from lipsync_cli.media.cache import FORMAT_VERSION, REQUIRED_KEYS, cache_path, prepare_model, write_cache
from lipsync_cli.media.face import FaceTracker, mouth_open_ratio
from lipsync_cli.media.video import iter_frames, probe_video
from lipsync_cli.web.browser_video import needs_browser_copy


def _haar_faces(video, step: int, scale: float = 0.5):
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    out = {}
    for i, frame in enumerate(iter_frames(video)):
        if i % step:
            continue
        small = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        faces = cascade.detectMultiScale(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), 1.1, 5, minSize=(30, 30))
        if len(faces):
            x, y, w, h = max(faces, key=lambda f: f[2] * f[3]) / scale
            out[i] = (x, y, x + w, y + h)
    return out


def _check_cache_contents(path, n_expected_min: int):
    with np.load(path, allow_pickle=False) as z:
        for key in REQUIRED_KEYS:
            assert key in z.files, key
        n = len(z["face_found"])
        assert n >= n_expected_min
        assert int(z["format_version"]) == FORMAT_VERSION
        assert z["face_bounds"].shape == (n, 4) and z["face_bounds"].dtype == np.float32
        assert z["landmarks"].shape == (n, 468, 2)
        assert len(z["frame_offsets"]) == n + 1 and z["frame_offsets"][-1] == len(z["frame_jpeg"])
        first = cv2.imdecode(z["frame_jpeg"][z["frame_offsets"][0]:z["frame_offsets"][1]], cv2.IMREAD_COLOR)
        w, h = z["frame_size"]
        assert first.shape == (h, w, 3)
        return {k: z[k] for k in ("face_bounds", "mouth_bounds", "face_found", "mouth_open")}


@pytest.mark.parametrize("video_id", ["sample", "speaker", "drawn"])
def test_bounds_contain_the_face_in_every_frame(video_id, cache_dir):
    video = {"sample": SAMPLE_VIDEO, "speaker": SPEAKER_VIDEO, "drawn": DRAWN_VIDEO}[video_id]
    video = shared(video) if video_id != "sample" else video
    result = prepare_model(video, cache_dir=cache_dir)
    arrays = _check_cache_contents(result.cache, 100)
    assert result.face_found_pct > 95
    fb = arrays["face_bounds"]
    # every smoothed box is a sane box inside the frame area
    assert (fb[:, 2] > fb[:, 0]).all() and (fb[:, 3] > fb[:, 1]).all()
    # an independent detector's face centre lies inside the cached bounds (the drawn face is not a
    # Haar-cascade face, so there we check the frames where it fires at all)
    haar = _haar_faces(video, step=10)
    if video_id != "drawn":
        assert len(haar) >= 0.9 * len(range(0, len(fb), 10))
    for i, (x0, y0, x1, y1) in haar.items():
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        assert fb[i, 0] < cx < fb[i, 2] and fb[i, 1] < cy < fb[i, 3], (i, fb[i], (cx, cy))
    # the mouth region sits inside the face box horizontally, below the face centre
    mb = arrays["mouth_bounds"]
    mouth_cx = (mb[:, 0] + mb[:, 2]) / 2
    assert ((fb[:, 0] < mouth_cx) & (mouth_cx < fb[:, 2])).all()


def test_smoothed_bounds_move_less_than_raw_detections(cache_dir):
    video = shared(SPEAKER_VIDEO)
    result = prepare_model(video, cache_dir=cache_dir)
    with np.load(result.cache, allow_pickle=False) as z:
        fb = z["face_bounds"]
    raw = _haar_faces(video, step=1, scale=0.33)
    # jitter = second difference of the box centre over frames i-1, i, i+1 (real motion is smooth)
    idx = [i for i in raw if i - 1 in raw and i + 1 in raw]
    assert len(idx) > 200

    def jitter(centre):
        return float(np.mean([np.abs(centre(i + 1) - 2 * centre(i) + centre(i - 1)).sum() for i in idx]))

    raw_j = jitter(lambda i: np.array([raw[i][0] + raw[i][2], raw[i][1] + raw[i][3]]) / 2)
    smooth_j = jitter(lambda i: np.array([fb[i, 0] + fb[i, 2], fb[i, 1] + fb[i, 3]]) / 2)
    assert smooth_j < 0.25 * raw_j, (smooth_j, raw_j)


def test_the_cache_measures_each_frames_lips_as_tracked_on_that_frame(cache_dir):
    # the generator picks and warps a talking video's mouths by these measures: smoothed over
    # neighbouring frames, a shut mouth between two open ones read half open (0.049 where the
    # frame itself shows 0.027)
    video = shared(SPEAKER_VIDEO)
    result = prepare_model(video, cache_dir=cache_dir)
    with np.load(result.cache, allow_pickle=False) as z:
        cached_open, cached_pts = z["mouth_open"], z["landmarks"]
    tracker = FaceTracker()
    tracked = []
    for i, frame in enumerate(iter_frames(video)):
        if i == 40:
            break
        tracked.append(tracker.track(frame).points)
    tracked = np.stack(tracked)
    assert np.ptp(cached_open[:40]) > 0.05  # the man talks in these frames
    np.testing.assert_allclose(cached_pts[:40], tracked, atol=1e-3)
    np.testing.assert_allclose(cached_open[:40], mouth_open_ratio(tracked), atol=1e-5)


def test_rerun_is_a_no_op(tmp_path, monkeypatch):
    proc = run_cli("prepare", SAMPLE_VIDEO, "--cache-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "200 frames" in proc.stdout and "face found in 100%" in proc.stdout
    cache = cache_path(SAMPLE_VIDEO, tmp_path)
    before = cache.stat().st_mtime_ns

    def no_build(*args, **kwargs):
        raise AssertionError("a fresh cache was built again")

    monkeypatch.setattr(cache_module, "build_cache", no_build)
    stages = []
    result = prepare_model(SAMPLE_VIDEO, cache_dir=tmp_path, progress=lambda *a: stages.append(a))
    assert result.status == "fresh"
    assert stages == []  # nothing decoded, tracked or written
    assert cache.stat().st_mtime_ns == before
    proc = run_cli("prepare", SAMPLE_VIDEO, "--cache-dir", tmp_path)
    assert "up to date" in proc.stdout


def _copy_cache(src_dir, video, tmp_path):
    src = prepare_model(video, cache_dir=src_dir).cache
    dst = cache_path(video, tmp_path)
    shutil.copy(src, dst)
    return dst


def test_corrupt_and_old_caches_are_rebuilt(tmp_path, cache_dir):
    dst = _copy_cache(cache_dir, SAMPLE_VIDEO, tmp_path)
    with open(dst, "r+b") as f:  # damage the middle of the file
        f.seek(dst.stat().st_size // 2)
        f.write(b"\0" * 4096)
    dst.write_bytes(dst.read_bytes()[: dst.stat().st_size // 3])  # and cut it short
    result = prepare_model(SAMPLE_VIDEO, cache_dir=tmp_path)
    assert result.status == "rebuilt" and "corrupt" in result.reason
    with np.load(dst, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["format_version"] = np.int64(FORMAT_VERSION - 1)
    write_cache(arrays, dst)
    result = prepare_model(SAMPLE_VIDEO, cache_dir=tmp_path)
    assert result.status == "rebuilt" and "version" in result.reason
    proc = run_cli("prepare", SAMPLE_VIDEO, "--cache-dir", tmp_path)
    assert proc.returncode == 0 and "up to date" in proc.stdout
    with zipfile.ZipFile(dst) as z:  # a cache never holds a pickle
        assert all(name.endswith(".npy") for name in z.namelist())


def test_changed_video_is_rebuilt(tmp_path):
    video = tmp_path / "me.mp4"
    shutil.copy(SAMPLE_VIDEO, video)
    assert prepare_model(video, cache_dir=tmp_path).status == "built"
    frames = [f for i, f in enumerate(iter_frames(SAMPLE_VIDEO)) if i < 30]
    make_video(video, frames[::-1])
    result = prepare_model(video, cache_dir=tmp_path)
    assert result.status == "rebuilt" and result.reason == "the video changed" and result.n_frames == 30


def _prepare_in_child(args):
    video, cache = args
    from lipsync_cli.media.cache import prepare_model as prep

    return prep(video, cache_dir=cache, force=True).status


def test_two_prepares_at_once_leave_one_good_cache(tmp_path):
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        statuses = pool.map(_prepare_in_child, [(SAMPLE_VIDEO, tmp_path)] * 2)
    assert statuses == ["rebuilt", "rebuilt"]  # --force: both really built, racing for the same file
    assert [p.name for p in tmp_path.iterdir()] == [cache_path(SAMPLE_VIDEO, tmp_path).name]
    assert prepare_model(SAMPLE_VIDEO, cache_dir=tmp_path).status == "fresh"


def test_bad_inputs_get_one_clear_line_and_leave_no_cache(tmp_path):
    cache = tmp_path / "cache"
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    audio_only = tmp_path / "voice.mp4"
    import av

    with av.open(str(audio_only), "w") as c:
        s = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        c.mux(s.encode(frame))
        c.mux(s.encode(None))
    no_face = make_video(tmp_path / "wall.mp4", [np.full((240, 320, 3), 90 + i, np.uint8) for i in range(10)])
    cases = [
        (tmp_path / "missing.mp4", "no such file"),
        (empty, "empty"),
        (text, "not a readable video"),
        (audio_only, "no video stream"),
        (no_face, "no face"),
    ]
    for path, needle in cases:
        proc = run_cli("prepare", path, "--cache-dir", cache)
        assert_clean_error(proc, path.name, needle)
    assert not cache.exists() or not any(cache.iterdir())
    assert_clean_error(run_cli("prepare", "nobody", "--cache-dir", cache), "nobody", "model_videos")


def test_loaded_models_sit_in_an_lru_with_memory_statistics(tmp_path, cache_dir):
    from lipsync_cli.media.store import ModelStore

    # three model videos: the sample under three names (same bytes and mtime, so one cache serves all)
    videos = []
    for name in ("ann", "bob", "cy"):
        video = tmp_path / f"{name}.mp4"
        shutil.copy2(SAMPLE_VIDEO, video)
        shutil.copy(prepare_model(SAMPLE_VIDEO, cache_dir=cache_dir).cache, cache_path(video, tmp_path))
        videos.append(video)
    store = ModelStore(cache_dir=tmp_path, models_dir=tmp_path, limit=2)
    first = store.get("ann", names_only=True)
    assert store.get("ann", names_only=True) is first  # loaded once, then served from memory
    store.get("bob", names_only=True)
    store.get("ann", names_only=True)  # ann is now the most recently used
    assert set(store.stats().loaded) == {"ann", "bob"}  # (reading the statistics uses no model)
    store.get("cy", names_only=True)  # so bob is the one dropped
    stats = store.stats()
    assert stats.loaded == ("ann", "cy") and stats.limit == 2
    assert stats.bytes_held >= 2 * first.nbytes > 0
    assert not store.is_loaded(videos[1]) and store.is_loaded(videos[0])
    with pytest.raises(ValueError):
        ModelStore(limit=0)


def test_a_live_walk_back_over_a_short_clip_decodes_no_region_again(sample_model):
    from lipsync_cli.media.store import REGION_CACHE_BYTES

    # the live frame walk goes forth and back; the sample's 200 regions all stay decoded, so the walk
    # back is given the very arrays the walk forth decoded (no JPEG decode a frame)
    n = sample_model.n_frames
    assert n * sample_model.region(0).nbytes <= REGION_CACHE_BYTES
    forth = [sample_model.region(i) for i in range(n)]
    assert all(sample_model.region(i) is forth[i] for i in reversed(range(n)))


def test_a_touched_video_is_loaded_once_and_a_changed_one_again(tmp_path, cache_dir):
    """A video copied or touched after its cache was made (same bytes, another mtime) keeps its cache
    and is loaded once: later lookups are served from memory, not read from disk every time."""
    import os

    from lipsync_cli.media.store import ModelStore

    video = tmp_path / "me.mp4"
    shutil.copy2(SAMPLE_VIDEO, video)
    shutil.copy(prepare_model(SAMPLE_VIDEO, cache_dir=cache_dir).cache, cache_path(video, tmp_path))
    st = video.stat()
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    store = ModelStore(cache_dir=tmp_path)
    first = store.get(video)
    assert store.get(video) is first and store.open(str(video))[0] is first
    frames = [f for i, f in enumerate(iter_frames(SAMPLE_VIDEO)) if i < 30]
    make_video(video, frames[::-1])
    assert store.get(video) is not first and store.get(video).n_frames == 30


def test_a_phone_video_with_a_rotation_is_used_upright(tmp_path):
    import subprocess

    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg)")
    # frames stored sideways, as phones store portrait video, with the rotation players apply
    sideways = [np.ascontiguousarray(np.rot90(f, -1)) for i, f in enumerate(iter_frames(SAMPLE_VIDEO)) if i < 25]
    stored = make_video(tmp_path / "stored.mp4", sideways)
    phone = tmp_path / "phone.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(stored), "-c", "copy", "-metadata:s:v:0", "rotate=90",
                    str(phone)], check=True)
    result = prepare_model(phone, cache_dir=tmp_path)
    assert result.face_found_pct == 100.0
    with np.load(result.cache, allow_pickle=False) as z:
        assert tuple(z["frame_size"]) == (576, 768)  # width, height as shown: portrait again


def test_open_loads_the_named_or_default_model_and_serves_it_by_name(tmp_path, cache_dir):
    from lipsync_cli.errors import ModelNotFoundError
    from lipsync_cli.media.store import ModelStore

    empty = tmp_path / "models"
    empty.mkdir()
    store = ModelStore(cache_dir=cache_dir, models_dir=empty)
    model, name = store.open(None)  # no model videos: the bundled sample
    assert model.video == SAMPLE_VIDEO.resolve() and name == "avatar"
    assert store.resolve(name) == SAMPLE_VIDEO.resolve()
    assert store.open(str(SAMPLE_VIDEO)) == (model, name)  # by path: the same loaded model
    for clip in ("ann.mp4", "bob.mp4"):
        shutil.copy(SAMPLE_VIDEO, empty / clip)
    with pytest.raises(ModelNotFoundError, match="several models"):
        ModelStore(cache_dir=cache_dir, models_dir=empty).open(None)


def test_a_still_image_named_in_the_working_folder_is_a_one_frame_model(tmp_path):
    # `--model photo.png` (no folder in it): a file that exists, though not a video suffix
    cv2.imwrite(str(tmp_path / "photo.png"), next(iter_frames(SAMPLE_VIDEO)))
    proc = run_cli("prepare", "photo.png", "--cache-dir", tmp_path / "cache", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "photo: 1 frame (a still)" in proc.stdout and "face found in 100%" in proc.stdout, proc.stdout


def test_a_missing_video_named_without_a_folder_says_no_such_file(tmp_path, monkeypatch):
    from lipsync_cli.errors import ModelNotFoundError
    from lipsync_cli.media.models import resolve_model

    monkeypatch.chdir(tmp_path)  # `--model clip.mp4`, a typo for a file in the working folder
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("clip.mp4")
    assert str(err.value).startswith("clip.mp4: no such file"), err.value
    assert "clip.mp4.mp4" not in str(err.value) and str(tmp_path / "model_videos" / "clip.mp4") in str(err.value)


def test_a_variable_frame_rate_video_is_read_at_its_steady_rate(tmp_path, store):
    """A phone slows from 25 to 12 fps in poor light: the model is read at 25 fps, the sparse stretch
    repeating its frames, so a render's mouth still moves 25 times a second (it was read at the
    average rate, 16 fps here, with the background sped up where frames were sparse)."""
    vfr = tmp_path / "vfr.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(SAMPLE_VIDEO), "-t", "3", "-an", "-vf",
                    "setpts='if(lt(N,25),N/25/TB,(1+(N-25)/12)/TB)'", "-fps_mode", "vfr", "-c:v", "libx264",
                    "-preset", "veryfast", str(vfr)], check=True)
    info = probe_video(vfr)
    assert info.variable_rate and info.fps == 25, info
    frames = list(iter_frames(vfr))
    same = [np.array_equal(a, b) for a, b in zip(frames, frames[1:])]
    steady, sparse = same[:24], same[26:]
    assert not any(steady)  # the first second: every frame its own
    assert 0.4 <= np.mean(sparse) <= 0.6, np.mean(sparse)  # then 12 fps in 25 slots: about every other repeats
    assert abs(len(frames) - 75) <= 2, len(frames)  # 3 s (25 + 24 frames) at 25 fps
    assert store.get(vfr).fps == 25 and store.get(vfr).n_frames == len(frames)
    assert needs_browser_copy(vfr) and not needs_browser_copy(SAMPLE_VIDEO)  # the page gets the steady frames
    assert not probe_video(SAMPLE_VIDEO).variable_rate
