// Model videos in the page (the original system's ModelVideoManager): download with progress,
// extract every frame once, keep them as ImageBitmaps at display size for instant drawing.
//
// Memory: a bitmap costs width x height x 4 bytes. Frames are scaled so that one model stays
// within budgetBytes / maxModels (full-size frames of a 1080x1920 video would not fit), and no
// taller than maxDisplayHeightPx. getMemoryStats() reports what is held against the budget.
// At most maxModels models are kept; preparing one more evicts the least recently used.

const MIB = 1024 * 1024;
export const DEFAULT_BUDGET_BYTES = 768 * MIB; // all models together
export const DEFAULT_MAX_MODELS = 5;
export const DEFAULT_MAX_DISPLAY_HEIGHT_PX = 720; // frames are drawn no taller than this
// extraction plays the video at this rate, up to PLAY_PASSES times, and grabs each frame shown;
// frames still missing are then fetched by seeking (slow: each seek decodes from a key frame). At 2
// a headless Chromium presented only 60% of a 25 fps video's frames
export const DEFAULT_PLAYBACK_RATE = 1;
const PLAY_PASSES = 2;
const DOWNLOAD_SHARE = 0.4; // of the progress bar: the rest is frame extraction
const FRAME_EPSILON = 1e-3; // a frame's timestamp, in frames, may sit a hair below its index

function nextEvent(target, name) {
  return new Promise((resolve, reject) => {
    const ok = () => { target.removeEventListener("error", bad); resolve(); };
    const bad = () => { target.removeEventListener(name, ok); reject(new Error(`cannot decode this video (${target.error?.message || "unsupported"})`)); };
    target.addEventListener(name, ok, { once: true });
    target.addEventListener("error", bad, { once: true });
  });
}

export class ModelVideoManager {
  constructor({ maxModels = DEFAULT_MAX_MODELS, budgetBytes = DEFAULT_BUDGET_BYTES,
                maxDisplayHeightPx = DEFAULT_MAX_DISPLAY_HEIGHT_PX, playbackRate = DEFAULT_PLAYBACK_RATE } = {}) {
    this.maxModels = maxModels;
    this.budgetBytes = budgetBytes;
    this.maxDisplayHeightPx = maxDisplayHeightPx;
    this.playbackRate = playbackRate;
    this.models = new Map(); // name -> ready model; insertion order = least recently used first
    this.preparing = new Map(); // name -> Promise of the model
    this.catalogue = null; // Promise of GET /api/models, by name
  }

  async modelFacts(name) {
    if (!this.catalogue) {
      this.catalogue = fetch("/api/models").then((r) => {
        if (!r.ok) throw new Error(`GET /api/models: HTTP ${r.status}`);
        return r.json();
      }).then((list) => new Map(list.map((m) => [m.name, m])));
      this.catalogue.catch(() => { this.catalogue = null; });
    }
    const facts = (await this.catalogue).get(name);
    if (!facts) throw new Error(`no model named ${JSON.stringify(name)} on this server`);
    if (facts.error || !facts.fps) throw new Error(`model ${name}: ${facts.error || "no frame rate"}`);
    return facts;
  }

  // Resolves to the model's facts once every frame is held. onProgress({phase, percent, loaded, total}):
  // phase "download" (bytes), then "frames" (frames), then "ready"; percent is of the whole job.
  prepareModel(name, onProgress = () => {}) {
    const ready = this.models.get(name);
    if (ready) {
      this.touch(name);
      onProgress({ phase: "ready", percent: 100, loaded: ready.nFrames, total: ready.nFrames });
      return Promise.resolve(ready.info);
    }
    if (!this.preparing.has(name)) {
      const job = this.load(name, onProgress).finally(() => this.preparing.delete(name));
      this.preparing.set(name, job);
    }
    return this.preparing.get(name).then((m) => m.info);
  }

