// The chat page: wires the gateway client, microphone, player, waveforms and transcript to the
// DOM. Configuration comes from the #chat-config json_script element, never templated JS.
import { EventLog } from "./event-log.js";
import { gettext, interpolate, speaksEnglish } from "./i18n.js";
import { fromBase64, pcm16Ms } from "./pcm.js";
import { Player } from "./player.js";
import { RealtimeClient } from "./realtime-client.js";
import { Reconnect } from "./reconnect.js";
import { Recorder } from "./recorder.js";
import { Transcript } from "./transcript.js";
import { Waveform } from "./waveform.js";

// The gateway sends an `error` event with a readable message before closing with one of these
// (voicechat/protocol.py CloseCode).
const CLOSE_MESSAGES = {
  1001: gettext("The server is restarting."),
  1006: gettext("The connection to the server was lost."),
  1011: gettext("The server hit an unexpected problem."),
  4001: gettext("The AI service couldn't be reached. Please try again in a moment."),
  4002: gettext("The AI service refused the connection."),
  4003: gettext("The AI service ended the conversation."),
  4004: gettext("The AI service reported a problem it can't recover from."),
  4005: gettext("This conversation reached its time limit. Start a new one to keep talking."),
  4006: gettext("An administrator ended this conversation."),
  4007: gettext("The server is restarting."),
  4008: gettext("This conversation reached its time limit. Start a new one to keep talking."),
  4010: gettext("Voice chat isn't set up on this server yet."),
  4011: gettext("This server doesn't allow that model."),
  4012: gettext(
    "You already have as many conversations open as allowed. End one to start another.",
  ),
  4020: gettext("The usage budget for voice chat has been reached."),
  4029: gettext("Too many new conversations in the last minute. Wait a moment and try again."),
  4401: gettext("You were signed out, or your access was withdrawn. Sign in again to go on."),
  4404: gettext("That conversation can't be continued here: it isn't one of yours."),
  4500: gettext("The server hit an unexpected problem."),
};
// The status line's short "why" next to "Ended"; the alert carries the full sentence.
const CLOSE_REASONS = {
  1001: gettext("the server restarted"),
  1006: gettext("connection lost"),
  1011: gettext("server error"),
  4001: gettext("AI service unreachable"),
  4002: gettext("the AI service refused"),
  4003: gettext("the AI service hung up"),
  4004: gettext("AI service error"),
  4005: gettext("time limit reached"),
  4006: gettext("ended by an administrator"),
  4007: gettext("the server restarted"),
  4008: gettext("time limit reached"),
  4010: gettext("not set up on this server"),
  4011: gettext("model not allowed"),
  4012: gettext("too many conversations"),
  4020: gettext("budget reached"),
  4029: gettext("too many new conversations"),
  4401: gettext("access withdrawn"),
  4404: gettext("not your conversation"),
  4500: gettext("server error"),
};
// Worth trying again: the network, the server or the provider blinked. Not: refusals, quotas,
// time limits, an administrator's hang-up. A socket that never opened is retried too, unless
// the user turns out to be signed out (checkSignedIn).
const RETRY_CODES = new Set([1001, 1006, 1011, 1012, 1013, 4001, 4003, 4007]);
// Harmless races (cancelling a reply that just finished); logged, never shown.
const QUIET_ERRORS = new Set(["response_cancel_not_active", "input_audio_buffer_commit_empty"]);
// A press shorter than this is a tap (a slip, a test of the button): it is ignored, and it
// stops nothing. A real turn is longer, and the service rejects commits under 100 ms of audio.
const MIN_PTT_HOLD_MS = 300;

const STATUS_TEXT = {
  idle: gettext("Not connected"),
  connecting: gettext("Connecting…"),
  listening: gettext("Listening"),
  "user-speaking": gettext("You're speaking"),
  thinking: gettext("Thinking…"),
  "assistant-speaking": gettext("Speaking"),
  reconnecting: gettext("Reconnecting…"),
  ended: gettext("Ended"),
};

