// The microphone: getUserMedia into the capture worklet (PCM16, 24 kHz, 40 ms chunks) and an
// AnalyserNode for the level/waveform. Runs in the page's one AudioContext at the device's
// native rate; the worklet resamples (Firefox cannot connect a stream to a context of another rate).
import { gettext } from "./i18n.js";
import { describeMicrophoneError, MicrophoneError } from "./microphone-error.js";

export class Recorder extends EventTarget {
  /** @param {AudioContext} context @param {{chunkMs?: number}} options */
  constructor(context, { chunkMs = 40 } = {}) {
    super();
    this.context = context;
    this.chunkMs = chunkMs;
    this.stream = null;
    this.source = null;
    this.node = null;
    this.analyser = null;
    this.flushWaiters = [];
  }

  /** Open the microphone; rejects with a MicrophoneError whose message can be shown as is. */
  async start() {
    if (!navigator.mediaDevices?.getUserMedia) {
      throw new MicrophoneError(
        "insecure",
        gettext(
          "This browser only allows the microphone on a secure (https) page. You can type your messages below.",
        ),
      );
    }
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: {
          echoCancellation: true,
          noiseSuppression: true,
          autoGainControl: true,
          channelCount: 1,
        },
      });
    } catch (error) {
      throw describeMicrophoneError(error);
    }
    const [track] = this.stream.getAudioTracks();
    // Unplugging the device ends the track; the app turns that into a message.
    track.addEventListener("ended", () => this.dispatchEvent(new Event("ended")));

    this.source = this.context.createMediaStreamSource(this.stream);
    this.analyser = this.context.createAnalyser();
    this.analyser.fftSize = 2048;
    this.analyser.smoothingTimeConstant = 0.6;
    this.node = new AudioWorkletNode(this.context, "capture-processor", {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      channelCount: 1,
      channelCountMode: "explicit",
      processorOptions: { chunkMs: this.chunkMs },
    });
    this.node.port.onmessage = (event) => this.onChunk(event.data);
    this.source.connect(this.analyser);
    this.source.connect(this.node);
    // The worklet writes silence; connecting it keeps it pulled by the graph in every browser.
    this.node.connect(this.context.destination);
    return track.label;
  }

  onChunk(message) {
    if (message.type !== "chunk") return;
    this.dispatchEvent(new CustomEvent("chunk", { detail: message }));
    if (message.final) {
      const waiters = this.flushWaiters;
      this.flushWaiters = [];
      for (const resolve of waiters) resolve();
    }
  }

  /** Bring out the partial chunk held in the worklet; resolves once it has been dispatched. */
  flush() {
    if (!this.node) return Promise.resolve();
    return new Promise((resolve) => {
      this.flushWaiters.push(resolve);
      this.node.port.postMessage({ type: "flush" });
    });
  }

  get active() {
    return Boolean(this.stream?.getAudioTracks().some((t) => t.readyState === "live"));
  }

  /** Release the microphone (the browser's recording indicator goes off) and the nodes. */
  stop() {
    for (const track of this.stream?.getTracks() ?? []) track.stop();
    this.source?.disconnect();
    this.node?.disconnect();
    if (this.node) this.node.port.onmessage = null;
    for (const resolve of this.flushWaiters) resolve();
    this.flushWaiters = [];
    this.stream = this.source = this.node = this.analyser = null;
  }
}
