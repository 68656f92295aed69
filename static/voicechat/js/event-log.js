// The optional event log: the protocol events in both directions, newest last. Audio deltas
// and appends are folded into one line with a count, so the log stays readable. Events are
// recorded all the time (a few hundred small records) and drawn only while the log is open, so
// opening it after something went wrong shows what led up to it.

import { gettext, interpolate } from "./i18n.js";

const MAX_LINES = 300;
const FOLDED = new Set([
  "input_audio_buffer.append",
  "response.output_audio.delta",
  "response.output_audio_transcript.delta",
  "response.output_text.delta",
  "conversation.item.input_audio_transcription.delta",
]);

export class EventLog {
  /** @param {HTMLDetailsElement} details */
  constructor(details) {
    this.details = details;
    this.list = details.querySelector("ol");
    this.records = []; // {time, direction, type, count, detail, element}, oldest first
    this.recent = []; // the newest few records, where repeats of a folded type are counted
    this.showTimeZone(details.querySelector("[data-log-zone]"));
    details.addEventListener("toggle", () => this.details.open && this.redraw());
  }

  /** The times are the browser's own clock: say which zone that is. */
  showTimeZone(label) {
    if (!label) return;
    const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    const offset = -new Date().getTimezoneOffset();
    const sign = offset < 0 ? "−" : "+";
    const hours = String(Math.floor(Math.abs(offset) / 60)).padStart(2, "0");
    const minutes = String(Math.abs(offset) % 60).padStart(2, "0");
    label.textContent = interpolate(gettext("times in your time zone, %(zone)s (UTC%(offset)s)"), {
      zone: zone ?? gettext("local"),
      offset: `${sign}${hours}:${minutes}`,
    });
  }

  /** @param {"in"|"out"} direction @param {object} event */
  add(direction, event) {
    const type = event.type ?? "?";
    // Audio flows both ways at once, so a folded line absorbs its type while it is recent.
    const same = FOLDED.has(type)
      ? this.recent.find((record) => record.type === type && record.direction === direction)
      : null;
    if (same) {
      same.count += 1;
      if (same.element) same.element.querySelector(".log-count").textContent = `×${same.count}`;
      return;
    }
    const record = {
      time: new Date(),
      direction,
      type,
      count: 1,
      detail: type === "error" ? (event.error?.message ?? "") : "",
      element: null,
    };
    this.records.push(record);
    if (this.records.length > MAX_LINES) this.records.shift().element?.remove();
    this.recent.push(record);
    if (this.recent.length > 4) this.recent.shift();
    if (!this.details.open) return; // drawing costs DOM work; only while someone is looking
    const follow = this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight < 24;
    this.list.append(this.render(record));
    if (follow) this.list.scrollTop = this.list.scrollHeight;
  }

  /** Draw every record kept (on opening the log). */
  redraw() {
    this.list.replaceChildren(...this.records.map((record) => this.render(record)));
    this.list.scrollTop = this.list.scrollHeight;
  }

  render(record) {
    const li = document.createElement("li");
    li.className = `log-line log-line--${record.direction}`;
    const time = document.createElement("time");
    time.dateTime = record.time.toISOString();
    time.textContent = record.time.toLocaleTimeString([], { hour12: false });
    const arrow = document.createElement("span");
    arrow.className = "log-dir";
    arrow.textContent = record.direction === "in" ? "↓" : "↑";
    arrow.title = record.direction === "in" ? gettext("from server") : gettext("to server");
    const name = document.createElement("code");
    name.textContent = record.type;
    const count = document.createElement("span");
    count.className = "log-count";
    if (record.count > 1) count.textContent = `×${record.count}`;
    li.append(time, arrow, name, count);
    if (record.detail) {
      const detail = document.createElement("span");
      detail.className = "log-detail";
      detail.textContent = record.detail;
      li.append(detail);
    }
    record.element = li;
    return li;
  }
}