export class VoiceChatApp {
  /** @param {HTMLElement} root @param {object} config from json_script */
  constructor(root, config) {
    this.root = root;
    this.config = config;
    const $ = (id) => root.querySelector(`[data-testid="${id}"]`);
    this.el = {
      connect: $("connect"),
      disconnect: $("disconnect"),
      stop: $("stop"),
      status: $("status"),
      statusText: $("status").querySelector(".status-text"),
      alert: $("alert"),
      alertText: $("alert").querySelector(".alert-text"),
      ptt: $("push-to-talk"),
      voice: $("voice"),
      composer: $("composer"),
      input: $("text-input"),
      send: $("send"),
      modes: root.querySelectorAll('input[name="mode"]'),
      userWave: root.querySelector('[data-wave="user"]'),
      assistantWave: root.querySelector('[data-wave="assistant"]'),
    };
    this.stats = {
      chunksSent: 0,
      audioMsSent: 0,
      audioMsReceived: 0,
      audioMsPlayed: 0,
      underruns: 0,
      lastLatencyMs: null, // end of the user's turn -> the reply starts playing
      lastPrefillWaitMs: null, // the reply's first audio on the socket -> it starts playing
    };
    this.transcript = new Transcript(
      $("transcript"),
      $("transcript-scroll"),
      root.querySelector("[data-transcript-empty]"),
    );
    this.log = new EventLog($("event-log"));
    this.micWave = new Waveform($("mic-waveform"));
    this.assistantWave = new Waveform($("assistant-waveform"));

    this.client = null;
    this.context = null;
    this.recorder = null;
    this.player = null;
    this.wanted = false; // the user wants to be connected (drives reconnects)
    this.reconnect = new Reconnect($("reconnect"), $("reconnect-countdown"), $("retry-now"));
    this.reconnect.addEventListener("retry", () => this.retryNow());
    this.reconnectNotice = null; // the transcript's "reconnecting…" line, removed once back
    this.sessionReady = false;
    this.sessionVoice = null;
    this.voiceLocked = false; // the service fixes the voice once it has spoken
    this.serverTurnDetection = null;
    this.responseActive = false;
    this.audioItemId = null; // assistant item whose audio is still streaming in
    this.turnEndedAt = null; // when the user's turn ended, for lastLatencyMs
    this.replyAudioAt = null; // when a reply's first audio arrived, for lastPrefillWaitMs
    this.pttHeld = false;
    this.pttFlushing = false;
    this.pttPressedAt = 0;
    this.pttHoldTimer = 0; // turns a press into a turn (and a barge-in) after MIN_PTT_HOLD_MS
    this.alertTimer = 0;
    this.status = "idle";

    this.mode = localStorage.getItem("voicechat.mode") === "push-to-talk" ? "push-to-talk" : "hands-free";
    const savedVoice = localStorage.getItem("voicechat.voice");
    this.voice = config.voices.includes(savedVoice) ? savedVoice : config.voice;
    this.fillVoices();
    this.bindUi();
    this.applyMode();
    this.setStatus("idle");
  }

  // ---- UI wiring -------------------------------------------------------------------------

  fillVoices() {
    // The offline engine says which of its own voices stands in for each name.
    const descriptions = this.config.voiceDescriptions ?? {};
    for (const voice of this.config.voices) {
      const option = document.createElement("option");
      const name = voice[0].toUpperCase() + voice.slice(1);
      option.value = voice;
      option.textContent = descriptions[voice] ? `${name} — ${descriptions[voice]}` : name;
      this.el.voice.append(option);
    }
    if (!this.config.voices.includes(this.voice)) this.voice = this.config.voices[0];
    this.el.voice.value = this.voice;
  }

