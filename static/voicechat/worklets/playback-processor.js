// Assistant audio playback in the audio thread. PCM16 deltas at 24 kHz arrive by message, are
// resampled once to the context's native rate and written to a preallocated ring buffer;
// process() only copies from the ring, so deltas play back to back with no gaps.
// A jitter prefill (default 200 ms) is held before playback starts, and again after an underrun.
// The processor counts the frames actually played per assistant item, which is what barge-in
// must report to the server (`conversation.item.truncate` audio_end_ms).
import { SincResampler } from "./sinc-resampler.js";

const IN_RATE = 24000;
const MAX_ITEMS = 64;

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions ?? {};
    this.prefillFrames = Math.round(((opts.prefillMs ?? 200) * sampleRate) / 1000);
    // 60 s of audio; replies arrive faster than real time, and the ring grows if ever needed.
    this.ring = new Float32Array(sampleRate * 60);
    this.readAt = 0; // absolute frame counters; the ring index is counter % ring.length
    this.writeAt = 0;
    this.resampler = new SincResampler(IN_RATE, sampleRate, 4800);
    this.floats = new Float32Array(4800);
    this.resampled = new Float32Array(this.resampler.maxOutput(4800) + this.resampler.taps);
    this.items = []; // {id, start, end} in absolute frames, oldest first
    this.state = "idle"; // idle -> prefill -> playing -> (drained) idle
    this.ended = true; // the current response has no more audio coming
    this.underruns = 0;
    this.playedFrames = 0;
    this.quantaPerReport = Math.max(1, Math.round(sampleRate / 128 / 30)); // ~30 Hz
    this.quanta = 0;
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(message) {
    switch (message.type) {
      case "push":
        this.push(message.itemId, new Int16Array(message.pcm));
        break;
      case "end":
        this.write(this.resampled, this.resampler.flush(this.resampled));
        this.ended = true;
        break;
      case "clear":
        this.clear();
        break;
    }
  }

  push(itemId, pcm) {
    const last = this.items[this.items.length - 1];
    if (!last || last.id !== itemId) {
      this.items.push({ id: itemId, start: this.writeAt, end: this.writeAt });
      if (this.items.length > MAX_ITEMS) this.items.shift();
    }
    this.ended = false;
    if (this.state === "idle") this.state = "prefill";
    for (let offset = 0; offset < pcm.length; offset += this.floats.length) {
      const n = Math.min(this.floats.length, pcm.length - offset);
      for (let i = 0; i < n; i++) this.floats[i] = pcm[offset + i] / 0x8000;
      this.write(this.resampled, this.resampler.push(this.floats, n, this.resampled));
    }
  }

  write(frames, count) {
    if (count === 0) return;
    const buffered = this.writeAt - this.readAt;
    if (buffered + count > this.ring.length) this.growRing(buffered + count);
    const ring = this.ring;
    for (let i = 0; i < count; i++) ring[(this.writeAt + i) % ring.length] = frames[i];
    this.writeAt += count;
    const last = this.items[this.items.length - 1];
    if (last) last.end = this.writeAt;
  }

  growRing(needed) {
    const bigger = new Float32Array(Math.max(needed, this.ring.length * 2));
    for (let at = this.readAt; at < this.writeAt; at++) {
      bigger[at % bigger.length] = this.ring[at % this.ring.length];
    }
    this.ring = bigger;
  }

  /** The item being heard and how many milliseconds of it have played. */
  current() {
    for (let i = this.items.length - 1; i >= 0; i--) {
      const item = this.items[i];
      if (item.start <= this.readAt) {
        const frames = Math.min(this.readAt, item.end) - item.start;
        return { itemId: item.id, playedMs: (frames * 1000) / sampleRate };
      }
    }
    return { itemId: null, playedMs: 0 };
  }

  clear() {
    const heard = this.current();
    const droppedMs = ((this.writeAt - this.readAt) * 1000) / sampleRate;
    this.readAt = this.writeAt; // drop everything not yet played, from the next quantum on
    this.resampler.reset();
    this.items.length = 0;
    this.state = "idle";
    this.ended = true;
    this.port.postMessage({ type: "cleared", droppedMs, ...heard });
    this.report();
  }

  process(_inputs, outputs) {
    const output = outputs[0];
    const channel = output[0];
    const frames = channel.length;
    const buffered = this.writeAt - this.readAt;
    if (this.state === "prefill" && (buffered >= this.prefillFrames || (this.ended && buffered > 0))) {
      this.state = "playing";
      this.port.postMessage({ type: "started", itemId: this.current().itemId });
    }
    if (this.state === "playing") {
      const n = Math.min(frames, buffered);
      const ring = this.ring;
      for (let i = 0; i < n; i++) channel[i] = ring[(this.readAt + i) % ring.length];
      channel.fill(0, n);
      this.readAt += n;
      this.playedFrames += n;
      if (n < frames) {
        if (this.ended) {
          this.state = "idle";
          this.port.postMessage({ type: "drained", ...this.current() });
        } else {
          // Ran dry mid-reply: count it and rebuffer rather than stutter.
          this.underruns += 1;
          this.state = "prefill";
        }
      }
    } else {
      channel.fill(0);
    }
    for (let c = 1; c < output.length; c++) output[c].set(channel);
    if (++this.quanta >= this.quantaPerReport) {
      this.quanta = 0;
      this.report();
    }
    return true;
  }

  report() {
    const { itemId, playedMs } = this.current();
    this.port.postMessage({
      type: "progress",
      itemId,
      itemPlayedMs: playedMs,
      playedMs: (this.playedFrames * 1000) / sampleRate,
      bufferedMs: ((this.writeAt - this.readAt) * 1000) / sampleRate,
      underruns: this.underruns,
      playing: this.state === "playing",
    });
  }
}

registerProcessor("playback-processor", PlaybackProcessor);
