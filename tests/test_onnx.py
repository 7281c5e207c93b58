"""The ONNX generator against tiny networks built here with onnx.helper (docs/onnx-contract.md)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper, save_model

from lipsync_cli.media.audio import SAMPLE_RATE_HZ
from lipsync_cli.core.driver import MouthParams
from lipsync_cli.errors import GeneratorError
from lipsync_cli.core.generator import AUDIO_WINDOW_SAMPLES
from lipsync_cli.core.generators import make_generator
from lipsync_cli.core.onnx_generator import (MEL_BANDS, MEL_FRAMES, OnnxGenerator,
                                        face_square, log_mel_window)
from lipsync_cli.core.region import lower_face_mask
from conftest import SAMPLE_SPEECH, SAMPLE_VIDEO

SPEAKING = MouthParams(0.6, 0.2, 0.0, False, True, "C")
SILENT = MouthParams(0.0, 0.0, 0.0, False, False, "X")
FRAME = 40
OPSET = 17


def tone(freq_hz: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(AUDIO_WINDOW_SAMPLES) / SAMPLE_RATE_HZ
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def _const(name: str, values, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def save_network(path: Path, nodes, *, inputs, output, initializers=(), metadata=None) -> Path:
    """Write a one-graph ONNX model: inputs and output are (name, shape) pairs, float32."""
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(output[0], TensorProto.FLOAT, output[1])], initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # onnx writes its newest IR version; older onnxruntime releases read this one too
    helper.set_model_props(model, metadata or {})
    save_model(model, str(path))
    return path


def energy_network(path: Path, *, side_px: int = 64, face_channels: int = 6, audio_name: str = "audio",
                   audio_shape=(1, 1, MEL_BANDS, MEL_FRAMES), output_name: str = "mouth",
                   output_side_px: int | None = None) -> Path:
    """mouth = clip(the first three face channels + mean audio feature mapped to [0, 1], 0, 1).

    With the 6-channel face that is the masked face, its lower half lit by the audio's loudness, so
    the output depends on both inputs. output_side_px crops the face to that size (a broken network).
    """
    out_side = output_side_px or side_px
    nodes = [
        helper.make_node("ReduceMean", [audio_name], ["level"], keepdims=1),  # (1, 1, 1, 1)
        helper.make_node("Add", ["level", "four"], ["shifted"]),
        helper.make_node("Div", ["shifted", "eight"], ["energy"]),  # silence 0 .. loudest 1
        helper.make_node("Slice", ["face", "starts", "ends", "axes"], ["first3"]),
        helper.make_node("Add", ["first3", "energy"], ["lit"]),
        helper.make_node("Clip", ["lit", "zero", "one"], [output_name]),
    ]
    consts = [_const("four", 4.0), _const("eight", 8.0), _const("zero", 0.0), _const("one", 1.0),
              _const("starts", [0, 0, 0], np.int64), _const("ends", [3, out_side, out_side], np.int64),
              _const("axes", [1, 2, 3], np.int64)]
    return save_network(path, nodes, inputs=[(audio_name, list(audio_shape)),
                                             ("face", [1, face_channels, side_px, side_px])],
                        output=(output_name, [1, 3, out_side, out_side]), initializers=consts)


def colour_network(path: Path, rgb: tuple[float, float, float], *, colour_order: str | None = None) -> Path:
    """mouth = a flat colour (channels in the model's colour order), whatever the inputs."""
    nodes = [helper.make_node("Slice", ["face", "starts", "ends", "axes"], ["face_rgb"]),
             helper.make_node("Mul", ["face_rgb", "zero"], ["black"]),
             helper.make_node("Add", ["black", "colour"], ["painted"]),
             helper.make_node("ReduceMean", ["audio"], ["level"], keepdims=1),
             helper.make_node("Mul", ["level", "zero"], ["nothing"]),  # uses the audio input
             helper.make_node("Add", ["painted", "nothing"], ["mouth"])]
    consts = [_const("zero", 0.0), _const("colour", np.array(rgb).reshape(1, 3, 1, 1)),
              _const("starts", [3], np.int64), _const("ends", [6], np.int64), _const("axes", [1], np.int64)]
    return save_network(path, nodes, inputs=[("audio", [1, 1, MEL_BANDS, MEL_FRAMES]), ("face", [1, 6, 32, 32])],
                        output=("mouth", [1, 3, 32, 32]), initializers=consts,
                        metadata={"colour_order": colour_order} if colour_order else None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return energy_network(tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def slaney_mel(hz: float) -> float:
    """Reference mel scale for the tests: 3 mel per 200 Hz up to 1 kHz, then 27 mel per factor 6.4."""
    return hz * 3 / 200 if hz < 1000 else 15 + np.log(hz / 1000) / (np.log(6.4) / 27)


def test_sine_peaks_in_its_mel_band():
    features = log_mel_window(np.zeros(AUDIO_WINDOW_SAMPLES, np.float32))
    assert features.shape == (MEL_BANDS, MEL_FRAMES) and features.dtype == np.float32
    assert np.all(features == -4.0)  # silence sits on the floor
    # band b peaks at the (b + 1)-th of MEL_BANDS + 2 points evenly spaced in mel from 55 to 7600 Hz
    step = (slaney_mel(7600) - slaney_mel(55)) / (MEL_BANDS + 1)
    for freq_hz in (300.0, 700.0, 1500.0, 4000.0):
        band = round((slaney_mel(freq_hz) - slaney_mel(55)) / step) - 1
        peak = np.argmax(log_mel_window(tone(freq_hz)).mean(axis=1))
        assert peak == band, (freq_hz, peak, band)
    loud, quiet = log_mel_window(tone(700.0, 0.5)), log_mel_window(tone(700.0, 0.05))
    assert loud.max() > quiet.max()


def test_mel_frames_run_oldest_first():
    late = tone(700.0)
    late[:AUDIO_WINDOW_SAMPLES // 2] = 0.0  # silence, then the tone from the window's centre on
    level = log_mel_window(late).max(axis=0)
    assert np.all(level[:MEL_FRAMES // 2 - 2] == -4.0) and np.all(level[MEL_FRAMES // 2 + 1:] > 0.0)


@pytest.mark.parametrize("face_channels", [6, 3])
def test_renders_region_with_bounds(tmp_path, sample_model, face_channels):
    gen = OnnxGenerator(energy_network(tmp_path / "net.onnx", face_channels=face_channels))
    out = gen.open_stream(sample_model).render(model_frame=FRAME, params=SPEAKING, audio=tone(500.0))
    assert out.image.shape == (320, 320, 3) and out.image.dtype == np.uint8
    np.testing.assert_array_equal(out.bounds, sample_model.mouth_bounds[FRAME])


def test_face_square_masks_nose_to_chin(sample_model):
    x0, y0, x1, y1 = face_square(sample_model.face_bounds[FRAME])
    points = sample_model.landmarks[FRAME]
    inside = (points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0) & (points[:, 1] <= y1)
    assert inside.all()  # the whole face, chin included
    middle = (y0 + y1) / 2
    assert points[10, 1] < points[159, 1] < middle < points[13, 1] < points[152, 1]  # forehead, eye | lips, chin


def test_output_follows_audio_and_only_the_mouth_changes(tiny, sample_model):
    stream = OnnxGenerator(tiny).open_stream(sample_model)
    region = sample_model.region(FRAME).astype(np.int16)
    speech = stream.render(model_frame=FRAME, params=SPEAKING, audio=tone(500.0)).image.astype(np.int16)
    hush = stream.render(model_frame=FRAME, params=SPEAKING, audio=np.zeros(AUDIO_WINDOW_SAMPLES, np.float32)).image
    assert np.abs(speech - hush.astype(np.int16)).mean() > 5  # louder audio lights the lower face
    again = stream.render(model_frame=FRAME, params=SPEAKING, audio=tone(500.0)).image
    np.testing.assert_array_equal(again, speech)  # deterministic
    changed = np.abs(speech - region).max(axis=2) > 2
    outside = lower_face_mask((320, 320), sample_model.region_points(FRAME)) < 0.005
    assert changed.any() and not changed[outside].any()  # only the lower face changes
    silent = stream.render(model_frame=FRAME, params=SILENT, audio=tone(500.0)).image
    np.testing.assert_array_equal(silent, sample_model.region(FRAME))  # silence skips the network


@pytest.mark.parametrize("order, channel", [(None, 2), ("bgr", 0)])
def test_colour_order(tmp_path, order, channel):
    gen = OnnxGenerator(colour_network(tmp_path / "red.onnx", (1.0, 0.0, 0.0), colour_order=order))
    mouth = gen.network(np.full((32, 32, 3), 128, np.uint8), tone(500.0))
    assert mouth[16, 16, channel] == 255 and mouth[16, 16].sum() == 255


def _broken(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.onnx"
    if kind == "text":
        path.write_text("this is not a network\n")
        return path
    variants = {"input_name": dict(audio_name="mel"), "audio_shape": dict(audio_shape=(1, 1, 80, 20)),
                "face_channels": dict(face_channels=4), "output_name": dict(output_name="image"),
                "output_size": dict(output_side_px=32)}
    return energy_network(path, **variants[kind])


@pytest.mark.parametrize("kind, needle", [
    ("missing", "no such file"), ("text", "not an ONNX file"), ("input_name", "'audio'"),
    ("audio_shape", "(1, 1, 80, 16)"), ("face_channels", "(1, 6, S, S)"), ("output_name", "'mouth'"),
    ("output_size", "(1, 3, 64, 64)"),
])
def test_bad_models_fail_with_one_clear_line(tmp_path, kind, needle):
    path = tmp_path / "absent.onnx" if kind == "missing" else _broken(tmp_path, kind)
    with pytest.raises(GeneratorError) as err:
        OnnxGenerator(path)
    message = str(err.value)
    assert needle in message and str(path) in message and "\n" not in message, message


def test_make_generator_loads_the_network_or_says_why(tiny, sample_model):
    by_name = make_generator("onnx", onnx_path=tiny).open_stream(sample_model)
    direct = OnnxGenerator(tiny).open_stream(sample_model)
    np.testing.assert_array_equal(by_name.render(model_frame=FRAME, params=SPEAKING, audio=tone(500.0)).image,
                                  direct.render(model_frame=FRAME, params=SPEAKING, audio=tone(500.0)).image)
    with pytest.raises(GeneratorError, match="--onnx"):
        make_generator("onnx")
    with pytest.raises(GeneratorError, match="unknown generator 'wav2lip'"):
        make_generator("wav2lip")


def test_render_end_to_end(tmp_path, store, tiny):
    from lipsync_cli.render.pipeline import RenderOptions, render
    from lipsync_cli.media.video import probe_video

    out = tmp_path / "onnx.mp4"
    summary = render(SAMPLE_SPEECH, out, store=store,
                     options=RenderOptions(model=str(SAMPLE_VIDEO), generator="onnx", onnx_path=tiny))
    info = probe_video(out)
    assert summary.fallbacks == 0 and summary.speech_frames > 0
    assert info.fps == Fraction(25) and info.n_frames == summary.frames
    assert abs(info.duration_s - summary.duration_s) < 0.1
