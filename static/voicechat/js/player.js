// Assistant audio: the playback worklet (ring buffer, jitter prefill, 24 kHz -> native rate)
// and an AnalyserNode for the waveform. Knows how much of each assistant item was received and
// how much was actually played, which is what a barge-in truncate must report.
import { pcm16Ms } from "./pcm.js";

export class Player extends EventTarget {
  /** @param {AudioContext} context @param {{prefillMs?: number}} options */
  constructor(context, { prefillMs = 200 } = {}) {
    super();
    this.context = context;
    this.prefillMs = prefillMs;
    this.node = null;
    this.analyser = null;
    this.receivedMs = new Map(); // item id -> ms of audio received
    this.dropped = new Set(); // items cut off by an interruption: later deltas are ignored
    this.playedMs = 0;
    this.underruns = 0;
    this.bufferedMs = 0;
    this.playing = false;
    this.pending = null; // resolve of the interrupt() in flight
  }

  start() {
    this.node = new AudioWorkletNode(this.context, "playback-processor", {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { prefillMs: this.prefillMs },
    });
    this.analyser = this.context.createAnalyser();
    this.analyser.fftSize = 2048;
    this.analyser.smoothingTimeConstant = 0.6;
    this.node.port.onmessage = (event) => this.onMessage(event.data);
    this.node.connect(this.analyser);
    this.analyser.connect(this.context.destination);
  }

  onMessage(message) {
    switch (message.type) {
      case "progress":
        this.playedMs = message.playedMs;
        this.underruns = message.underruns;
        this.bufferedMs = message.bufferedMs;
        this.playing = message.playing;
        this.dispatchEvent(new CustomEvent("progress", { detail: message }));
        break;
      case "started":
        this.playing = true;
        this.dispatchEvent(new CustomEvent("started", { detail: message }));
        break;
      case "drained":
        this.playing = false;
        this.dispatchEvent(new CustomEvent("drained", { detail: message }));
        break;
      case "cleared":
        this.playing = false;
        this.pending?.(message);
        this.pending = null;
        break;
    }
  }

  /** Queue one response.output_audio.delta (PCM16 24 kHz); returns its duration in ms. */
  enqueue(itemId, pcm) {
    if (!this.node || this.dropped.has(itemId)) return 0;
    const ms = pcm16Ms(pcm.byteLength);
    this.receivedMs.set(itemId, (this.receivedMs.get(itemId) ?? 0) + ms);
    this.node.port.postMessage({ type: "push", itemId, pcm }, [pcm]);
    return ms;
  }

  /** The response's audio is complete: play out what is left even if below the prefill. */
  end() {
    this.node?.port.postMessage({ type: "end" });
  }

  /** True while assistant audio is playing or waiting in the buffer. */
  get busy() {
    return this.playing || this.bufferedMs > 0;
  }

  /**
   * Stop playback at once and forget queued audio. Resolves to {itemId, audioEndMs}: the item
   * being heard and the whole milliseconds of it actually played (never more than received).
   */
  interrupt() {
    if (!this.node) return Promise.resolve({ itemId: null, audioEndMs: 0 });
    return new Promise((resolve) => {
      this.pending = (message) => {
        const { itemId } = message;
        if (itemId) this.dropped.add(itemId);
        const received = this.receivedMs.get(itemId) ?? 0;
        const audioEndMs = Math.max(0, Math.floor(Math.min(message.playedMs, received)));
        this.bufferedMs = 0;
        resolve({ itemId, audioEndMs, receivedMs: received, droppedMs: message.droppedMs ?? 0 });
      };
      this.node.port.postMessage({ type: "clear" });
    });
  }

  /** Let a dropped item's id be reused (a new response never reuses one, but be safe). */
  forget(itemId) {
    this.dropped.delete(itemId);
    this.receivedMs.delete(itemId);
  }

  stop() {
    this.node?.disconnect();
    this.analyser?.disconnect();
    if (this.node) this.node.port.onmessage = null;
    this.pending?.({ itemId: null, playedMs: 0 });
    this.node = this.analyser = this.pending = null;
  }
}
