// The live transcript: one entry per conversation item, kept in conversation order by
// previous_item_id (a user's transcription often arrives after the assistant has started).

import { gettext } from "./i18n.js";

const LABELS = { user: gettext("You"), assistant: gettext("Assistant") };

export class Transcript {
  /** @param {HTMLOListElement} list @param {HTMLElement} scroller @param {HTMLElement} empty */
  constructor(list, scroller, empty) {
    this.list = list;
    this.scroller = scroller;
    this.empty = empty;
    this.entries = new Map(); // item id -> {id, previous, element, text, role}
    this.lastId = null; // the newest item, the default predecessor of an item with no link
    this.notices = 0;
  }

  /** Create the entry for an item if needed; returns it. */
  ensure(itemId, role, previousItemId) {
    let entry = this.entries.get(itemId);
    if (!entry) {
      entry = this.create(itemId, role);
      entry.previous = previousItemId === undefined ? this.lastId : previousItemId;
      this.entries.set(itemId, entry);
      this.lastId = itemId;
      this.place();
    } else if (previousItemId !== undefined && entry.previous !== previousItemId) {
      entry.previous = previousItemId;
      this.place();
    }
    return entry;
  }

  create(itemId, role) {
    const element = document.createElement("li");
    element.className = `turn turn--${role}`;
    element.dataset.testid = "transcript-entry";
    element.dataset.role = role;
    element.dataset.state = "in-progress";
    element.dataset.itemId = itemId;
    const who = document.createElement("span");
    who.className = "turn-who";
    who.textContent = LABELS[role] ?? role;
    const text = document.createElement("p");
    text.className = "turn-text";
    const badge = document.createElement("span");
    badge.className = "turn-badge";
    badge.textContent = gettext("Interrupted");
    element.append(who, text, badge);
    return { id: itemId, role, element, textNode: text, previous: null };
  }

  appendText(itemId, role, delta) {
    const entry = this.ensure(itemId, role);
    this.write(entry, entry.textNode.textContent + delta);
  }

  setText(itemId, role, text, state = "done") {
    const entry = this.ensure(itemId, role);
    this.write(entry, text);
    if (entry.element.dataset.state !== "interrupted") entry.element.dataset.state = state;
  }

  setState(itemId, state) {
    const entry = this.entries.get(itemId);
    if (!entry) return;
    // The "Interrupted" badge makes the line taller.
    this.keepFollowing(() => {
      entry.element.dataset.state = state;
    });
  }

  state(itemId) {
    return this.entries.get(itemId)?.element.dataset.state ?? null;
  }

  has(itemId) {
    return this.entries.has(itemId);
  }

  write(entry, text) {
    this.keepFollowing(() => {
      entry.textNode.textContent = text;
      entry.element.classList.toggle("turn--empty", text.length === 0);
    });
  }

  /** A line that is not an item: "Reconnected", "Conversation ended", ... */
  notice(text) {
    const id = `notice-${++this.notices}`;
    const element = document.createElement("li");
    element.className = "turn-notice";
    element.textContent = text;
    this.entries.set(id, { id, role: "notice", element, previous: this.lastId });
    this.lastId = id;
    this.place();
    return id;
  }

  /** Take a notice away again (the "reconnecting…" line, once reconnected). */
  remove(id) {
    const entry = this.entries.get(id);
    if (!entry) return;
    // Whatever followed it now follows what came before it.
    for (const other of this.entries.values()) {
      if (other.previous === id) other.previous = entry.previous;
    }
    if (this.lastId === id) this.lastId = entry.previous;
    this.entries.delete(id);
    entry.element.remove();
    this.place();
  }

  /** At the end of a connection, entries still waiting for text are finished as they are. */
  finishAll() {
    for (const entry of this.entries.values()) {
      const el = entry.element;
      if (el.dataset.state !== "in-progress") continue;
      el.dataset.state = entry.role === "assistant" ? "interrupted" : "done";
      if (!entry.textNode.textContent) {
        entry.textNode.textContent = entry.role === "user" ? gettext("(not transcribed)") : "";
      }
    }
  }

  /** Put every entry in chain order, moving only the elements that are out of place. */
  place() {
    this.keepFollowing(() => this.reorder());
  }

  reorder() {
    const ordered = chainOrder([...this.entries.values()]);
    ordered.forEach((entry, index) => {
      if (this.list.children[index] !== entry.element) {
        this.list.insertBefore(entry.element, this.list.children[index] ?? null);
      }
    });
    this.empty.hidden = this.entries.size > 0;
  }

  /**
   * Change the transcript with `change()`; if the reader was at the bottom before it, they
   * still are after it. Someone who scrolled up to read stays where they are.
   */
  keepFollowing(change) {
    const follow = this.atBottom();
    change();
    if (follow) this.scrollToEnd();
  }

  atBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 48;
  }

  scrollToEnd() {
    // Instant, never smooth: a smooth scroll is still under way when the next delta arrives,
    // and the atBottom() taken then would read "scrolled up" and stop following for good.
    this.scroller.scrollTo({ top: this.scroller.scrollHeight, behavior: "instant" });
  }
}

/** Entries in previous_item_id order; chains with an unknown head keep their arrival order. */
function chainOrder(entries) {
  const known = new Set(entries.map((e) => e.id));
  const next = new Map();
  for (const entry of entries) {
    const key = entry.previous ?? null;
    if (!next.has(key)) next.set(key, []);
    next.get(key).push(entry);
  }
  const placed = new Set();
  const ordered = [];
  const walk = (start) => {
    const stack = [start];
    while (stack.length) {
      const entry = stack.pop();
      if (placed.has(entry.id)) continue;
      placed.add(entry.id);
      ordered.push(entry);
      const followers = next.get(entry.id) ?? [];
      for (let i = followers.length - 1; i >= 0; i--) stack.push(followers[i]);
    }
  };
  for (const entry of entries) if (!known.has(entry.previous)) walk(entry);
  for (const entry of entries) if (!placed.has(entry.id)) walk(entry);
  return ordered;
}
