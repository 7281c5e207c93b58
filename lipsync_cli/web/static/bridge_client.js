// The page's side of the WebSocket bridge (lipsync_cli/web/bridge.py documents the protocol):
// a start message, then PCM16 chunks; each frame comes back as [uint32 BE n][n bytes JSON][JPEG].

export const BRIDGE_PATH = "/ws/lipsync";

export function parseFrameMessage(buffer) {
  const n = new DataView(buffer).getUint32(0, false);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, n)));
  return { header, jpeg: new Uint8Array(buffer, 4 + n) };
}

export class BridgeClient {
  // onFrame({header, jpeg}) for each frame; onClose({code, reason}) once.
  constructor({ onFrame, onClose }) {
    this.onFrame = onFrame;
    this.onClose = onClose;
    this.ws = null;
  }

  // Resolves to the server's "ready" facts (fps, n_frames, width, height, ...).
  open(start) {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}${BRIDGE_PATH}`);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    return new Promise((resolve, reject) => {
      ws.onopen = () => ws.send(JSON.stringify(start));
      ws.onmessage = (e) => {
        if (typeof e.data === "string") {
          const msg = JSON.parse(e.data);
          if (msg.type === "ready") resolve(msg);
          return;
        }
        this.onFrame(parseFrameMessage(e.data));
      };
      ws.onclose = (e) => {
        reject(new Error(`the lip-sync stream closed (${e.code}: ${e.reason || "no reason"})`));
        this.onClose({ code: e.code, reason: e.reason });
      };
    });
  }

  sendAudio(pcm) {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(pcm);
  }

  end() {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: "end" }));
  }

  close() {
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, "the page stopped");
    this.ws = null;
  }
}
