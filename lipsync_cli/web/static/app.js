// The lip-sync page: pick a model, speak into the microphone, see the avatar's mouth follow.
//
// The debug surface of the original system, kept for people porting its code and for tests:
// window.app with modelVideoManager, faceCompositor, modelPreparationProgress (name -> percent),
// start({mode, model}) (resolves once frames flow), stop(), and frameLog: the last drawn frames,
// {playing, mouthOf, modelFrame, bounds, index, speech}. mouthOf is the second of the session's
// audio whose mouth the frame shows; playing the second of that audio heard (microphone: captured)
// when it was drawn, so playing - mouthOf is the latency. Idle frames have mouthOf null.
import { BridgeClient } from "./bridge_client.js";
import { FaceCompositor } from "./face_compositor.js";
import { ModelVideoManager } from "./model_video_manager.js";

const FRAME_LOG_LENGTH = 2000; // >= the 1,000 the debug surface promises
const IDLE_AFTER_S = 0.5; // no mouth frame for this long: the avatar idles (ping-pong frames)
const READOUT_FRAMES = 50; // the latency readout is the median of this many frames
const IDLE_FPS = 25; // before any model facts are known

function element(id) { return document.getElementById(id); }

function median(values) {
  if (!values.length) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function pingPong(i, n) {
  if (n <= 1) return 0;
  const period = 2 * (n - 1);
  const k = ((i % period) + period) % period;
  return k < n ? k : period - k;
}

class App {
  constructor() {
    this.modelVideoManager = new ModelVideoManager();
    this.faceCompositor = new FaceCompositor(element("stage"));
    this.modelPreparationProgress = new Map();
    this.frameLog = [];
    this.model = null; // the model shown (name)
    this.session = null;
    this.dropped = 0; // frames that arrived but were never drawn (a later one was due first)
    this.drawnTimes = [];
    this.lastIdleFrame = -1;
    requestAnimationFrame((t) => this.tick(t));
  }

  prepare(name) {
    return this.modelVideoManager.prepareModel(name, (p) => {
      this.modelPreparationProgress.set(name, Math.round(p.percent));
      if (name === this.model || !this.model) this.showProgress(name, p);
    });
  }

  showProgress(name, p) {
    const bar = element("progress");
    bar.value = p.percent;
    element("progress-text").textContent = p.phase === "ready" ? `${name}: ready`
      : `${name}: ${p.phase === "download" ? `downloading ${(p.loaded / 1e6).toFixed(1)} MB` : `frame ${p.loaded} of ${p.total}`}`;
  }

  async start({ mode = "mic", model } = {}) {
    if (mode !== "mic") throw new Error(`mode ${JSON.stringify(mode)} is not available yet: use "mic"`);
    await this.stop();
    this.model = model || element("model").value;
    // mouth-only until the model's frames are ready (as the original)
    this.prepare(this.model).catch((err) => this.setStatus(`Cannot prepare ${this.model}: ${err.message}`));
    const audio = new AudioContext();
    const session = { audio, pending: [], latencies: [], facts: null, firstFrame: null, closed: false,
                      arrivals: Promise.resolve() };
    this.session = session;
    let firstDrawn;
    session.flowing = new Promise((resolve, reject) => { firstDrawn = resolve; session.fail = reject; });
    session.onFirstDraw = firstDrawn;
    try {
      session.stream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 } });
      await audio.audioWorklet.addModule("pcm_worklet.js");
      const source = audio.createMediaStreamSource(session.stream);
      const capture = new AudioWorkletNode(audio, "pcm-capture", { numberOfOutputs: 1 });
      const mute = new GainNode(audio, { gain: 0 }); // the worklet runs only when pulled to the output
      source.connect(capture).connect(mute).connect(audio.destination);
      session.capture = capture;
      session.bridge = new BridgeClient({
        onFrame: (f) => this.receive(session, f),
        onClose: (e) => this.closed(session, e),
      });
      session.facts = await session.bridge.open({ model: this.model, sample_rate_hz: audio.sampleRate, sample_type: "s16" });
      capture.port.onmessage = (e) => {
        if (session.firstFrame === null) session.firstFrame = e.data.firstFrame;
        session.bridge.sendAudio(e.data.pcm);
      };
      await audio.resume();
      capture.port.postMessage("start");
    } catch (err) {
      session.fail(err);
    }
    return session.flowing;
  }

  async stop() {
    const session = this.session;
    if (!session) return;
    this.session = null;
    session.closed = true;
    session.capture?.port.postMessage("stop");
    session.bridge?.close();
    session.stream?.getTracks().forEach((t) => t.stop());
    for (const f of session.pending) f.bitmap?.close();
    await session.audio.close();
  }

  // seconds of the session's audio captured (microphone) by now
  playing(session) {
    if (session.firstFrame === null) return null;
    return session.audio.currentTime - session.firstFrame / session.audio.sampleRate;
  }

  // JPEGs decode concurrently but are queued in arrival (= index) order
  receive(session, { header, jpeg }) {
    const decoding = jpeg.byteLength ? createImageBitmap(new Blob([jpeg], { type: "image/jpeg" })) : Promise.resolve(null);
    session.arrivals = session.arrivals.then(async () => {
      const bitmap = await decoding.catch(() => null); // a damaged JPEG: the plain frame is shown
      if (session.closed) { bitmap?.close(); return; }
      session.pending.push({ header, bitmap, dueS: header.index / session.facts.fps });
    });
  }

  closed(session, { code, reason }) {
    if (session.closed) return;
    this.setStatus(`The lip-sync stream closed (${code}${reason ? `: ${reason}` : ""}).`);
    session.fail(new Error(`the lip-sync stream closed (${code}: ${reason})`));
    this.stop();
  }

  setStatus(text) { element("status").textContent = text; }

  tick(nowMs) {
    requestAnimationFrame((t) => this.tick(t));
    const session = this.session;
    if (session && session.pending.length) {
      const playing = this.playing(session);
      let due = -1;
      for (let i = 0; i < session.pending.length && session.pending[i].dueS <= playing; i += 1) due = i;
      if (due >= 0) {
        const shown = session.pending.splice(0, due + 1);
        this.dropped += due;
        shown.slice(0, due).forEach((f) => f.bitmap?.close());
        this.drawMouth(session, shown[due], playing, nowMs);
        return;
      }
    }
    const idle = !session || !session.lastDrawMs || nowMs - session.lastDrawMs > IDLE_AFTER_S * 1000;
    if (idle) this.drawIdle(nowMs);
  }

  drawMouth(session, { header, bitmap }, playing, nowMs) {
    const frame = this.modelVideoManager.getModelFrame(this.model, header.model_frame);
    const { width, height } = session.facts;
    if (frame) this.faceCompositor.compositeFrame(frame, bitmap, header.bounds, width);
    else this.faceCompositor.drawMouthOnly(bitmap, header.bounds, width, height);
    bitmap?.close();
    session.lastDrawMs = nowMs;
    this.idleStartMs = null;
    this.log({ playing, mouthOf: header.mouth_of_s, modelFrame: header.model_frame, bounds: header.bounds,
               index: header.index, speech: header.speech, open: header.open, fromModel: Boolean(frame) });
    session.latencies.push(playing - header.mouth_of_s);
    if (session.latencies.length > READOUT_FRAMES) session.latencies.shift();
    this.readout(nowMs, session);
    if (session.onFirstDraw) { session.onFirstDraw(); session.onFirstDraw = null; }
  }

  drawIdle(nowMs) {
    const name = this.model || element("model").value;
    const info = name && this.modelVideoManager.getModelInfo(name);
    if (!info) return;
    if (this.idleStartMs == null) this.idleStartMs = nowMs;
    const i = pingPong(Math.floor(((nowMs - this.idleStartMs) / 1000) * (info.fps || IDLE_FPS)), info.nFrames);
    if (i === this.lastIdleFrame && this.lastIdleModel === name) return;
    this.lastIdleFrame = i;
    this.lastIdleModel = name;
    this.faceCompositor.compositeFrame(this.modelVideoManager.getModelFrame(name, i), null, null);
    this.log({ playing: null, mouthOf: null, modelFrame: i, bounds: null });
    this.readout(nowMs, null);
  }

  log(entry) {
    this.frameLog.push(entry);
    if (this.frameLog.length > FRAME_LOG_LENGTH) this.frameLog.splice(0, this.frameLog.length - FRAME_LOG_LENGTH);
  }

  readout(nowMs, session) {
    this.drawnTimes.push(nowMs);
    while (this.drawnTimes.length && this.drawnTimes[0] < nowMs - 1000) this.drawnTimes.shift();
    const latency = session ? `${Math.round(1000 * median(session.latencies))} ms behind the microphone` : "idle";
    element("readout").textContent = `${this.drawnTimes.length} fps \u00b7 ${latency} \u00b7 ${this.dropped} dropped`;
  }
}

async function main() {
  const app = new App();
  window.app = app;
  const picker = element("model");
  try {
    const response = await fetch("/api/models");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const models = await response.json();
    for (const m of models) picker.append(new Option(m.error ? `${m.name} (${m.error})` : m.name, m.name));
    app.setStatus(models.length ? "Pick a model, then press Microphone." : "No model videos found.");
  } catch (err) {
    app.setStatus(`Cannot load the model list (${err.message}).`);
  }
  element("prepare").onclick = () => app.prepare(picker.value).catch((err) => app.setStatus(err.message));
  element("mic").onclick = () => app.start({ mode: "mic", model: picker.value }).catch((err) => app.setStatus(err.message));
  element("stop").onclick = () => app.stop();
  window.addEventListener("pagehide", () => app.stop());
}

main();
