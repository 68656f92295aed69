// The page's audio for one conversation: the AudioContext with both worklets, the Player for the
// replies, the Recorder for the microphone, and the two Waveforms drawn from their analysers.
// Over WebRTC the reply comes as a remote stream instead: an <audio> element plays it (so the
// browser's echo canceller hears it) and an AnalyserNode on it draws the assistant's waveform.
// Player and Recorder are made anew for every conversation, so their events are announced again
// from this one object ("chunk", "progress", "started", "drained", "microphone-lost"); what goes
// wrong is a "warning" with a sentence to show, and "change" asks for the controls to be redrawn.
import { gettext, interpolate } from "./i18n.js";
import { Player } from "./player.js";
import { Recorder } from "./recorder.js";
import { Waveform } from "./waveform.js";

export class AudioGraph extends EventTarget {
  /**
   * @param {{capture: string, playback: string}} worklets the worklets' static URLs
   * @param {HTMLCanvasElement} micCanvas @param {HTMLCanvasElement} assistantCanvas
   * @param {HTMLAudioElement} replyAudio plays a call's remote stream
   */
  constructor(worklets, micCanvas, assistantCanvas, replyAudio) {
    super();
    this.worklets = worklets;
    this.replyAudio = replyAudio;
    this.remoteStream = null; // a call's reply, while there is one
    this.remoteSource = null;
    this.remoteAnalyser = null;
    this.micWave = new Waveform(micCanvas);
    this.assistantWave = new Waveform(assistantCanvas);
    this.context = null;
    this.recorder = null;
    this.player = null;
  }

  async start() {
    if (this.context) return;
    if (!window.AudioContext || !window.AudioWorkletNode) {
      this.warn(gettext("This browser can't record or play audio here. You can still type."));
      return;
    }
    // No sampleRate: the device's native rate, so the microphone stream connects everywhere
    // (Firefox refuses to connect a stream to a context running at another rate).
    const context = new AudioContext({ latencyHint: "interactive" });
    this.context = context;
    try {
      await Promise.all([
        context.audioWorklet.addModule(this.worklets.capture),
        context.audioWorklet.addModule(this.worklets.playback),
      ]);
    } catch (error) {
      // Closing the context (the session ended meanwhile) also fails the load: not news.
      if (this.context === context) {
        this.warn(
          interpolate(gettext("Audio couldn't start (%(error)s). You can still type."), {
            error: error.message,
          }),
        );
      }
      return;
    }
    if (this.context !== context) return; // stopped meanwhile
    this.player = new Player(context, { prefillMs: 200 });
    this.player.start();
    for (const type of ["progress", "started", "drained"]) {
      this.player.addEventListener(type, () => this.dispatchEvent(new Event(type)));
    }
    this.attachAssistant();
    context.resume();
    await this.startMicrophone();
  }

  async startMicrophone() {
    const context = this.context;
    const recorder = new Recorder(context, { chunkMs: 40 });
    try {
      await recorder.start();
    } catch (error) {
      // The session ended while the microphone was opening (its context is closed, so the
      // recorder's node can't be made): the reason it ended is the news, not this.
      if (this.context !== context) return;
      this.warn(error.message);
      this.micWave.attach(null);
      this.changed();
      return;
    }
    if (!this.context) {
      recorder.stop(); // stopped while the permission prompt was open
      return;
    }
    this.recorder = recorder;
    recorder.addEventListener("chunk", (event) =>
      this.dispatchEvent(new CustomEvent("chunk", { detail: event.detail })),
    );
    recorder.addEventListener("ended", () => this.onMicrophoneLost());
    this.micWave.attach(recorder.analyser);
    this.changed();
  }

  onMicrophoneLost() {
    this.recorder?.stop();
    this.recorder = null;
    this.micWave.attach(null);
    this.dispatchEvent(new Event("microphone-lost"));
    this.warn(
      gettext(
        "The microphone was disconnected. Plug it back in and start a new conversation — you can keep typing meanwhile.",
      ),
    );
    this.changed();
  }

  /** The microphone's track, once it is open (a call sends it). */
  get microphoneTrack() {
    return this.recorder?.stream?.getAudioTracks()[0] ?? null;
  }

  /** Play a call's reply stream (null: replies play through the Player again). */
  playRemote(stream) {
    if (stream === this.remoteStream) return;
    this.remoteStream = stream;
    this.replyAudio.srcObject = stream;
    if (stream) this.replyAudio.play().catch(() => {}); // autoplay: the Start click allows it
    this.attachAssistant();
  }

  /** The assistant's waveform: the call's remote stream if there is one, else the Player. */
  attachAssistant() {
    this.remoteSource?.disconnect();
    this.remoteSource = this.remoteAnalyser = null;
    if (this.remoteStream && this.context) {
      // Not connected to the speakers: the <audio> element plays it, this only listens.
      this.remoteSource = this.context.createMediaStreamSource(this.remoteStream);
      this.remoteAnalyser = this.context.createAnalyser();
      this.remoteAnalyser.fftSize = 2048;
      this.remoteAnalyser.smoothingTimeConstant = 0.6;
      this.remoteSource.connect(this.remoteAnalyser);
    }
    this.assistantWave.attach(this.remoteAnalyser ?? this.player?.analyser ?? null);
  }

  /** Release the microphone, the player and the context. */
  stop() {
    this.playRemote(null);
    this.recorder?.stop();
    this.player?.stop();
    this.context?.close();
    this.recorder = this.player = this.context = null;
    this.micWave.attach(null);
    this.assistantWave.attach(null);
  }

  /** Brighten each waveform while its side is the one talking. */
  showActivity({ microphone, assistant }) {
    this.micWave.active = microphone;
    this.assistantWave.active = assistant;
  }

  warn(message) {
    this.dispatchEvent(new CustomEvent("warning", { detail: message }));
  }

  changed() {
    this.dispatchEvent(new Event("change"));
  }
}
