// One Realtime conversation as the page follows it, with no DOM of its own: what each server
// event means (the session, the user's turns, the reply in flight, the item whose audio is still
// arriving), the truncate a barge-in owes the service, the session settings the page asks for
// (turn detection, voice), the turn state shown as the status, and the measurements in `stats`.
// It writes transcript lines through Transcript's methods and plays replies through the audio's
// Player; everything else it announces: "status", "alert", "mode", "end" and "change".
// Over WebRTC (client.transport "webrtc") the reply plays from the peer connection and the server
// tracks playback: output_audio_buffer.started / stopped / cleared say what is playing, a cut
// reply is truncated by the server, and the microphone is the call's track (muted between
// push-to-talk presses) rather than input_audio_buffer.append.
import { gettext, interpolate } from "./i18n.js";
import { fromBase64, pcm16Ms } from "./pcm.js";

// Harmless races (cancelling a reply that just finished); logged, never shown.
const QUIET_ERRORS = new Set(["response_cancel_not_active", "input_audio_buffer_commit_empty"]);

export class Conversation extends EventTarget {
  /**
   * @param {object} options
   * @param {import("./transcript.js").Transcript} options.transcript
   * @param {import("./audio.js").AudioGraph} options.audio its player plays the replies
   * @param {"hands-free"|"push-to-talk"} options.mode @param {string} options.voice
   * @param {object} [options.transcription] the input transcription the page asks for, if any
   * @param {() => boolean} options.isHolding whether the user holds the talk button now
   */
  constructor({ transcript, audio, mode, voice, transcription, isHolding }) {
    super();
    this.transcript = transcript;
    this.audio = audio;
    this.mode = mode;
    this.voice = voice;
    this.transcription = transcription;
    this.isHolding = isHolding;
    // Stable hooks for tests and benchmarks (docs/chat-page.md), updated in place.
    this.stats = {
      chunksSent: 0,
      audioMsSent: 0,
      audioMsReceived: 0,
      audioMsPlayed: 0,
      underruns: 0,
      lastLatencyMs: null, // end of the user's turn -> the reply starts playing
      lastPrefillWaitMs: null, // the reply's first audio on the socket -> it starts playing
    };
    this.client = null; // the RealtimeClient of the session now, if any
    this.status = "idle";
    this.sessionReady = false;
    this.sessionVoice = null;
    this.voiceLocked = false; // the service fixes the voice once it has spoken
    this.serverTurnDetection = null;
    this.responseActive = false;
    this.audioItemId = null; // assistant item whose audio is still streaming in
    this.remotePlaying = false; // over WebRTC: the server is playing a reply on the call's track
    this.turnEndedAt = null; // when the user's turn ended, for lastLatencyMs
    this.replyAudioAt = null; // when a reply's first audio arrived, for lastPrefillWaitMs
  }

  /** The Player that plays the replies; none over WebRTC, where the call plays them. */
  get player() {
    return this.overWebRTC ? null : this.audio.player;
  }

  /** Whether the transport is a WebRTC call (the server plays and truncates the replies). */
  get overWebRTC() {
    return this.client?.transport === "webrtc";
  }

  /** Whether a reply is being heard now (the Player's, or the call's track). */
  get playing() {
    return Boolean(this.player?.busy || this.remotePlaying);
  }

  setStatus(state, detail = "") {
    this.status = state;
    this.dispatchEvent(new CustomEvent("status", { detail: { state, detail } }));
  }

  /** The resting state once a turn is over. */
  settle() {
    if (this.sessionReady && !this.isHolding()) this.setStatus("listening");
  }

  /** What the assistant is doing now, for the status line after a tap. */
  currentActivity() {
    if (this.playing) return "assistant-speaking";
    if (this.responseActive || this.audioItemId) return "thinking";
    return this.sessionReady ? "listening" : this.status;
  }

  /** Whether there is a reply to stop (speaking, buffered or still streaming in). */
  get replying() {
    return Boolean(this.responseActive || this.playing || this.audioItemId);
  }

  alert(message, kind, { transient = false } = {}) {
    this.dispatchEvent(new CustomEvent("alert", { detail: { message, kind, transient } }));
  }

  changed() {
    this.dispatchEvent(new Event("change"));
  }

  /** Forget the session's state (the socket is closed or closing). */
  end() {
    this.client = null;
    this.sessionReady = false;
    this.responseActive = false;
    this.audioItemId = null;
    this.remotePlaying = false;
    this.dispatchEvent(new Event("end"));
    this.transcript.finishAll();
  }

  // ---- server events ---------------------------------------------------------------------