  async load(name, onProgress) {
    const facts = await this.modelFacts(name);
    const url = facts.browser_url || facts.url; // an H.264 copy when the server offers one
    const response = await fetch(url);
    if (!response.ok) throw new Error(`GET ${url}: HTTP ${response.status}`);
    const total = Number(response.headers.get("content-length")) || facts.size_bytes || 0;
    const reader = response.body.getReader();
    const parts = [];
    let loaded = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      parts.push(value);
      loaded += value.byteLength;
      const share = total ? Math.min(1, loaded / total) : 0;
      onProgress({ phase: "download", percent: 100 * DOWNLOAD_SHARE * share, loaded, total });
    }
    const blobUrl = URL.createObjectURL(new Blob(parts, { type: response.headers.get("content-type") || "video/mp4" }));
    try {
      return await this.extract(name, facts, blobUrl, onProgress);
    } finally {
      URL.revokeObjectURL(blobUrl);
    }
  }

  displaySize(width, height, nFrames) {
    const perModel = this.budgetBytes / this.maxModels;
    const fit = Math.sqrt(perModel / (nFrames * width * height * 4));
    const scale = Math.min(1, this.maxDisplayHeightPx / height, fit);
    return [Math.max(2, Math.floor(width * scale)), Math.max(2, Math.floor(height * scale))];
  }

  async extract(name, facts, src, onProgress) {
    const video = document.createElement("video");
    video.muted = true;
    video.playsInline = true;
    video.preload = "auto";
    video.src = src;
    await nextEvent(video, "loadeddata");
    if (!video.videoWidth) throw new Error(`model ${name}: this browser cannot decode its video`);
    const fps = facts.fps;
    const nFrames = Math.max(1, Math.round(video.duration * fps));
    const [w, h] = this.displaySize(video.videoWidth, video.videoHeight, nFrames);
    const frames = new Array(nFrames).fill(null);
    let got = 0;
    const report = () => onProgress({ phase: "frames", loaded: got, total: nFrames,
                                      percent: 100 * (DOWNLOAD_SHARE + (1 - DOWNLOAD_SHARE) * got / nFrames) });
    const grab = async (i) => {
      if (i < 0 || i >= nFrames || frames[i]) return;
      frames[i] = "pending";
      frames[i] = await createImageBitmap(video, { resizeWidth: w, resizeHeight: h, resizeQuality: "high" });
      got += 1;
      report();
    };
    // play through, grabbing each frame the compositor presents; again for frames it skipped
    const playPass = () => new Promise((resolve, reject) => {
      const grabs = [];
      const onFrame = (_now, meta) => {
        grabs.push(grab(Math.floor(meta.mediaTime * fps + FRAME_EPSILON)));
        if (!video.ended) video.requestVideoFrameCallback(onFrame);
      };
      video.requestVideoFrameCallback(onFrame);
      video.addEventListener("ended", () => Promise.all(grabs).then(resolve, reject), { once: true });
      video.addEventListener("error", () => reject(new Error(`model ${name}: decoding failed`)), { once: true });
      video.currentTime = 0;
      video.playbackRate = this.playbackRate;
      video.play().catch(reject);
    });
    for (let pass = 0; pass < PLAY_PASSES && got < nFrames; pass += 1) await playPass();
    const played = got;
    // last resort: seek to the frames playback skipped
    for (let i = 0; i < nFrames; i += 1) {
      if (frames[i]) continue;
      video.currentTime = (i + 0.5) / fps;
      await nextEvent(video, "seeked");
      await grab(i);
    }
    const model = {
      name, frames, nFrames, fps, width: video.videoWidth, height: video.videoHeight, displayWidth: w, displayHeight: h,
      bytes: nFrames * w * h * 4, framesFromPlayback: played,
    };
    video.removeAttribute("src");
    video.load();
    model.info = { name, fps, nFrames, framesFromPlayback: played, width: model.width, height: model.height, displayWidth: w, displayHeight: h };
    this.models.set(name, model);
    this.evict();
    onProgress({ phase: "ready", percent: 100, loaded: nFrames, total: nFrames });
    return model;
  }

  touch(name) {
    const model = this.models.get(name);
    if (model) { this.models.delete(name); this.models.set(name, model); }
  }

  evict() {
    while (this.models.size > this.maxModels) {
      const [oldest, model] = this.models.entries().next().value;
      for (const frame of model.frames) frame?.close?.();
      this.models.delete(oldest);
    }
  }

  isModelReady(name) { return this.models.has(name); }

  getModelInfo(name) { return this.models.get(name)?.info ?? null; }

  // ImageBitmap of frame i at display size, or null when the model is not ready.
  getModelFrame(name, i) {
    const model = this.models.get(name);
    if (!model) return null;
    const n = model.nFrames;
    return model.frames[((i % n) + n) % n];
  }

  getMemoryStats() {
    const models = [...this.models.values()].map((m) => ({
      name: m.name, frames: m.nFrames, displayWidth: m.displayWidth, displayHeight: m.displayHeight, bytes: m.bytes }));
    return { budgetBytes: this.budgetBytes, maxModels: this.maxModels, usedBytes: models.reduce((s, m) => s + m.bytes, 0),
             models, preparing: [...this.preparing.keys()] };
  }
}
