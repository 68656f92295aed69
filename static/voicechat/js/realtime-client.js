// One WebSocket to the gateway (WS /v1/realtime), speaking GA Realtime protocol JSON.
// The browser authenticates with its session cookie; the server holds the provider key.
import { toBase64 } from "./pcm.js";

let nextId = 1;

export class RealtimeClient extends EventTarget {
  /** @param {string} url ws(s):// URL of the gateway, including ?model= */
  constructor(url) {
    super();
    this.url = url;
    this.transport = "websocket"; // as WebRTCClient's, which the conversation tells apart
    this.ws = null;
    this.opened = false;
    this.lastError = null; // the last `error` event; explains the close that follows it
  }

  connect() {
    this.ws = new WebSocket(this.url);
    this.ws.addEventListener("open", () => {
      this.opened = true;
      this.dispatchEvent(new Event("open"));
    });
    this.ws.addEventListener("message", (message) => this.onMessage(message));
    this.ws.addEventListener("close", (close) => {
      this.dispatchEvent(
        new CustomEvent("close", {
          detail: {
            code: close.code,
            reason: close.reason,
            wasOpen: this.opened,
            error: this.lastError,
          },
        }),
      );
    });
  }

  onMessage(message) {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return; // not ours to interpret; the protocol is JSON text only
    }
    if (event.type === "error") this.lastError = event.error ?? null;
    this.dispatchEvent(new CustomEvent("server-event", { detail: event }));
  }

  get isOpen() {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  /** Send a client event; returns its event_id (echoed in any `error` it causes). */
  send(event) {
    if (!this.isOpen) return null;
    const eventId = `evt_web_${Date.now().toString(36)}_${nextId++}`;
    const framed = { event_id: eventId, ...event };
    this.ws.send(JSON.stringify(framed));
    this.dispatchEvent(new CustomEvent("client-event", { detail: framed }));
    return eventId;
  }

  /** Append one PCM16 24 kHz chunk to the input audio buffer. */
  appendAudio(pcm) {
    return this.send({ type: "input_audio_buffer.append", audio: toBase64(pcm) });
  }

  close(code = 1000, reason = "client closed") {
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(code, reason);
  }
}
