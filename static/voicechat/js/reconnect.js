// Reconnecting for as long as the page is open: waits of 1, 2, 4, ... up to 30 seconds, a
// countdown in the reconnect box, and Retry now. What a retry does is the app's business.

import { gettext, interpolate } from "./i18n.js";

const MAX_DELAY_S = 30;

export class Reconnect extends EventTarget {
  /** @param {HTMLElement} box @param {HTMLElement} text @param {HTMLButtonElement} retryNow */
  constructor(box, text, retryNow) {
    super();
    this.box = box;
    this.text = text;
    this.attempts = 0; // failed attempts since the last session began
    this.at = 0; // when the next attempt starts (performance.now() time)
    this.message = "";
    this.timer = 0;
    retryNow.addEventListener("click", () => this.retry());
  }

  get waiting() {
    return !this.box.hidden;
  }

  /** Count a failed attempt and show `message` with a countdown to the next one. */
  schedule(message) {
    this.attempts += 1;
    this.at = performance.now() + Math.min(MAX_DELAY_S, 2 ** (this.attempts - 1)) * 1000;
    this.message = message;
    clearTimeout(this.timer);
    this.tick();
  }

  tick() {
    const left = Math.max(0, Math.ceil((this.at - performance.now()) / 1000));
    if (left === 0) {
      this.retry();
      return;
    }
    const countdown = interpolate(gettext("Trying again in %(seconds)s\u00a0s."), { seconds: left });
    this.text.textContent = `${this.message} ${countdown}`;
    this.box.hidden = false;
    // The next tick at the next whole second of the countdown.
    const untilTick = (this.at - performance.now()) % 1000 || 1000;
    this.timer = setTimeout(() => this.tick(), untilTick + 5);
  }

  /** Try now (the countdown ran out, or the user pressed Retry now): fires "retry". */
  retry() {
    this.stop();
    this.dispatchEvent(new Event("retry"));
  }

  /** No more tries for now: connected again, hung up, or given up. */
  stop() {
    clearTimeout(this.timer);
    this.box.hidden = true;
  }

  /** Connected again: the next drop starts from a 1 s wait. */
  reset() {
    this.stop();
    this.attempts = 0;
  }
}