  bindUi() {
    const { el } = this;
    el.connect.addEventListener("click", () => this.connect());
    el.disconnect.addEventListener("click", () => this.disconnect());
    el.stop.addEventListener("click", () => this.stopReply());
    el.alert.querySelector(".alert-close").addEventListener("click", () => this.hideAlert());
    el.composer.addEventListener("submit", (event) => {
      event.preventDefault();
      this.sendText();
    });
    el.voice.addEventListener("change", () => this.changeVoice(el.voice.value));
    for (const radio of el.modes) {
      radio.checked = radio.value === this.mode;
      radio.addEventListener("change", () => radio.checked && this.changeMode(radio.value));
    }
    el.ptt.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      el.ptt.setPointerCapture(event.pointerId);
      this.pttDown();
    });
    for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
      el.ptt.addEventListener(type, () => this.pttUp());
    }
    el.ptt.addEventListener("contextmenu", (event) => event.preventDefault()); // long-press on phones
    document.addEventListener("keydown", (event) => {
      if (!this.isSpaceForTalking(event)) return;
      event.preventDefault();
      if (!event.repeat) this.pttDown();
    });
    document.addEventListener("keyup", (event) => {
      if (event.code === "Space" && this.pttHeld) {
        event.preventDefault();
        this.pttUp();
      }
    });
    window.addEventListener("blur", () => this.pttUp());
    window.addEventListener("pagehide", () => this.disconnect());
  }

  /** Space talks in push-to-talk mode, unless the user is typing or on another control. */
  isSpaceForTalking(event) {
    if (event.code !== "Space" || this.mode !== "push-to-talk") return false;
    if (event.ctrlKey || event.metaKey || event.altKey) return false;
    const target = event.target;
    if (target === this.el.ptt || target === document.body || target === document.documentElement) {
      return true;
    }
    return !target.closest("input, textarea, select, button, a, summary, [contenteditable]");
  }

  setStatus(state, detail = "") {
    this.status = state;
    let text = STATUS_TEXT[state];
    if (state === "listening" && !this.recorder?.active) {
      text = gettext("Connected — type a message");
    } else if (state === "listening" && this.mode === "push-to-talk") {
      text = gettext("Ready — hold to talk");
    }
    if (detail) text = state === "reconnecting" ? detail : `${text} · ${detail}`;
    this.el.status.dataset.state = state;
    this.el.statusText.textContent = text;
    this.refreshControls();
  }

  /** The resting state once a turn is over. */
  settle() {
    if (this.sessionReady && !this.pttHeld) this.setStatus("listening");
  }

  refreshControls() {
    const { el } = this;
    const live = this.wanted;
    el.connect.hidden = live;
    el.disconnect.hidden = !live;
    el.connect.disabled = false;
    el.stop.disabled = !(this.responseActive || this.player?.busy || this.audioItemId);
    el.input.disabled = !this.sessionReady;
    el.send.disabled = !this.sessionReady;
    el.input.placeholder = this.sessionReady
      ? gettext("Type a message…")
      : gettext("Type here once connected");
    el.ptt.disabled = !(this.sessionReady && this.recorder?.active);
    this.micWave.active =
      Boolean(this.recorder?.active) && (this.mode === "hands-free" ? live : this.pttHeld);
    this.assistantWave.active = this.status === "assistant-speaking";
    el.userWave.classList.toggle("is-active", this.status === "user-speaking");
    el.assistantWave.classList.toggle("is-active", this.status === "assistant-speaking");
  }

  showAlert(message, kind = "error", { transient = false, link = null } = {}) {
    clearTimeout(this.alertTimer);
    this.el.alert.dataset.kind = kind;
    this.el.alertText.textContent = message;
    if (link) {
      const anchor = document.createElement("a");
      anchor.href = link.href;
      anchor.textContent = link.text;
      this.el.alertText.append(" ", anchor);
    }
    this.el.alert.hidden = false;
    if (transient) this.alertTimer = setTimeout(() => this.hideAlert(), 6000);
  }

  hideAlert() {
    clearTimeout(this.alertTimer);
    this.el.alert.hidden = true;
  }

  // ---- connection ------------------------------------------------------------------------

  async connect() {
    if (this.wanted) return;
    this.wanted = true;
    this.reconnect.reset();
    this.hideAlert();
    this.setStatus("connecting");
    // The socket and the audio graph start together; the session takes longer than the audio.
    this.openSocket();
    await this.startAudio();
  }

  openSocket() {
    const url = new URL(this.config.realtimePath, window.location.href);
    url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("model", this.config.model);
    // The offline engine answers "what time is it?" in the user's own time zone.
    url.searchParams.set("tz", Intl.DateTimeFormat().resolvedOptions().timeZone || "");
    const resume = this.config.resume;
    if (resume) {
      // History's "Continue": the gateway replays that transcript to the assistant first.
      // Once only: a later conversation on this page starts afresh.
      url.searchParams.set("resume", String(resume.id));
      this.config.resume = null;
      const started = new Date(resume.started).toLocaleString(document.documentElement.lang, {
        dateStyle: "medium",
        timeStyle: "short",
      });
      this.transcript.notice(
        interpolate(gettext("Continuing your conversation of %(started)s"), { started }),
      );
    }
    const client = new RealtimeClient(url.href);
    this.client = client;
    client.addEventListener("server-event", (event) => this.onServerEvent(event.detail));
    client.addEventListener("client-event", (event) => this.log.add("out", event.detail));
    client.addEventListener("close", (event) => this.onClose(client, event.detail));
    client.connect();
  }

  async startAudio() {
    if (this.context) return;
    if (!window.AudioContext || !window.AudioWorkletNode) {
      this.showAlert(
        gettext("This browser can't record or play audio here. You can still type."),
        "warning",
      );
      return;
    }
    // No sampleRate: the device's native rate, so the microphone stream connects everywhere
    // (Firefox refuses to connect a stream to a context running at another rate).
    const context = new AudioContext({ latencyHint: "interactive" });
    this.context = context;
    try {
      await Promise.all([
        context.audioWorklet.addModule(this.config.worklets.capture),
        context.audioWorklet.addModule(this.config.worklets.playback),
      ]);
    } catch (error) {
      // Closing the context (the session ended meanwhile) also fails the load: not news.
      if (this.context === context) {
        this.showAlert(
          interpolate(gettext("Audio couldn't start (%(error)s). You can still type."), {
            error: error.message,
          }),
          "warning",
        );
      }
      return;
    }
    if (this.context !== context) return; // disconnected meanwhile
    this.player = new Player(context, { prefillMs: 200 });
    this.player.start();
    this.player.addEventListener("progress", () => this.onPlayerProgress());
    this.player.addEventListener("started", () => this.onPlaybackStarted());
    this.player.addEventListener("drained", () => this.onPlaybackDrained());
    this.assistantWave.attach(this.player.analyser);
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
      this.showAlert(error.message, "warning");
      this.micWave.attach(null);
      this.refreshControls();
      return;
    }
    if (!this.context) {
      recorder.stop(); // disconnected while the permission prompt was open
      return;
    }
    this.recorder = recorder;
    recorder.addEventListener("chunk", (event) => this.onChunk(event.detail));
    recorder.addEventListener("ended", () => this.onMicrophoneLost());
    this.micWave.attach(recorder.analyser);
    this.refreshControls();
  }

  onMicrophoneLost() {
    this.recorder?.stop();
    this.recorder = null;
    this.micWave.attach(null);
    this.pttHeld = false;
    this.showAlert(
      gettext(
        "The microphone was disconnected. Plug it back in and start a new conversation — you can keep typing meanwhile.",
      ),
      "warning",
    );
    this.refreshControls();
  }

  disconnect() {
    if (!this.wanted && !this.client) return;
    this.wanted = false;
    this.reconnect.stop();
    const client = this.client;
    this.endSession();
    this.stopAudio();
    this.setStatus("ended", gettext("you hung up"));
    client?.close(1000, "user ended the conversation");
  }

  /** Forget the session's state (the socket is closed or closing). */
  endSession() {
    this.client = null;
    this.sessionReady = false;
    this.responseActive = false;
    this.audioItemId = null;
    this.pttHeld = false;
    this.el.ptt.setAttribute("aria-pressed", "false");
    this.transcript.finishAll();
  }

  stopAudio() {
    this.recorder?.stop();
    this.player?.stop();
    this.context?.close();
    this.recorder = this.player = this.context = null;
    this.micWave.attach(null);
    this.assistantWave.attach(null);
  }

  async onClose(client, { code, wasOpen, error }) {
    if (client !== this.client) return; // an old socket we already left
    this.endSession();
    this.player?.interrupt();
    if (!this.wanted) return;
    // The gateway explains a close in English: a page in another language says it in its own.
    const serverWords = code >= 4000 && error?.message;
    const message =
      (speaksEnglish && serverWords) ||
      CLOSE_MESSAGES[code] ||
      serverWords ||
      (wasOpen
        ? gettext("The connection closed unexpectedly.")
        : gettext("Couldn't reach the server."));
    if (wasOpen ? RETRY_CODES.has(code) : true) {
      // A socket refused before it opened looks the same for a server that is down and for a
      // user who was signed out (the handshake is refused with no reason): ask the site.
      const signedIn = wasOpen ? "yes" : await this.checkSignedIn();
      if (!this.wanted || this.client) return; // hung up, or retried by hand, meanwhile
      if (signedIn === "no") {
        this.giveUp(
          gettext("signed out"),
          gettext("You were signed out, so the conversation can't continue."),
          { href: this.signInUrl(), text: gettext("Sign in again") },
        );
        return;
      }
      const why =
        signedIn === "unreachable"
          ? gettext("Couldn't reach the server. You're still signed in.")
          : wasOpen
            ? message
            : gettext("Couldn't connect to the voice service. You're still signed in.");
      this.scheduleRetry(why);
      return;
    }
    this.giveUp(CLOSE_REASONS[code] ?? gettext("connection closed"), message);
  }

  giveUp(reason, message, link = null) {
    this.wanted = false;
    this.reconnect.stop();
    this.stopAudio();
    this.setStatus("ended", reason);
    this.showAlert(message, "error", { link });
  }

  /** "yes", "no" (signed out) or "unreachable", from a HEAD of this (sign-in only) page. */
  async checkSignedIn() {
    try {
      const response = await fetch(window.location.href, {
        method: "HEAD",
        credentials: "same-origin",
        cache: "no-store",
        redirect: "manual", // signed out: a redirect to the sign-in page
      });
      if (response.type === "opaqueredirect" || response.status === 401 || response.status === 403) {
        return "no";
      }
      return response.ok ? "yes" : "unreachable";
    } catch {
      return "unreachable";
    }
  }

  signInUrl() {
    const next = encodeURIComponent(window.location.pathname);
    return `${this.root.dataset.loginUrl}?next=${next}`;
  }

  /** Wait (1, 2, 4, ... 30 s, with a countdown) and try again. */
  scheduleRetry(message) {
    if (!this.reconnectNotice) {
      this.reconnectNotice = this.transcript.notice(gettext("Connection lost — reconnecting…"));
    }
    this.hideAlert();
    this.reconnect.schedule(message);
    if (this.status !== "reconnecting") this.setStatus("reconnecting");
  }

  retryNow() {
    if (!this.wanted || this.client) return;
    this.setStatus("reconnecting");
    this.openSocket();
  }

  // ---- server events ---------------------------------------------------------------------

  onServerEvent(event) {
    this.log.add("in", event);
    switch (event.type) {
      case "session.created":
        this.onSessionCreated(event.session ?? {});
        break;
      case "session.updated": {
        const audio = event.session?.audio ?? {};
        this.sessionVoice = audio.output?.voice ?? this.sessionVoice;
        // Remember the server's own turn detection, to restore it when leaving push-to-talk.
        if (audio.input?.turn_detection) this.serverTurnDetection = audio.input.turn_detection;
        break;
      }
      case "input_audio_buffer.speech_started":
        this.onSpeechStarted();
        break;
      case "input_audio_buffer.speech_stopped":
        this.turnEndedAt = performance.now();
        this.setStatus("thinking");
        break;
      case "input_audio_buffer.committed":
        this.transcript.ensure(event.item_id, "user", event.previous_item_id ?? null);
        break;
      case "conversation.item.added":
      case "conversation.item.created":
        this.onItemAdded(event);
        break;
      case "conversation.item.done":
        this.onItemDone(event.item);
        break;
      case "conversation.item.input_audio_transcription.delta":
        this.transcript.appendText(event.item_id, "user", event.delta ?? "");
        break;
      case "conversation.item.input_audio_transcription.completed":
        this.transcript.setText(event.item_id, "user", (event.transcript ?? "").trim() || "…");
        break;
      case "conversation.item.input_audio_transcription.failed":
        this.transcript.setText(event.item_id, "user", gettext("(couldn't transcribe this)"));
        break;
      case "conversation.item.truncated":
        this.transcript.setState(event.item_id, "interrupted");
        break;
      case "response.created":
        this.responseActive = true;
        if (this.status !== "user-speaking" && this.status !== "assistant-speaking") {
          this.setStatus("thinking");
        }
        break;
      case "response.output_item.added":
        if (event.item?.type === "message" && event.item.role === "assistant") {
          this.transcript.ensure(event.item.id, "assistant");
        }
        break;
      case "response.output_audio.delta":
        this.onAudioDelta(event);
        break;
      case "response.output_audio.done":
        if (event.item_id === this.audioItemId) this.audioItemId = null;
        this.player?.end();
        break;
      case "response.output_audio_transcript.delta":
      case "response.output_text.delta":
        if (!this.player?.dropped.has(event.item_id)) {
          this.transcript.appendText(event.item_id, "assistant", event.delta ?? "");
        }
        break;
      case "response.output_audio_transcript.done":
      case "response.output_text.done":
        // After a truncate this is the heard part; an interrupted line stays marked as such.
        this.transcript.setText(event.item_id, "assistant", event.transcript ?? event.text ?? "");
        break;
      case "response.done":
        this.onResponseDone(event.response ?? {});
        break;
      case "error":
        this.onError(event.error ?? {});
        break;
    }
  }

  onSessionCreated(session) {
    const reconnected = this.reconnect.attempts > 0 || this.transcript.entries.size > 0;
    this.sessionReady = true;
    this.reconnect.reset();
    if (this.reconnectNotice) {
      this.transcript.remove(this.reconnectNotice);
      this.reconnectNotice = null;
    }
    this.voiceLocked = false;
    this.sessionVoice = session.audio?.output?.voice ?? null;
    const turnDetection = session.audio?.input?.turn_detection;
    if (turnDetection) this.serverTurnDetection = turnDetection;
    if (reconnected) this.transcript.notice(gettext("New conversation"));
    const update = {};
    if (this.mode === "push-to-talk") update.turnDetection = null;
    if (this.voice && this.voice !== this.sessionVoice) update.voice = this.voice;
    // Listen for the language the page speaks (set only when it is not the server's default).
    if (this.config.transcription) update.transcription = this.config.transcription;
    if (Object.keys(update).length) this.updateSession(update);
    this.settle();
  }

  /** session.update with only the fields that change (the server keeps its defaults). */
  updateSession({ turnDetection, voice, transcription }) {
    const audio = {};
    if (turnDetection !== undefined) audio.input = { turn_detection: turnDetection };
    if (transcription !== undefined) audio.input = { ...audio.input, transcription };
    if (voice !== undefined) audio.output = { voice };
    this.client?.send({ type: "session.update", session: { type: "realtime", audio } });
  }

  onSpeechStarted() {
    // Barge-in: the user talks over the reply. Stop it now and tell the service what was heard.
    // With server VAD the service cancels the response itself (interrupt_response).
    this.interruptAssistant({ cancel: false });
    this.setStatus("user-speaking");
  }

  onItemAdded(event) {
    const item = event.item;
    if (item?.type !== "message" || (item.role !== "user" && item.role !== "assistant")) return;
    const previous = "previous_item_id" in event ? event.previous_item_id : undefined;
    this.transcript.ensure(item.id, item.role, previous);
    const text = typedText(item);
    if (text) this.transcript.setText(item.id, item.role, text);
  }

  onItemDone(item) {
    if (item?.type !== "message") return;
    const text = typedText(item);
    if (item.role === "user" && text) this.transcript.setText(item.id, "user", text);
    if (item.role === "assistant" && this.transcript.state(item.id) === "in-progress") {
      const spoken = assistantText(item);
      if (spoken) this.transcript.setText(item.id, "assistant", spoken);
    }
  }

  onAudioDelta(event) {
    if (!this.player || this.player.dropped.has(event.item_id)) return;
    if (this.replyAudioAt === null && !this.player.busy) this.replyAudioAt = performance.now();
    this.audioItemId = event.item_id;
    this.voiceLocked = true;
    this.stats.audioMsReceived += this.player.enqueue(event.item_id, fromBase64(event.delta));
    this.refreshControls();
  }

  onResponseDone(response) {
    this.responseActive = false;
    const cut = response.status === "cancelled" || response.status === "incomplete";
    for (const item of response.output ?? []) {
      if (item.type !== "message" || this.transcript.state(item.id) !== "in-progress") continue;
      this.transcript.setState(item.id, cut ? "interrupted" : "done");
    }
    if (response.status === "failed") {
      const reason = response.status_details?.error?.message;
      const message = reason
        ? interpolate(gettext("The reply failed: %(reason)s"), { reason })
        : gettext("The reply failed.");
      this.showAlert(message, "error", { transient: true });
    }
    if (!this.player?.busy && !this.audioItemId && this.status !== "user-speaking") this.settle();
    this.refreshControls();
  }

  onError(error) {
    if (QUIET_ERRORS.has(error.code)) return;
    // A close that follows shows the final word; a recoverable error is a passing notice.
    this.showAlert(error.message || gettext("Something went wrong."), "error", { transient: true });
  }

  // ---- audio -----------------------------------------------------------------------------

  onChunk({ pcm }) {
    if (!this.sessionReady || !this.client?.isOpen) return;
    const talking = this.mode === "hands-free" || this.pttHeld || this.pttFlushing;
    if (!talking) return;
    this.client.appendAudio(pcm);
    this.stats.chunksSent += 1;
    this.stats.audioMsSent += pcm16Ms(pcm.byteLength);
  }

  onPlayerProgress() {
    this.stats.audioMsPlayed = Math.round(this.player.playedMs);
    this.stats.underruns = this.player.underruns;
    if (!this.player.busy && this.status === "assistant-speaking" && !this.audioItemId) this.settle();
    this.refreshControls();
  }

  onPlaybackStarted() {
    if (this.turnEndedAt !== null) {
      this.stats.lastLatencyMs = Math.round(performance.now() - this.turnEndedAt);
      this.turnEndedAt = null;
    }
    if (this.replyAudioAt !== null) {
      this.stats.lastPrefillWaitMs = Math.round(performance.now() - this.replyAudioAt);
      this.replyAudioAt = null;
    }
    if (this.status !== "user-speaking") this.setStatus("assistant-speaking");
  }

  onPlaybackDrained() {
    if (this.status === "assistant-speaking") this.settle();
  }

  /**
   * Stop the assistant's audio at once; if anything was cut off, truncate the item to the
   * whole milliseconds actually heard, so the service forgets what the user never heard.
   */
  async interruptAssistant({ cancel }) {
    const streamingItem = this.audioItemId;
    if (cancel && this.responseActive) this.client?.send({ type: "response.cancel" });
    if (!this.player || (!this.player.busy && !streamingItem)) return;
    this.audioItemId = null;
    const heard = await this.player.interrupt();
    const itemId = heard.itemId ?? streamingItem;
    if (!itemId || (heard.droppedMs <= 0 && itemId !== streamingItem)) return; // it had finished
    this.player.dropped.add(itemId);
    const audioEndMs = heard.itemId === itemId ? heard.audioEndMs : 0;
    this.client?.send({
      type: "conversation.item.truncate",
      item_id: itemId,
      content_index: 0,
      audio_end_ms: audioEndMs,
    });
    this.transcript.setState(itemId, "interrupted");
    this.refreshControls();
  }

  async stopReply() {
    await this.interruptAssistant({ cancel: true });
    this.settle();
  }

  // ---- push-to-talk, text, settings ------------------------------------------------------

  pttDown() {
    if (this.mode !== "push-to-talk" || this.pttHeld || !this.sessionReady) return;
    if (!this.recorder?.active) {
      this.showAlert(gettext("The microphone isn't available. You can type instead."), "warning", {
        transient: true,
      });
      return;
    }
    // Clear first, so nothing captured before the press is committed with this turn. Audio
    // streams from the press on, so the first syllable is never lost to the tap threshold.
    this.client.send({ type: "input_audio_buffer.clear" });
    this.pttHeld = true;
    this.pttPressedAt = performance.now();
    this.el.ptt.setAttribute("aria-pressed", "true");
    this.setStatus("user-speaking");
    // Only a press held past the threshold is a turn: only then does it stop the reply.
    clearTimeout(this.pttHoldTimer);
    this.pttHoldTimer = setTimeout(() => {
      if (this.pttHeld) this.interruptAssistant({ cancel: true });
    }, MIN_PTT_HOLD_MS);
  }

  async pttUp() {
    if (!this.pttHeld) return;
    this.pttHeld = false;
    clearTimeout(this.pttHoldTimer);
    this.el.ptt.setAttribute("aria-pressed", "false");
    if (performance.now() - this.pttPressedAt < MIN_PTT_HOLD_MS) {
      // A tap: drop its audio, leave the reply (pending or playing) alone.
      this.client?.send({ type: "input_audio_buffer.clear" });
      this.showAlert(gettext("Hold the button (or Space) while you speak."), "info", { transient: true });
      this.setStatus(this.currentActivity());
      return;
    }
    this.pttFlushing = true;
    await this.recorder?.flush(); // the last few milliseconds belong to this turn
    this.pttFlushing = false;
    if (!this.client?.isOpen) return;
    this.client.send({ type: "input_audio_buffer.commit" });
    this.client.send({ type: "response.create" });
    this.turnEndedAt = performance.now();
    this.setStatus("thinking");
  }

  /** What the assistant is doing now, for the status line after a tap. */
  currentActivity() {
    if (this.player?.busy) return "assistant-speaking";
    if (this.responseActive || this.audioItemId) return "thinking";
    return this.sessionReady ? "listening" : this.status;
  }

  async sendText() {
    const text = this.el.input.value.trim();
    if (!text || !this.sessionReady) return;
    this.el.input.value = "";
    await this.interruptAssistant({ cancel: true });
    this.client?.send({
      type: "conversation.item.create",
      item: { type: "message", role: "user", content: [{ type: "input_text", text }] },
    });
    this.client?.send({ type: "response.create" });
    this.turnEndedAt = performance.now();
    this.setStatus("thinking");
  }

  changeMode(mode) {
    this.mode = mode;
    localStorage.setItem("voicechat.mode", mode);
    this.applyMode();
    if (!this.sessionReady) return;
    if (mode === "push-to-talk") {
      this.updateSession({ turnDetection: null });
      this.client.send({ type: "input_audio_buffer.clear" });
    } else {
      this.updateSession({ turnDetection: this.serverTurnDetection ?? { type: "server_vad" } });
    }
    this.settle();
  }

  applyMode() {
    const ptt = this.mode === "push-to-talk";
    this.el.ptt.hidden = !ptt;
    this.root.classList.toggle("is-ptt", ptt);
    // Hands-free and push-to-talk interrupt differently: each hint says how, in its own mode.
    for (const hint of this.root.querySelectorAll("[data-mode-hint]")) {
      hint.hidden = hint.dataset.modeHint !== this.mode;
    }
    this.refreshControls();
  }

  changeVoice(voice) {
    this.voice = voice;
    localStorage.setItem("voicechat.voice", voice);
    if (!this.sessionReady) return;
    if (this.voiceLocked) {
      this.showAlert(gettext("The new voice will be used from your next conversation."), "info", {
        transient: true,
      });
    } else {
      this.updateSession({ voice });
    }
  }
}

/** Text the user typed (input_text parts) in a message item. */
function typedText(item) {
  return (item.content ?? [])
    .filter((part) => part.type === "input_text" || part.type === "text")
    .map((part) => part.text ?? "")
    .join("");
}

/** What the assistant said or wrote, from a finished item. */
function assistantText(item) {
  return (item.content ?? [])
    .map((part) => part.transcript ?? part.text ?? "")
    .join("");
}

function start() {
  const root = document.querySelector("[data-chat]");
  const config = JSON.parse(document.getElementById("chat-config").textContent);
  const app = new VoiceChatApp(root, config);
  // Stable hooks for tests and curious people: see docs/chat-page.md.
  window.voicechat = { app, stats: app.stats };
}

start();
