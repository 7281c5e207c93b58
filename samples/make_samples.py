"""Regenerate the bundled sample inputs: samples/avatar.mp4 and samples/speech.wav.

avatar.mp4 -- an 8 s, 25 fps, 576x768 H.264 clip animated from the public-domain
portrait of Grace Hopper that ships with matplotlib. The photo is not changed
except for a small, smooth motion (breathing and sway) and two eye blinks; the
mouth stays closed. All motion is periodic over the clip and at rest at both
ends, so the clip loops cleanly forwards and back and forth.

speech.wav -- about 6 s of English speech synthesised with espeak-ng, 16 kHz
mono PCM16, two sentences with a pause between them.

Usage:  python samples/make_samples.py
The output is deterministic for a given set of tool versions.
"""

import math
import shutil
import subprocess
import tempfile
from pathlib import Path

import cv2  # must be imported before av
import av
import matplotlib.cbook
import numpy as np
import soundfile
from scipy.signal import resample_poly

SAMPLES_DIR = Path(__file__).resolve().parent
VIDEO_PATH = SAMPLES_DIR / "avatar.mp4"
SPEECH_PATH = SAMPLES_DIR / "speech.wav"

# --- video ------------------------------------------------------------------
OUT_WIDTH_PX = 576
OUT_HEIGHT_PX = 768
FPS = 25
N_FRAMES = 200  # 8 s
X264_CRF = 20

# Part of the 512x600 photo that fills the frame (x, y of the top-left corner,
# width; height follows from the 3:4 output aspect). A margin is left on every
# side so that the motion below never pulls in pixels from outside the photo.
CROP_LEFT_PX = 50
CROP_TOP_PX = 12
CROP_WIDTH_PX = 432

# Motion, in output pixels / degrees. Every term is a cosine with a whole number
# of cycles over the clip, so velocity is zero at the first and last frame.
BREATH_CYCLES = 2  # 4 s per breath
BREATH_SCALE_Y = 0.0025  # vertical stretch of the figure (about the pivot)
BREATH_SCALE_X = 0.0008  # shoulders widen slightly on the in-breath
BREATH_LIFT_PX = 1.0  # the whole figure rises a little on the in-breath
SWAY_CYCLES = 1
SWAY_DEG = 0.3
SWAY2_DEG = 0.08  # a second, faster component so the sway is less regular
DRIFT_X_PX = 1.0  # slow sideways drift of the whole figure
PIVOT_BELOW_FRAME_PX = 120  # sway/breath pivot: below the bottom edge (hips)

# Eyes, in photo pixels: centre, half width, and how far the upper/lower lid
# lines sit above/below the centre line.
EYES = (
    dict(cx=220.0, cy=189.0, half_width=14.0, upper=5.5, lower=6.0),
    dict(cx=305.0, cy=186.0, half_width=14.0, upper=5.5, lower=5.0),
)
LID_OVERLAP_PX = 1.5  # the lid also covers the original lash line
LID_SKIN_BLUR_PX = 0.6
LID_FEATHER_PX = 1.2  # soft upper boundary of the painted lid
LID_EDGE_SHADE = 0.1  # darkening of the lid towards its edge
LID_CORNER_FADE = 0.3  # fraction of the half width over which the lid fades out
LASH_DARKNESS = 0.55
LASH_WIDTH_PX = 0.8
LASH_RGB = (70, 40, 35)
BLINK_START_FRAMES = (58, 147)
BLINK_CLOSURE = (0.35, 0.8, 1.0, 0.75, 0.4, 0.12)  # lid closure per frame

