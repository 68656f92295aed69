// Microphone capture in the audio thread: mix to mono, resample from the device's native rate
// to 24 kHz, convert to PCM16 and post one transferable chunk every `chunkMs` (default 40 ms).
// Nothing here allocates per render quantum; one Int16Array is allocated per chunk because it
// is transferred (moved) to the main thread.
import { SincResampler } from "./sinc-resampler.js";

const OUT_RATE = 24000;
const QUANTUM = 128;

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const chunkMs = options.processorOptions?.chunkMs ?? 40;
    this.chunkFrames = Math.round((OUT_RATE * chunkMs) / 1000);
    this.resampler = new SincResampler(sampleRate, OUT_RATE, QUANTUM);
    this.mono = new Float32Array(QUANTUM);
    this.resampled = new Float32Array(this.resampler.maxOutput(QUANTUM) + this.resampler.taps);
    this.chunk = new Int16Array(this.chunkFrames);
    this.filled = 0;
    this.port.onmessage = (event) => {
      // The main thread asks for the partial chunk at the end of a push-to-talk turn, so the
      // last syllable is committed with the turn rather than left in the worklet.
      if (event.data?.type === "flush") {
        const n = this.resampler.flush(this.resampled);
        this.append(this.resampled, n);
        this.post(true);
      }
    };
  }

  process(inputs) {
    const input = inputs[0];
    if (input && input.length > 0) {
      const frames = input[0].length;
      if (frames > this.mono.length) this.grow(frames);
      if (input.length === 1) {
        this.mono.set(input[0]);
      } else {
        const gain = 1 / input.length;
        for (let i = 0; i < frames; i++) {
          let sum = 0;
          for (let c = 0; c < input.length; c++) sum += input[c][i];
          this.mono[i] = sum * gain;
        }
      }
      const n = this.resampler.push(this.mono, frames, this.resampled);
      this.append(this.resampled, n);
    }
    return true; // keep running even while the track is muted or between devices
  }

  grow(frames) {
    // Render quanta are 128 frames today; a configurable size may come (Web Audio v2).
    this.mono = new Float32Array(frames);
    this.resampler = new SincResampler(sampleRate, OUT_RATE, frames);
    this.resampled = new Float32Array(this.resampler.maxOutput(frames) + this.resampler.taps);
  }

  append(samples, count) {
    for (let i = 0; i < count; i++) {
      const s = Math.max(-1, Math.min(1, samples[i]));
      this.chunk[this.filled++] = s < 0 ? s * 0x8000 : s * 0x7fff;
      if (this.filled === this.chunkFrames) this.post(false);
    }
  }

  post(final) {
    if (this.filled === 0 && !final) return;
    const pcm = this.filled === this.chunkFrames ? this.chunk : this.chunk.slice(0, this.filled);
    this.port.postMessage({ type: "chunk", pcm: pcm.buffer, final }, [pcm.buffer]);
    this.chunk = new Int16Array(this.chunkFrames);
    this.filled = 0;
  }
}

registerProcessor("capture-processor", CaptureProcessor);