  onServerEvent(event) {
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
      case "output_audio_buffer.started":
        this.onRemotePlaybackStarted();
        break;
      case "output_audio_buffer.stopped":
      case "output_audio_buffer.cleared":
        this.remotePlaying = false;
        if (this.status === "assistant-speaking" && !this.responseActive) this.settle();
        this.changed();
        break;
      case "error":
        this.onError(event.error ?? {});
        break;
    }
  }

  onSessionCreated(session) {
    this.sessionReady = true;
    this.voiceLocked = false;
    this.sessionVoice = session.audio?.output?.voice ?? null;
    const turnDetection = session.audio?.input?.turn_detection;
    if (turnDetection) this.serverTurnDetection = turnDetection;
    const update = {};
    if (this.mode === "push-to-talk") update.turnDetection = null;
    if (this.voice && this.voice !== this.sessionVoice) update.voice = this.voice;
    // Listen for the language the page speaks (set only when it is not the server's default).
    if (this.transcription) update.transcription = this.transcription;
    if (Object.keys(update).length) this.updateSession(update);
    // A call's microphone track: open in hands-free, muted until a press in push-to-talk.
    this.client?.setMicrophoneOpen?.(this.mode === "hands-free" || this.isHolding());
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
    this.changed();
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
      this.alert(message, "error", { transient: true });
    }
    if (!this.playing && !this.audioItemId && this.status !== "user-speaking") this.settle();
    this.changed();
  }

  onError(error) {
    if (QUIET_ERRORS.has(error.code)) return;
    // A close that follows shows the final word; a recoverable error is a passing notice.
    this.alert(error.message || gettext("Something went wrong."), "error", { transient: true });
  }

  // ---- playback ----------------------------------------------------------------------------

  // The Player's events; over WebRTC it plays nothing, and the call's events say what plays.
  onPlaybackProgress() {
    if (!this.player) return;
    this.stats.audioMsPlayed = Math.round(this.player.playedMs);
    this.stats.underruns = this.player.underruns;
    if (!this.player.busy && this.status === "assistant-speaking" && !this.audioItemId) this.settle();
    this.changed();
  }

  /**
   * A call's reply started on the server's track. Heard a jitter buffer later: the receiver's
   * mean delay (getStats) stands in for the Player's prefill in the measurements.
   */
  onRemotePlaybackStarted() {
    this.remotePlaying = true;
    this.voiceLocked = true;
    const delay = this.client?.playoutDelayMs ?? 0;
    if (this.turnEndedAt !== null) {
      this.stats.lastLatencyMs = Math.round(performance.now() - this.turnEndedAt + delay);
      this.turnEndedAt = null;
    }
    this.stats.lastPrefillWaitMs = Math.round(delay);
    if (this.status !== "user-speaking") this.setStatus("assistant-speaking");
    this.changed();
  }

  onPlaybackStarted() {
    if (!this.player) return;
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
    if (!this.player) return;
    if (this.status === "assistant-speaking") this.settle();
  }

  /**
   * Stop the assistant's audio at once; if anything was cut off, truncate the item to the
   * whole milliseconds actually heard, so the service forgets what the user never heard.
   */
  async interruptAssistant({ cancel }) {
    const streamingItem = this.audioItemId;
    if (cancel && this.responseActive) this.client?.send({ type: "response.cancel" });
    if (this.overWebRTC) {
      // The server stops its track and truncates the item to what it played (cleared, then
      // conversation.item.truncated); on the user's speech it has already done so itself.
      if (this.remotePlaying) {
        this.client.send({ type: "output_audio_buffer.clear" });
        this.remotePlaying = false;
        this.changed();
      }
      return;
    }
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
    this.changed();
  }

  async stopReply() {
    await this.interruptAssistant({ cancel: true });
    this.settle();
  }

  // ---- the user's turns --------------------------------------------------------------------

  /** One microphone chunk into the input audio buffer (once the session is ready). */
  sendAudio(pcm) {
    if (!this.sessionReady || !this.client?.isOpen || this.overWebRTC) return;
    this.client.appendAudio(pcm);
    this.stats.chunksSent += 1;
    this.stats.audioMsSent += pcm16Ms(pcm.byteLength);
  }

  /** Forget the audio sent since the last commit (a push-to-talk press starts, or was a tap). */
  clearInput() {
    this.client?.send({ type: "input_audio_buffer.clear" });
  }

  /** Push-to-talk over WebRTC: unmute the call's microphone for a press, mute it after. */
  openMicrophone(open) {
    this.client?.setMicrophoneOpen?.(open || this.mode === "hands-free");
  }

  /**
   * The user let go of push-to-talk: their audio is the turn, and a reply is asked for.
   * @param {number} releasedAt when they let go (the turn's end, for lastLatencyMs)
   */
  commitTurn(releasedAt = performance.now()) {
    if (!this.client?.isOpen) return;
    this.client.send({ type: "input_audio_buffer.commit" });
    this.client.send({ type: "response.create" });
    this.turnEndedAt = releasedAt;
    this.setStatus("thinking");
  }

  async sendText(text) {
    await this.interruptAssistant({ cancel: true });
    this.client?.send({
      type: "conversation.item.create",
      item: { type: "message", role: "user", content: [{ type: "input_text", text }] },
    });
    this.client?.send({ type: "response.create" });
    this.turnEndedAt = performance.now();
    this.setStatus("thinking");
  }

  // ---- settings ----------------------------------------------------------------------------

  changeMode(mode) {
    this.mode = mode;
    this.dispatchEvent(new Event("mode"));
    if (!this.sessionReady) return;
    this.openMicrophone(this.isHolding());
    if (mode === "push-to-talk") {
      this.updateSession({ turnDetection: null });
      this.clearInput();
    } else {
      this.updateSession({ turnDetection: this.serverTurnDetection ?? { type: "server_vad" } });
    }
    this.settle();
  }

  changeVoice(voice) {
    this.voice = voice;
    if (!this.sessionReady) return;
    if (this.voiceLocked) {
      this.alert(gettext("The new voice will be used from your next conversation."), "info", {
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
