// The lip-sync page: pick a model, then speak into the microphone or talk with an OpenAI Realtime
// agent, and see the avatar's mouth follow the voice.
//
// The debug surface of the original system, kept for people porting its code and for tests:
// window.app with modelVideoManager, faceCompositor, modelPreparationProgress (name -> percent),
// start({mode: "mic" | "agent", model}) (resolves once frames flow), stop(), and frameLog: the last
// drawn frames, {session, bargeIns, playing, mouthOf, arrived, modelFrame, bounds, index, speech}. mouthOf is the second
// of the session's audio whose mouth the frame shows; playing the second of that audio heard
// (microphone: captured) when it was drawn; arrived the second of it that had reached the page. With
// the microphone playing - mouthOf is the latency; with the agent its voice is played
// AGENT_PLAYBACK_DELAY_S after it arrives, so that each mouth frame is back from the server before
// its audio is heard, and frames are drawn when their audio is heard. Idle frames have mouthOf null.
import { BridgeClient } from "./bridge_client.js";
import { FaceCompositor } from "./face_compositor.js";
import { ModelVideoManager } from "./model_video_manager.js";
import { connectRealtime } from "./realtime_client.js";

const FRAME_LOG_LENGTH = 2000; // >= the 1,000 the debug surface promises
// the agent's voice is heard this long after it arrives: the round trip to the engine (the
// driver's look-ahead, a JPEG each way) fits in it, and the mouth is then on time, not late
const AGENT_PLAYBACK_DELAY_S = 0.1;
// a busy server or CPU makes frames miss their audio: then the voice is delayed a step more (a
// jitter buffer), up to the most a conversation tolerates
const LATE_FRAMES_TO_GROW = 3; // late frames within LATE_WINDOW_S that grow the delay
const LATE_WINDOW_S = 1;
const DELAY_STEP_S = 0.04;
const MAX_AGENT_DELAY_S = 0.4;
const DELAY_RAMP_S = 0.05; // the delay glides to its new value (a jump would click)
// and it comes back a step, never under AGENT_PLAYBACK_DELAY_S, once the frames of the last
// SHRINK_AFTER_S all came at least DELAY_STEP_S + MIN_HEADROOM_S before their audio, only while the
// whole delay line is silent (the glide changes the playback speed: heard in speech, not in silence)
const SHRINK_AFTER_S = 1;
const MIN_HEADROOM_S = 0.03; // silent frames come a little sooner than speech frames (no lip warp): room for that
const QUIET_PEAK = 0.01 * 32767; // a 10 ms block of the voice peaking under this is silence (-40 dBFS)
const DELAY_CHANGES_KEPT = 100; // app.session.delayChanges, for the debug surface and tests
// waiting audio beyond this is dropped by the server when the engine falls behind (see bridge.py),
// so a starved CPU makes the mouth skip, not lag further and further behind the voice
const MAX_BACKLOG_MS = 60;
const IDLE_AFTER_S = 0.5; // no mouth frame for this long: the avatar idles (ping-pong frames)
const READOUT_FRAMES = 50; // the latency readout is the median of this many frames
const IDLE_FPS = 25; // before any model facts are known

