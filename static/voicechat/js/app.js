// The chat page's composition root: makes the view, the transcript, the event log, the audio,
// the conversation (the protocol), push-to-talk and the connection, and wires their events to
// one another. Configuration comes from the #chat-config json_script element, never templated JS.
import { AudioGraph } from "./audio.js";
import { ChatView } from "./chat-view.js";
import { Connection } from "./connection.js";
import { Conversation } from "./conversation.js";
import { EventLog } from "./event-log.js";
import { gettext } from "./i18n.js";
import { PushToTalk } from "./push-to-talk.js";
import { Reconnect } from "./reconnect.js";
import { Transcript } from "./transcript.js";

export class VoiceChatApp {
  /** @param {HTMLElement} root @param {object} config from json_script */
  constructor(root, config) {
    const view = new ChatView(root);
    const $ = (id) => view.find(id);
    this.view = view;
    this.transcript = new Transcript(
      $("transcript"),
      $("transcript-scroll"),
      root.querySelector("[data-transcript-empty]"),
    );
    this.log = new EventLog($("event-log"));
    this.audio = new AudioGraph(
      config.worklets,
      $("mic-waveform"),
      $("assistant-waveform"),
      $("reply-audio"),
    );
    this.reconnect = new Reconnect($("reconnect"), $("reconnect-countdown"), $("retry-now"));

    const mode =
      localStorage.getItem("voicechat.mode") === "push-to-talk" ? "push-to-talk" : "hands-free";
    // WebRTC (the server's REALTIME_CHAT_TRANSPORT by default) unless the user picked the
    // WebSocket on this page before, or the browser can't make calls.
    const savedTransport = localStorage.getItem("voicechat.transport");
    const transport = !Connection.canCall
      ? "websocket"
      : ["webrtc", "websocket"].includes(savedTransport)
        ? savedTransport
        : config.transport;
    const savedVoice = localStorage.getItem("voicechat.voice");
    const voice = view.fillVoices(
      config.voices,
      config.voiceDescriptions ?? {},
      config.voices.includes(savedVoice) ? savedVoice : config.voice,
    );
    this.conversation = new Conversation({
      transcript: this.transcript,
      audio: this.audio,
      mode,
      voice,
      transcription: config.transcription,
      isHolding: () => this.talk.held,
    });
    this.stats = this.conversation.stats;
    this.talk = new PushToTalk(view.el.ptt, {
      conversation: this.conversation,
      audio: this.audio,
      alert: (...args) => view.showAlert(...args),
    });
    this.connection = new Connection(config, {
      conversation: this.conversation,
      audio: this.audio,
      transcript: this.transcript,
      log: this.log,
      reconnect: this.reconnect,
      view,
      loginUrl: root.dataset.loginUrl,
      transport,
    });
    this.wire();
    view.applyMode(mode);
    view.applyTransport(transport, Connection.canCall);
    this.refresh();
    this.conversation.setStatus("idle");
  }

  /** The microphone's Recorder, if open (bench/browser_latency.py reads its analyser). */
  get recorder() {
    return this.audio.recorder;
  }

  wire() {
    const { view, conversation, audio, talk, connection } = this;
    view.addEventListener("connect", () => connection.connect());
    view.addEventListener("disconnect", () => connection.disconnect());
    view.addEventListener("stop", () => conversation.stopReply());
    view.addEventListener("send", () => {
      if (!conversation.sessionReady) return;
      const text = view.takeMessage();
      if (text) conversation.sendText(text);
    });
    view.addEventListener("voice", (event) => {
      localStorage.setItem("voicechat.voice", event.detail);
      conversation.changeVoice(event.detail);
    });
    view.addEventListener("transport", (event) => {
      localStorage.setItem("voicechat.transport", event.detail);
      connection.transport = event.detail;
    });
    connection.addEventListener("fallback", () => {
      view.applyTransport("websocket", Connection.canCall);
      view.showAlert(
        gettext("WebRTC isn't available here, so this conversation uses the WebSocket instead."),
        "info",
        { transient: true },
      );
    });
    view.addEventListener("mode", (event) => {
      localStorage.setItem("voicechat.mode", event.detail);
      conversation.changeMode(event.detail);
    });
    window.addEventListener("pagehide", () => connection.disconnect());

    conversation.addEventListener("status", (event) => {
      const { state, detail } = event.detail;
      view.showStatus(state, detail, {
        microphone: Boolean(audio.recorder?.active),
        mode: conversation.mode,
      });
      this.refresh();
    });
    conversation.addEventListener("alert", (event) => {
      const { message, kind, transient } = event.detail;
      view.showAlert(message, kind, { transient });
    });
    conversation.addEventListener("mode", () => {
      view.applyMode(conversation.mode);
      this.refresh();
    });
    conversation.addEventListener("end", () => talk.reset());
    conversation.addEventListener("change", () => this.refresh());

    audio.addEventListener("chunk", (event) => {
      // Hands-free streams the microphone all the time; push-to-talk only during a press.
      if (conversation.mode === "hands-free" || talk.streaming) {
        conversation.sendAudio(event.detail.pcm);
      }
    });
    audio.addEventListener("progress", () => conversation.onPlaybackProgress());
    audio.addEventListener("started", () => conversation.onPlaybackStarted());
    audio.addEventListener("drained", () => conversation.onPlaybackDrained());
    audio.addEventListener("microphone-lost", () => talk.drop());
    audio.addEventListener("warning", (event) => view.showAlert(event.detail, "warning"));
    audio.addEventListener("change", () => this.refresh());
  }

  /** Bring the controls and the waveforms up to date with the conversation. */
  refresh() {
    const { conversation, audio, talk } = this;
    const live = this.connection.wanted;
    const microphone = Boolean(audio.recorder?.active);
    this.view.render({
      live,
      ready: conversation.sessionReady,
      stoppable: conversation.replying,
      canTalk: conversation.sessionReady && microphone,
      status: conversation.status,
    });
    audio.showActivity({
      microphone: microphone && (conversation.mode === "hands-free" ? live : talk.held),
      assistant: conversation.status === "assistant-speaking",
    });
  }
}

function start() {
  const root = document.querySelector("[data-chat]");
  const config = JSON.parse(document.getElementById("chat-config").textContent);
  const app = new VoiceChatApp(root, config);
  // Stable hooks for tests and curious people: see docs/chat-page.md.
  window.voicechat = { app, stats: app.stats };
}

start();
