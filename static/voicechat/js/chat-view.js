// The chat page's controls: finds its elements by data-testid, turns the buttons, the composer,
// the voice select, the mode and the transport radios into intents ("connect", "disconnect",
// "stop", "send", "voice", "mode", "transport" events), and draws the status line, the controls' state, the mode and the
// alert from what it is told. Knows nothing of the protocol or the audio.
import { gettext } from "./i18n.js";

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

export class ChatView extends EventTarget {
  /** @param {HTMLElement} root the [data-chat] element */
  constructor(root) {
    super();
    this.root = root;
    const $ = (id) => this.find(id);
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
      transports: root.querySelectorAll('input[name="transport"]'),
      userWave: root.querySelector('[data-wave="user"]'),
      assistantWave: root.querySelector('[data-wave="assistant"]'),
    };
    this.alertTimer = 0;
    this.canCall = true; // whether this browser can make a WebRTC call at all
    this.bind();
  }

  /** The element with this data-testid inside the chat. */
  find(testId) {
    return this.root.querySelector(`[data-testid="${testId}"]`);
  }

  bind() {
    const { el } = this;
    const intent = (type, detail) => this.dispatchEvent(new CustomEvent(type, { detail }));
    el.connect.addEventListener("click", () => intent("connect"));
    el.disconnect.addEventListener("click", () => intent("disconnect"));
    el.stop.addEventListener("click", () => intent("stop"));
    el.alert.querySelector(".alert-close").addEventListener("click", () => this.hideAlert());
    el.composer.addEventListener("submit", (event) => {
      event.preventDefault();
      intent("send");
    });
    el.voice.addEventListener("change", () => intent("voice", el.voice.value));
    for (const radio of el.modes) {
      radio.addEventListener("change", () => radio.checked && intent("mode", radio.value));
    }
    for (const radio of el.transports) {
      radio.addEventListener("change", () => radio.checked && intent("transport", radio.value));
    }
  }

  /** Fill the voice select; returns the voice it shows (`voice`, or the first if not offered). */
  fillVoices(voices, descriptions, voice) {
    // The offline engine says which of its own voices stands in for each name.
    for (const name of voices) {
      const option = document.createElement("option");
      const label = name[0].toUpperCase() + name.slice(1);
      option.value = name;
      option.textContent = descriptions[name] ? `${label} — ${descriptions[name]}` : label;
      this.el.voice.append(option);
    }
    const shown = voices.includes(voice) ? voice : voices[0];
    this.el.voice.value = shown;
    return shown;
  }

  /** The composer's text, trimmed; the box is emptied when there was something to send. */
  takeMessage() {
    const text = this.el.input.value.trim();
    if (text) this.el.input.value = "";
    return text;
  }

  /** The status line; "listening" says how to talk (type only, or hold to talk). */
  showStatus(state, detail, { microphone, mode }) {
    let text = STATUS_TEXT[state];
    if (state === "listening" && !microphone) {
      text = gettext("Connected — type a message");
    } else if (state === "listening" && mode === "push-to-talk") {
      text = gettext("Ready — hold to talk");
    }
    if (detail) text = state === "reconnecting" ? detail : `${text} · ${detail}`;
    this.el.status.dataset.state = state;
    this.el.statusText.textContent = text;
  }

  /** Enable and show the controls for the page's state now. */
  render({ live, ready, stoppable, canTalk, status }) {
    const { el } = this;
    el.connect.hidden = live;
    el.disconnect.hidden = !live;
    el.connect.disabled = false;
    el.stop.disabled = !stoppable;
    el.input.disabled = !ready;
    el.send.disabled = !ready;
    el.input.placeholder = ready ? gettext("Type a message…") : gettext("Type here once connected");
    el.ptt.disabled = !canTalk;
    // The transport is chosen before a conversation starts; it applies to the next one.
    for (const radio of el.transports) radio.disabled = live || !this.canCall;
    el.userWave.classList.toggle("is-active", status === "user-speaking");
    el.assistantWave.classList.toggle("is-active", status === "assistant-speaking");
  }

  /** Show which transport the next conversation uses; WebRTC greyed out where impossible. */
  applyTransport(transport, canCall) {
    this.canCall = canCall;
    for (const radio of this.el.transports) radio.checked = radio.value === transport;
  }

  applyMode(mode) {
    const ptt = mode === "push-to-talk";
    for (const radio of this.el.modes) radio.checked = radio.value === mode;
    this.el.ptt.hidden = !ptt;
    this.root.classList.toggle("is-ptt", ptt);
    // Hands-free and push-to-talk interrupt differently: each hint says how, in its own mode.
    for (const hint of this.root.querySelectorAll("[data-mode-hint]")) {
      hint.hidden = hint.dataset.modeHint !== mode;
    }
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
}
