// Pastes a mouth region onto its full frame on a canvas (the original system's FaceCompositor),
// the way the CLI's compositor does (lipsync_cli/core/compositor.py): sub-pixel placement, a
// feathered edge (smoothstep over the outer FEATHER_FRACTION, no visible box) and a colour match
// on the rim, where region and frame should agree. Outside the bounds the frame stays untouched.

export const FEATHER_FRACTION = 0.2; // as compositor.py
export const MAX_GAIN_CHANGE = 0.12; // as compositor.py: a channel never shifts by more
const RIM_LOW = 0.05 * 255; // rim: where the mask is between these (as compositor.py)
const RIM_HIGH = 0.5 * 255;
const MIN_RIM_PIXELS = 32;
const GAIN_DEADBAND = 0.004;

function canvas(w, h) {
  return typeof OffscreenCanvas !== "undefined" ? new OffscreenCanvas(w, h)
    : Object.assign(document.createElement("canvas"), { width: w, height: h });
}

// (size x size) alpha mask: 1 inside, smooth fall to 0 at every edge
function featherMask(size) {
  const ramp = Math.max(2, Math.floor(FEATHER_FRACTION * size));
  const t = new Float32Array(size);
  for (let i = 0; i < size; i += 1) {
    const x = Math.min(1, Math.min(i, size - 1 - i) / ramp);
    t[i] = x * x * (3 - 2 * x);
  }
  const mask = canvas(size, size);
  const ctx = mask.getContext("2d");
  const img = ctx.createImageData(size, size);
  for (let y = 0; y < size; y += 1) {
    for (let x = 0; x < size; x += 1) img.data[4 * (y * size + x) + 3] = Math.round(255 * t[y] * t[x]);
  }
  ctx.putImageData(img, 0, 0);
  return mask;
}

export class FaceCompositor {
  constructor(target) {
    this.canvas = target;
    this.ctx = target.getContext("2d", { willReadFrequently: true });
    this.masks = new Map(); // region side -> mask canvas
  }

  mask(size) {
    if (!this.masks.has(size)) this.masks.set(size, featherMask(size));
    return this.masks.get(size);
  }

  resize(w, h) {
    if (this.canvas.width !== w || this.canvas.height !== h) Object.assign(this.canvas, { width: w, height: h });
  }

  // Draw `frame` (an image at display size) and paste `mouth` (a square image, or null) over
  // `bounds` ([xmin, ymin, xmax, ymax] in pixels of the full-size video, `fullWidth` wide).
  // Returns false when the mouth could not be pasted (the plain frame is shown).
  compositeFrame(frame, mouth, bounds, fullWidth = frame.width) {
    this.resize(frame.width, frame.height);
    this.ctx.globalCompositeOperation = "source-over";
    this.ctx.drawImage(frame, 0, 0);
    if (!mouth || !bounds) return false;
    const k = frame.width / fullWidth; // frames may be held smaller than the video
    return this.paste(mouth, bounds.map((v) => v * k));
  }

  // No model frames yet (still preparing): the mouth alone at its place, on black.
  drawMouthOnly(mouth, bounds, fullWidth, fullHeight) {
    const k = Math.min(1, 720 / fullHeight);
    this.resize(Math.round(fullWidth * k), Math.round(fullHeight * k));
    this.ctx.fillStyle = "#000";
    this.ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    if (mouth && bounds) this.paste(mouth, bounds.map((v) => v * k));
  }

  paste(mouth, [x0, y0, x1, y1]) {
    const { width: w, height: h } = this.canvas;
    if (![x0, y0, x1, y1].every(Number.isFinite) || x1 - x0 < 2 || y1 - y0 < 2 || x1 <= 0 || y1 <= 0 || x0 >= w || y0 >= h) {
      return false;
    }
    const fx0 = Math.max(0, Math.floor(x0)), fy0 = Math.max(0, Math.floor(y0));
    const fx1 = Math.min(w, Math.ceil(x1)), fy1 = Math.min(h, Math.ceil(y1));
    const ww = fx1 - fx0, wh = fy1 - fy0;
    if (ww < 2 || wh < 2) return false;
    const patch = canvas(ww, wh);
    const pctx = patch.getContext("2d", { willReadFrequently: true });
    pctx.imageSmoothingQuality = "high";
    pctx.drawImage(mouth, x0 - fx0, y0 - fy0, x1 - x0, y1 - y0);
    const alpha = canvas(ww, wh);
    const actx = alpha.getContext("2d", { willReadFrequently: true });
    actx.drawImage(this.mask(mouth.width), x0 - fx0, y0 - fy0, x1 - x0, y1 - y0);
    const a = actx.getImageData(0, 0, ww, wh).data;
    const p = pctx.getImageData(0, 0, ww, wh);
    const under = this.ctx.getImageData(fx0, fy0, ww, wh).data;
    // colour match on the rim
    const sumP = [0, 0, 0], sumF = [0, 0, 0];
    let rim = 0;
    for (let i = 0; i < a.length; i += 4) {
      const v = a[i + 3];
      if (v < RIM_LOW || v > RIM_HIGH) continue;
      rim += 1;
      for (let c = 0; c < 3; c += 1) { sumP[c] += p.data[i + c]; sumF[c] += under[i + c]; }
    }
    if (rim > MIN_RIM_PIXELS) {
      const gain = sumF.map((f, c) => Math.min(1 + MAX_GAIN_CHANGE, Math.max(1 - MAX_GAIN_CHANGE, (f / rim + 1) / (sumP[c] / rim + 1))));
      if (gain.some((g) => Math.abs(g - 1) > GAIN_DEADBAND)) {
        for (let i = 0; i < p.data.length; i += 4) {
          for (let c = 0; c < 3; c += 1) p.data[i + c] = p.data[i + c] * gain[c];
        }
      }
    }
    pctx.putImageData(p, 0, 0);
    // the feathered alpha: keep the patch only where the mask is, then lay it over the frame
    pctx.globalCompositeOperation = "destination-in";
    pctx.drawImage(alpha, 0, 0);
    this.ctx.drawImage(patch, fx0, fy0);
    return true;
  }
}
