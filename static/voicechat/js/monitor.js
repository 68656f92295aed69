// The staff live monitor: follows /ws/monitor, keeps the list of open conversations current,
// and shows the transcript of the watched one as its lines arrive (from any server process).

import { gettext, interpolate } from "./i18n.js";

// The process column is hidden on narrow screens (app.css, .col-process).
const PROCESS_COLUMN = 4;
const SPEAKERS = { user: gettext("User"), assistant: gettext("Assistant") };

const STATUS_TEXT = {
  speech_started: gettext("user is speaking…"),
  speech_stopped: gettext("user stopped speaking"),
  response_started: gettext("assistant is answering…"),
  response_done: gettext("assistant finished"),
};

/** "ended: <reason code>", for the watched conversation's activity line. */
function ended(reason) {
  return interpolate(gettext("ended: %(reason)s"), { reason });
}

class MonitorPage {
  constructor(root) {
    this.root = root;
    this.list = document.getElementById("conversations");
    this.transcript = document.getElementById("transcript");
    this.activity = document.getElementById("activity");
    this.watchingLabel = document.getElementById("watching");
    this.status = document.getElementById("monitor-status");
    this.statusText = this.status.querySelector("[data-testid=monitor-status]");
    this.watchHint = document.getElementById("watch-hint");
    this.emptyRow = document.getElementById("empty-row").content.firstElementChild;
    this.csrf = document.getElementById("end-form").content.querySelector("input");
    this.endUrl = (id) => root.dataset.endUrlTemplate.replace("/0/", `/${id}/`);
    this.watching = null;
    this.list.addEventListener("click", (event) => {
      const id = event.target.dataset?.watch;
      if (id) this.watch(Number(id));
    });
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    this.socket = new WebSocket(`${scheme}://${location.host}${this.root.dataset.socketPath}`);
    this.socket.onopen = () => { this.setStatus("live", gettext("live")); if (this.watching) this.watch(this.watching); };
    this.socket.onmessage = (message) => this.handle(JSON.parse(message.data));
    this.socket.onclose = () => {
      this.setStatus("reconnecting", gettext("disconnected, retrying…"));
      setTimeout(() => this.connect(), 2000);
    };
  }

  setStatus(state, text) {
    this.status.dataset.state = state;
    this.statusText.textContent = text;
  }

  watch(id) {
    this.watching = id;
    this.transcript.replaceChildren();
    this.activity.textContent = "";
    this.watchingLabel.textContent = interpolate(gettext("(conversation %(id)s)"), { id });
    this.watchHint.hidden = true;
    for (const row of this.list.querySelectorAll("tr")) {
      row.classList.toggle("watched", row.dataset.conversation === String(id));
    }
    this.socket.send(JSON.stringify({ type: "watch", conversation: id }));
  }

  handle(event) {
    switch (event.kind) {
      case "snapshot":
        // With nothing open the list says so, rather than going blank.
        this.list.replaceChildren(
          ...(event.conversations.length ? event.conversations.map((c) => this.row(c)) : [this.emptyRow.cloneNode(true)]),
        );
        break;
      case "started":
        this.list.querySelector("tr.empty")?.remove();
        this.list.prepend(this.row(event));
        break;
      case "ended":
        this.list.querySelector(`tr[data-conversation="${event.conversation}"]`)?.classList.add("ended");
        if (event.conversation === this.watching) this.activity.textContent = ended(event.end_reason);
        break;
      case "transcript":
        for (const line of event.lines) this.line(line);
        if (event.ended) this.activity.textContent = ended(event.end_reason);
        break;
      case "line":
        this.line(event);
        break;
      case "status":
        this.activity.textContent = STATUS_TEXT[event.status] ?? event.status;
        break;
      case "error":
        this.activity.textContent = event.message;
        break;
    }
  }

  // One line per item id: a later event for the same item replaces its text.
  line({ item_id, role, text }) {
    let entry = this.transcript.querySelector(`li[data-item="${CSS.escape(item_id)}"]`);
    if (!entry) {
      entry = document.createElement("li");
      entry.className = `turn turn--${role}`;
      entry.dataset.item = item_id;
      entry.dataset.role = role;
      entry.dataset.testid = "monitor-line";
      const who = Object.assign(document.createElement("span"), { className: "turn-who", textContent: SPEAKERS[role] ?? role });
      entry.append(who, Object.assign(document.createElement("p"), { className: "turn-text" }));
      this.transcript.append(entry);
    }
    entry.querySelector(".turn-text").textContent = text;
  }

  row(c) {
    const row = document.createElement("tr");
    row.dataset.conversation = c.id ?? c.conversation;
    const id = row.dataset.conversation;
    const watch = Object.assign(document.createElement("button"), { type: "button", className: "btn btn-small", textContent: id });
    watch.dataset.watch = id;
    watch.setAttribute("aria-label", interpolate(gettext("Follow conversation %(id)s"), { id }));
    const form = Object.assign(document.createElement("form"), { method: "post", action: this.endUrl(id) });
    const end = Object.assign(document.createElement("button"), { type: "submit", className: "btn btn-small btn-danger", textContent: gettext("End") });
    end.dataset.testid = `end-${id}`;
    form.append(this.csrf.cloneNode(), end);
    const cells = [watch, c.user, c.model, new Date(c.started).toLocaleTimeString(), c.process, form];
    row.append(...cells.map((content, index) => {
      const cell = document.createElement("td");
      if (index === PROCESS_COLUMN) cell.className = "col-process";
      cell.append(content);
      return cell;
    }));
    return row;
  }
}

const root = document.getElementById("monitor");
if (root) new MonitorPage(root).connect();
