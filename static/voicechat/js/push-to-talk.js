// Push-to-talk: the hold-to-talk button and the Space key. A press opens the user's turn, a
// release commits it (after the microphone's last few milliseconds are flushed), and a press
// too short to be a turn is a tap that changes nothing. Owns whether the button is held; the
// conversation sends the events and the recorder supplies the audio (over WebRTC the call's
// microphone track, unmuted for the press and muted again once the turn is committed).
import { gettext } from "./i18n.js";

// A press shorter than this is a tap (a slip, a test of the button): it is ignored, and it
// stops nothing. A real turn is longer, and the service rejects commits under 100 ms of audio.
const MIN_PTT_HOLD_MS = 300;

export class PushToTalk {
  /**
   * @param {HTMLButtonElement} button
   * @param {object} parts
   * @param {import("./conversation.js").Conversation} parts.conversation
   * @param {import("./audio.js").AudioGraph} parts.audio its recorder is the microphone
   * @param {(message: string, kind: string, options: object) => void} parts.alert
   */
  constructor(button, { conversation, audio, alert }) {
    this.button = button;
    this.conversation = conversation;
    this.audio = audio;
    this.alert = alert;
    this.held = false;
    this.flushing = false; // released, the recorder's last partial chunk still on its way
    this.pressedAt = 0;
    this.holdTimer = 0; // turns a press into a turn (and a barge-in) after MIN_PTT_HOLD_MS
    this.bind();
  }

  /** Whether the microphone's audio belongs to a push-to-talk turn now. */
  get streaming() {
    return this.held || this.flushing;
  }

  bind() {
    const button = this.button;
    button.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      button.setPointerCapture(event.pointerId);
      this.down();
    });
    for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
      button.addEventListener(type, () => this.up());
    }
    button.addEventListener("contextmenu", (event) => event.preventDefault()); // long-press on phones
    document.addEventListener("keydown", (event) => {
      if (!this.isSpaceForTalking(event)) return;
      event.preventDefault();
      if (!event.repeat) this.down();
    });
    document.addEventListener("keyup", (event) => {
      if (event.code === "Space" && this.held) {
        event.preventDefault();
        this.up();
      }
    });
    window.addEventListener("blur", () => this.up());
  }

  /** Space talks in push-to-talk mode, unless the user is typing or on another control. */
  isSpaceForTalking(event) {
    if (event.code !== "Space" || this.conversation.mode !== "push-to-talk") return false;
    if (event.ctrlKey || event.metaKey || event.altKey) return false;
    const target = event.target;
    if (target === this.button || target === document.body || target === document.documentElement) {
      return true;
    }
    return !target.closest("input, textarea, select, button, a, summary, [contenteditable]");
  }

  down() {
    const conversation = this.conversation;
    if (conversation.mode !== "push-to-talk" || this.held || !conversation.sessionReady) return;
    if (!this.audio.recorder?.active) {
      this.alert(gettext("The microphone isn't available. You can type instead."), "warning", {
        transient: true,
      });
      return;
    }
    // Clear first, so nothing captured before the press is committed with this turn. Audio
    // streams from the press on, so the first syllable is never lost to the tap threshold.
    conversation.clearInput();
    conversation.openMicrophone(true);
    this.held = true;
    this.pressedAt = performance.now();
    this.button.setAttribute("aria-pressed", "true");
    conversation.setStatus("user-speaking");
    // Only a press held past the threshold is a turn: only then does it stop the reply.
    clearTimeout(this.holdTimer);
    this.holdTimer = setTimeout(() => {
      if (this.held) conversation.interruptAssistant({ cancel: true });
    }, MIN_PTT_HOLD_MS);
  }

  async up() {
    if (!this.held) return;
    this.held = false;
    clearTimeout(this.holdTimer);
    this.button.setAttribute("aria-pressed", "false");
    const conversation = this.conversation;
    if (performance.now() - this.pressedAt < MIN_PTT_HOLD_MS) {
      // A tap: drop its audio, leave the reply (pending or playing) alone.
      conversation.clearInput();
      conversation.openMicrophone(false);
      this.alert(gettext("Hold the button (or Space) while you speak."), "info", { transient: true });
      conversation.setStatus(conversation.currentActivity());
      return;
    }
    const releasedAt = performance.now(); // the turn ends here, not after the flush
    this.flushing = true;
    // The last few milliseconds belong to this turn: the worklet's partial chunk, or over
    // WebRTC the frames still on their way to the server.
    const client = conversation.overWebRTC ? conversation.client : null;
    await (client ? client.flushMicrophone() : this.audio.recorder?.flush());
    this.flushing = false;
    conversation.commitTurn(releasedAt);
    if (!this.held) conversation.openMicrophone(false);
  }

  /** The conversation ended: nothing is held any more. */
  reset() {
    this.held = false;
    this.button.setAttribute("aria-pressed", "false");
  }

  /** The microphone went away: no turn is held any more. */
  drop() {
    this.held = false;
  }
}