# --- speech -----------------------------------------------------------------
SPEECH_SAMPLE_RATE_HZ = 16000
ESPEAK_VOICE = "en-us"
ESPEAK_WORDS_PER_MIN = 150
UTTERANCES = (
    "Bob bought father a hot maple pie.",  # lip closures; open vowels
    "Who took my food and wool far away?",  # rounded vowels
)
LEAD_SILENCE_S = 0.3
MID_SILENCE_S = 0.6
TAIL_SILENCE_S = 0.3
SPEECH_PEAK = 0.9  # peak amplitude after normalising (about -0.9 dBFS)
TRIM_THRESHOLD = 0.01  # |sample| below this counts as silence when trimming


def load_photo():
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise RuntimeError(f"cannot read {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def motion_matrix(frame_index):
    """2x3 affine (output px -> output px) for the breathing and sway."""
    t = frame_index / N_FRAMES  # 0..1 over the clip
    breath = 0.5 - 0.5 * math.cos(2 * math.pi * BREATH_CYCLES * t)  # 0 = exhaled
    sway_deg = (SWAY_DEG * math.cos(2 * math.pi * SWAY_CYCLES * t)
                + SWAY2_DEG * math.cos(2 * math.pi * 3 * t))
    drift_x = DRIFT_X_PX * math.cos(2 * math.pi * 2 * t + math.pi)

    angle = math.radians(sway_deg)
    rotation = np.array([[math.cos(angle), -math.sin(angle)],
                         [math.sin(angle), math.cos(angle)]])
    scale = np.diag([1 + BREATH_SCALE_X * breath, 1 + BREATH_SCALE_Y * breath])
    linear = rotation @ scale
    pivot = np.array([OUT_WIDTH_PX / 2, OUT_HEIGHT_PX + PIVOT_BELOW_FRAME_PX])
    offset = pivot - linear @ pivot + np.array([drift_x, -BREATH_LIFT_PX * breath])
    return np.hstack([linear, offset[:, None]])


def blink_closure(frame_index):
    for start in BLINK_START_FRAMES:
        if start <= frame_index < start + len(BLINK_CLOSURE):
            return BLINK_CLOSURE[frame_index - start]
    return 0.0


def smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def blink_photo(photo, closure):
    """Return a copy of the photo with both upper lids lowered by `closure`.

    The lid is painted over the eye from just above the lid line down to a
    new edge part of the way to the lower lid (closure 1 = fully shut). Its
    skin is the skin under the same eye, mirrored about the lower lid line
    and softened; a dark lash line is drawn along its lower edge.
    """
    if closure <= 0:
        return photo
    result = photo.astype(np.float64)
    soft = cv2.GaussianBlur(photo, (0, 0), LID_SKIN_BLUR_PX).astype(np.float64)
    for eye in EYES:
        x0 = int(eye["cx"] - eye["half_width"]) - 1
        x1 = int(eye["cx"] + eye["half_width"]) + 2
        y0 = int(eye["cy"] - eye["upper"]) - 4
        y1 = int(eye["cy"] + eye["lower"]) + 3
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        u = (xs - eye["cx"]) / eye["half_width"]
        arc = np.sqrt(np.clip(1 - u * u, 0, 1))
        lid_line = eye["cy"] - eye["upper"] * arc
        lower_line = eye["cy"] + eye["lower"] * arc
        edge = lid_line + closure * (lower_line - lid_line)

        mirror_y = (2 * lower_line - ys + 1).astype(np.float32)
        skin = cv2.remap(soft, xs.astype(np.float32), mirror_y, cv2.INTER_LINEAR)
        # Shade the lid darker towards its edge, where it curves away.
        top = lid_line - LID_OVERLAP_PX
        depth = np.clip((ys - top) / np.maximum(edge - top, 1.0), 0, 1)
        skin *= 1 - LID_EDGE_SHADE * depth[..., None] ** 2

        fade_x = smoothstep((1 - np.abs(u)) / LID_CORNER_FADE)
        alpha = (smoothstep((ys - top + LID_FEATHER_PX) / (2 * LID_FEATHER_PX))
                 * smoothstep(edge - ys + 0.5) * fade_x)
        patch = result[y0:y1, x0:x1]
        patch = patch * (1 - alpha[..., None]) + skin * alpha[..., None]
        lash = LASH_DARKNESS * np.exp(-(((ys - edge) / LASH_WIDTH_PX) ** 2)) * fade_x
        patch = patch * (1 - lash[..., None]) + np.array(LASH_RGB) * lash[..., None]
        result[y0:y1, x0:x1] = patch
    return np.clip(np.rint(result), 0, 255).astype(np.uint8)


def render_frame(photos, frame_index, out_x, out_y):
    """One RGB output frame; `photos` maps blink closure -> (blinked) photo."""
    # Output pixel -> photo pixel: undo the motion, then undo crop + zoom.
    inverse = cv2.invertAffineTransform(motion_matrix(frame_index))
    still_x = inverse[0, 0] * out_x + inverse[0, 1] * out_y + inverse[0, 2]
    still_y = inverse[1, 0] * out_x + inverse[1, 1] * out_y + inverse[1, 2]
    photo_per_out_px = CROP_WIDTH_PX / OUT_WIDTH_PX
    src_x = CROP_LEFT_PX + (still_x + 0.5) * photo_per_out_px - 0.5
    src_y = CROP_TOP_PX + (still_y + 0.5) * photo_per_out_px - 0.5
    photo = photos[blink_closure(frame_index)]
    return cv2.remap(photo, src_x.astype(np.float32), src_y.astype(np.float32),
                     interpolation=cv2.INTER_LANCZOS4,
                     borderMode=cv2.BORDER_REFLECT_101)


def make_video(path):
    photo = load_photo()
    photos = {c: blink_photo(photo, c) for c in set(BLINK_CLOSURE) | {0.0}}
    out_y, out_x = np.mgrid[0:OUT_HEIGHT_PX, 0:OUT_WIDTH_PX].astype(np.float64)
    with av.open(str(path), "w", format="mp4",
                 options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width = OUT_WIDTH_PX
        stream.height = OUT_HEIGHT_PX
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(X264_CRF), "preset": "slow"}
        for i in range(N_FRAMES):
            rgb = render_frame(photos, i, out_x, out_y)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def synthesise(text, work_dir):
    """Speak `text` with espeak-ng; mono float samples at 16 kHz, silence trimmed."""
    wav_path = Path(work_dir) / "utterance.wav"
    subprocess.run(["espeak-ng", "-v", ESPEAK_VOICE, "-s", str(ESPEAK_WORDS_PER_MIN),
                    "-w", str(wav_path), text], check=True)
    audio, rate_hz = soundfile.read(str(wav_path), dtype="float64")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    if rate_hz != SPEECH_SAMPLE_RATE_HZ:
        g = math.gcd(rate_hz, SPEECH_SAMPLE_RATE_HZ)
        audio = resample_poly(audio, SPEECH_SAMPLE_RATE_HZ // g, rate_hz // g)
    loud = np.flatnonzero(np.abs(audio) > TRIM_THRESHOLD)
    return audio[loud[0]:loud[-1] + 1]


def make_speech(path):
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed")

    def silence(seconds):
        return np.zeros(round(seconds * SPEECH_SAMPLE_RATE_HZ))

    with tempfile.TemporaryDirectory() as work_dir:
        first, second = [synthesise(text, work_dir) for text in UTTERANCES]
    speech = np.concatenate([silence(LEAD_SILENCE_S), first, silence(MID_SILENCE_S),
                             second, silence(TAIL_SILENCE_S)])
    speech *= SPEECH_PEAK / np.max(np.abs(speech))
    soundfile.write(str(path), speech, SPEECH_SAMPLE_RATE_HZ, subtype="PCM_16")


def main():
    make_video(VIDEO_PATH)
    make_speech(SPEECH_PATH)
    print(f"wrote {VIDEO_PATH} and {SPEECH_PATH}")


if __name__ == "__main__":
    main()
