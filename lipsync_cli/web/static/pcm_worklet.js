// AudioWorklet: microphone samples -> 10 ms blocks of mono PCM16 posted to the page, each with the
// AudioContext frame of its first sample (the session clock). Nothing is posted until the page
// sends "start"; never blocks, never allocates more than one block at a time.
const BLOCK_S = 0.01;

class PcmCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.running = false;
    this.blockLength = Math.round(sampleRate * BLOCK_S);
    this.block = new Int16Array(this.blockLength);
    this.filled = 0;
    this.blockStartFrame = 0;
    this.port.onmessage = (e) => { this.running = e.data === "start"; this.filled = 0; };
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!this.running || !channel) return true;
    for (let i = 0; i < channel.length; i += 1) {
      if (this.filled === 0) this.blockStartFrame = currentFrame + i;
      const v = Math.max(-1, Math.min(1, channel[i]));
      this.block[this.filled] = Math.round(v * 32767);
      this.filled += 1;
      if (this.filled === this.blockLength) {
        this.port.postMessage({ pcm: this.block.buffer, firstFrame: this.blockStartFrame }, [this.block.buffer]);
        this.block = new Int16Array(this.blockLength); // the last one was transferred (detached)
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("pcm-capture", PcmCapture);