// a 10 ms block of PCM16 (an ArrayBuffer) is silence
function quiet(pcm) {
  const v = new Int16Array(pcm);
  for (let i = 0; i < v.length; i += 1) if (Math.abs(v[i]) >= QUIET_PEAK) return false;
  return true;
}

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
    this.sessions = 0; // sessions started: frameLog entries carry theirs as `session`
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
    if (mode !== "mic" && mode !== "agent") throw new Error(`mode ${JSON.stringify(mode)}: use "mic" or "agent"`);
    await this.stop();
    this.model = model || element("models").value;
    // mouth-only until the model's frames are ready (as the original)
    this.prepare(this.model).catch((err) => this.setStatus(`Cannot prepare ${this.model}: ${err.message}`));
    const audio = new AudioContext();
    this.sessions += 1;
    this.dropped = 0;
    const session = { id: this.sessions, mode, audio, pending: [], latencies: [], facts: null, firstFrame: null, closed: false,
                      arrivals: Promise.resolve(), delayS: mode === "agent" ? AGENT_PLAYBACK_DELAY_S : 0,
                      heardFromS: 0, bargeIns: 0, interrupted: false,
                      // the jitter buffer (agent): when the voice was last loud, and recent frames' headroom
                      loudAtS: -Infinity, headroom: [], delayChangedAt: 0, delayChanges: [] };
    this.session = session;
    this.setCaption("");
    let firstDrawn;
    session.flowing = new Promise((resolve, reject) => { firstDrawn = resolve; session.fail = reject; });
    session.onFirstDraw = firstDrawn;
    try {
      session.stream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: mode === "agent", noiseSuppression: false, autoGainControl: false, channelCount: 1 } });
      // the engine stream first (the server may prepare the model: seconds), so that no word of
      // the agent's is spoken before its mouth can follow
      session.bridge = new BridgeClient({
        onFrame: (f) => this.receive(session, f),
        onClose: (e) => this.closed(session, e),
      });
      session.facts = await session.bridge.open({ model: this.model, sample_rate_hz: audio.sampleRate,
                                                  sample_type: "s16", max_backlog_ms: MAX_BACKLOG_MS });
      await audio.audioWorklet.addModule("pcm_worklet.js");
      let voice = session.stream; // what the mouth follows
      if (mode === "agent") {
        session.realtime = await connectRealtime({ micStream: session.stream, onEvent: (e) => this.agentEvent(session, e) });
        voice = session.realtime.remoteStream;
        // Chromium feeds a remote WebRTC track into Web Audio only while a media element plays it
        // (unmuted: a muted one does not count); it plays at volume 0, Web Audio plays it delayed
        session.sink = Object.assign(new Audio(), { srcObject: voice, volume: 0 });
        session.sink.play().catch(() => {});
      }
      const source = audio.createMediaStreamSource(voice);
      const capture = new AudioWorkletNode(audio, "pcm-capture", { numberOfOutputs: 1 });
      const mute = new GainNode(audio, { gain: 0 }); // the worklet runs only when pulled to the output
      source.connect(capture).connect(mute).connect(audio.destination);
      if (mode === "agent") {
        session.speaker = new GainNode(audio, { gain: 1 }); // barge-in silences it
        session.delay = new DelayNode(audio, { delayTime: session.delayS, maxDelayTime: MAX_AGENT_DELAY_S });
        source.connect(session.delay).connect(session.speaker).connect(audio.destination);
        session.lateAt = []; // audio-clock seconds of recent late frames
      }
      session.capture = capture;
      capture.port.onmessage = (e) => {
        if (session.firstFrame === null) session.firstFrame = e.data.firstFrame;
        if (mode === "agent" && !quiet(e.data.pcm)) session.loudAtS = audio.currentTime;
        session.bridge.sendAudio(e.data.pcm);
      };
      await audio.resume();
      capture.port.postMessage("start");
      this.setStatus(mode === "agent" ? `Talking with the agent: ${this.model} speaks its voice.`
        : `Listening: ${this.model} follows the microphone.`);
    } catch (err) {
      session.fail(err);
      if (this.session === session) this.stop();
    }
    return session.flowing;
  }

  // The Realtime API's events (data channel): captions, barge-in, the next answer.
  agentEvent(session, event) {
    if (session.closed) return;
    if (event.type === "response.output_audio_transcript.delta") {
      this.setCaption(element("captions").textContent + event.delta);
    } else if (event.type === "response.created") {
      this.setCaption("");
      if (session.interrupted) {
        // the next answer: its voice is heard and drawn again, from what arrives now
        session.interrupted = false;
        session.heardFromS = this.arrived(session) ?? 0;
      }
      if (session.speaker) session.speaker.gain.value = 1; // events can come before the audio graph
    } else if (event.type === "input_audio_buffer.speech_started") {
      this.bargeIn(session);
    }
  }

  // The user speaks over the agent: the answer is cancelled. What is still in the delay line, or
  // still on its way (the data channel outruns the audio's jitter buffer), is never heard nor
  // drawn: the mouth rests until the next answer begins.
  bargeIn(session) {
    session.bargeIns += 1;
    session.interrupted = true;
    const said = element("captions").textContent;
    if (said) this.setCaption(`${said} \u2026`); // cut off
    if (session.speaker) session.speaker.gain.value = 0;
    for (const f of session.pending) f.bitmap?.close();
    session.pending = [];
    session.lastDrawMs = null; // the avatar idles (rests) until the next mouth frame is due
  }

  async stop() {
    const session = this.session;
    if (!session) return;
    this.session = null;
    this.setStatus("Stopped.");
    session.closed = true;
    session.capture?.port.postMessage("stop");
    session.bridge?.close();
    session.realtime?.close();
    if (session.sink) session.sink.srcObject = null;
    session.stream?.getTracks().forEach((t) => t.stop());
    for (const f of session.pending) f.bitmap?.close();
    await session.audio.close();
  }

  // seconds of the session's audio that have reached the page (the capture worklet) by now
  arrived(session) {
    if (session.firstFrame === null) return null;
    return session.audio.currentTime - session.firstFrame / session.audio.sampleRate;
  }

  // the second of the session's audio being heard now (microphone: the second captured)
  playing(session) {
    const arrived = this.arrived(session);
    if (arrived === null) return null;
    if (session.mode !== "agent") return arrived;
    // the delay's value now, gliding included
    return arrived - session.delay.delayTime.value - (session.audio.outputLatency || 0);
  }

  // frames missed their audio: hear the voice a little later from now on
  late(session, n) {
    const now = session.audio.currentTime;
    for (let i = 0; i < n; i += 1) session.lateAt.push(now);
    while (session.lateAt.length && session.lateAt[0] < now - LATE_WINDOW_S) session.lateAt.shift();
    if (session.lateAt.length < LATE_FRAMES_TO_GROW || session.delayS >= MAX_AGENT_DELAY_S) return;
    this.setDelay(session, Math.min(MAX_AGENT_DELAY_S, session.delayS + DELAY_STEP_S));
    session.lateAt = [];
  }

  // a frame ready `headroomS` before its audio is heard: while the voice is silent and every frame
  // of the last SHRINK_AFTER_S had room to spare, hear the voice a step sooner
  early(session, headroomS) {
    const now = session.audio.currentTime;
    session.headroom.push([now, headroomS]);
    while (session.headroom[0][0] < now - SHRINK_AFTER_S) session.headroom.shift();
    const smaller = session.delayS - DELAY_STEP_S;
    if (smaller < AGENT_PLAYBACK_DELAY_S - 1e-6 || now - session.delayChangedAt < SHRINK_AFTER_S) return;
    if (now - session.loudAtS < session.delayS + 3 * DELAY_RAMP_S) return; // voice still in the delay line
    // frames keep coming in silence (a resting mouth): too few of them says the server is struggling
    if (session.headroom.length < (SHRINK_AFTER_S * session.facts.fps) / 2) return;
    if (Math.min(...session.headroom.map(([, h]) => h)) - DELAY_STEP_S < MIN_HEADROOM_S) return;
    this.setDelay(session, smaller);
  }

  setDelay(session, delayS) {
    const now = session.audio.currentTime;
    session.delayChanges.push({ at: now, from: session.delayS, to: delayS, loudAt: session.loudAtS });
    if (session.delayChanges.length > DELAY_CHANGES_KEPT) session.delayChanges.shift();
    session.delayS = delayS;
    session.delay.delayTime.setTargetAtTime(delayS, now, DELAY_RAMP_S);
    session.delayChangedAt = now;
    session.headroom = []; // measured against the old delay
  }

  // JPEGs decode concurrently but are queued in arrival (= index) order
  receive(session, { header, jpeg }) {
    const decoding = jpeg.byteLength ? createImageBitmap(new Blob([jpeg], { type: "image/jpeg" })) : Promise.resolve(null);
    session.arrivals = session.arrivals.then(async () => {
      const bitmap = await decoding.catch(() => null); // a damaged JPEG: the plain frame is shown
      // a frame whose audio is never heard (barge-in) is never shown
      if (session.closed || session.interrupted || header.mouth_of_s < session.heardFromS) { bitmap?.close(); return; }
      // shown while its audio is heard: from half a frame before its centre
      const dueS = header.mouth_of_s - 0.5 / session.facts.fps;
      // the session's audio arrived by the time this frame is ready (its mouth's sound arrived mouth_of_s)
      session.pending.push({ header, bitmap, dueS, readyAt: this.arrived(session) });
      const playing = this.playing(session);
      if (session.mode === "agent" && playing !== null) this.early(session, dueS - playing);
    });
  }

  closed(session, { code, reason }) {
    if (session.closed) return;
    session.fail(new Error(`the lip-sync stream closed (${code}: ${reason})`));
    this.stop().then(() => this.setStatus(`The lip-sync stream closed (${code}${reason ? `: ${reason}` : ""}).`));
  }

  setStatus(text) { element("status").textContent = text; }

  setCaption(text) { element("captions").textContent = text; }

  tick(nowMs) {
    requestAnimationFrame((t) => this.tick(t));
    const session = this.session;
    if (session && session.pending.length) {
      const playing = this.playing(session);
      let due = -1;
      for (let i = 0; i < session.pending.length && session.pending[i].dueS <= playing; i += 1) due = i;
      if (due >= 0) {
        const shown = session.pending.splice(0, due + 1);
        const last = shown[due];
        // the agent's voice is heard on a clock: a frame whose audio has gone by is not shown late
        const late = session.mode === "agent" && last.dueS + 1 / session.facts.fps < playing;
        this.dropped += late ? due + 1 : due;
        if (late) this.late(session, 1);
        shown.slice(0, late ? due + 1 : due).forEach((f) => f.bitmap?.close());
        if (!late) {
          this.drawMouth(session, last, playing, nowMs);
          return;
        }
      }
    }
    const idle = !session || !session.lastDrawMs || nowMs - session.lastDrawMs > IDLE_AFTER_S * 1000;
    if (idle) this.drawIdle(nowMs);
  }

  drawMouth(session, { header, bitmap, readyAt }, playing, nowMs) {
    const frame = this.modelVideoManager.getModelFrame(this.model, header.model_frame);
    const { width, height } = session.facts;
    if (frame) this.faceCompositor.compositeFrame(frame, bitmap, header.bounds, width);
    else this.faceCompositor.drawMouthOnly(bitmap, header.bounds, width, height);
    bitmap?.close();
    session.lastDrawMs = nowMs;
    this.idleStartMs = null;
    this.log({ playing, mouthOf: header.mouth_of_s, arrived: this.arrived(session), readyAt,
               modelFrame: header.model_frame,
               bounds: header.bounds,
               index: header.index, speech: header.speech, droppedS: header.dropped_s, open: header.open, fromModel: Boolean(frame) });
    session.latencies.push(playing - header.mouth_of_s);
    if (session.latencies.length > READOUT_FRAMES) session.latencies.shift();
    this.readout(nowMs, session);
    if (session.onFirstDraw) { session.onFirstDraw(); session.onFirstDraw = null; }
  }

  drawIdle(nowMs) {
    const name = this.model || element("models").value;
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
    const session = this.session;
    this.frameLog.push({ session: session?.id ?? null, bargeIns: session?.bargeIns ?? 0, ...entry });
    if (this.frameLog.length > FRAME_LOG_LENGTH) this.frameLog.splice(0, this.frameLog.length - FRAME_LOG_LENGTH);
  }

  readout(nowMs, session) {
    this.drawnTimes.push(nowMs);
    while (this.drawnTimes.length && this.drawnTimes[0] < nowMs - 1000) this.drawnTimes.shift();
    const ms = session && Math.round(1000 * median(session.latencies));
    const latency = !session ? "idle" : session.mode === "agent" ? `mouth ${ms >= 0 ? "+" : ""}${ms} ms from the voice`
      : `${ms} ms behind the microphone`;
    const delay = session?.mode === "agent" ? ` \u00b7 voice delayed ${Math.round(1000 * session.delayS)} ms` : "";
    element("readout").textContent = `${this.drawnTimes.length} fps \u00b7 ${latency} \u00b7 ${this.dropped} dropped${delay}`;
  }
}

async function main() {
  const app = new App();
  window.app = app;
  const picker = element("models");
  try {
    const response = await fetch("/api/models");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const models = await response.json();
    for (const m of models) picker.append(new Option(m.error ? `${m.name} (${m.error})` : m.name, m.name));
    app.setStatus(models.length ? "Pick a model, then press Microphone or Agent." : "No model videos found.");
  } catch (err) {
    app.setStatus(`Cannot load the model list (${err.message}).`);
  }
  element("prepare").onclick = () => app.prepare(picker.value).catch((err) => app.setStatus(err.message));
  element("mic").onclick = () => app.start({ mode: "mic", model: picker.value }).catch((err) => app.setStatus(err.message));
  element("agent").onclick = () => app.start({ mode: "agent", model: picker.value }).catch((err) => app.setStatus(err.message));
  element("stop").onclick = () => app.stop();
  window.addEventListener("pagehide", () => app.stop());
}

main();
