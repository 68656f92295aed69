// The optional event log: the protocol events in both directions, newest last. Audio deltas
// and appends are folded into one line with a count, so the log stays readable.

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
    this.recent = []; // the newest few lines, where repeats of a folded type are counted
  }

  /** @param {"in"|"out"} direction @param {object} event */
  add(direction, event) {
    if (!this.details.open) return; // logging costs DOM work; only while someone is looking
    const type = event.type ?? "?";
    // Audio flows both ways at once, so a folded line absorbs its type while it is recent.
    const same = FOLDED.has(type)
      ? this.recent.find((line) => line.type === type && line.direction === direction)
      : null;
    if (same) {
      same.count += 1;
      same.countNode.textContent = `×${same.count}`;
      return;
    }
    const li = document.createElement("li");
    li.className = `log-line log-line--${direction}`;
    const time = document.createElement("time");
    time.textContent = new Date().toLocaleTimeString([], { hour12: false });
    const arrow = document.createElement("span");
    arrow.className = "log-dir";
    arrow.textContent = direction === "in" ? "↓" : "↑";
    arrow.title = direction === "in" ? "from server" : "to server";
    const name = document.createElement("code");
    name.textContent = type;
    const count = document.createElement("span");
    count.className = "log-count";
    li.append(time, arrow, name, count);
    if (type === "error") {
      const detail = document.createElement("span");
      detail.className = "log-detail";
      detail.textContent = event.error?.message ?? "";
      li.append(detail);
    }
    const follow = this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight < 24;
    this.list.append(li);
    while (this.list.children.length > MAX_LINES) this.list.firstElementChild.remove();
    if (follow) this.list.scrollTop = this.list.scrollHeight;
    this.recent.push({ type, direction, count: 1, countNode: count });
    if (this.recent.length > 4) this.recent.shift();
  }
}
