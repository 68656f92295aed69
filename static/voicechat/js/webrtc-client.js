// One WebRTC call to the gateway (POST /v1/realtime/calls, OpenAI's contract), with the same
// interface to the conversation as RealtimeClient: GA events in ("server-event") and out
// (send(), "client-event") on the `oai-events` data channel, and "close" when it is over.
// The microphone goes as the local track and the reply comes back as the remote track, played
// by an <audio> element: Chromium's echo canceller takes only peer-connection playback as its
// reference, so a reply on laptop speakers no longer interrupts itself. The server tracks
// playback (output_audio_buffer.started / stopped / cleared) and truncates a cut reply itself.
// Same-origin: the session cookie with Django's CSRF token, as the calls view requires.

let nextId = 1;

// A refused call: the gateway's WebSocket close code for the error it answered with, so the
// connection explains it and decides on a retry as for a socket (voicechat/calls/call.py).
const CLOSE_FOR_ERROR = {
  rate_limited: 4029,
  budget_exceeded: 4020,
  backend_not_configured: 4010,
  model_not_allowed: 4011,
  server_shutdown: 4007,
  upstream_unreachable: 4001,
  upstream_closed: 4003,
  ended_by_staff: 4006,
  session_time_limit: 4005,
  access_revoked: 4401,
  resume_not_allowed: 4404,
  server_error: 4500,
  invalid_api_key: 4002,
  account_deactivated: 4002,
  insufficient_quota: 4004,
  billing_hard_limit_reached: 4004,
};
const CLOSE_FOR_STATUS = { 429: 4012, 503: 4007, 502: 4001, 500: 4500, 403: 4404 };
// The server ended a call that was under way: the `error` it sent last says why.
const CALL_ENDED = 1000;
// What a press releases: the microphone's last frames are still on their way (capture, one
// 20 ms Opus frame, pacing, the server's jitter buffer) when the finger lifts.
const FLUSH_MS = 120;

export class WebRTCClient extends EventTarget {
  /**
   * @param {string} url the calls endpoint, with ?model=, tz and resume
   * @param {object} options
   * @param {string} options.csrfToken Django's CSRF token for the POST
   * @param {(stream: MediaStream) => void} options.onRemoteStream the reply's stream, to play
   */
  constructor(url, { csrfToken, onRemoteStream }) {
    super();
    this.url = url;
    this.csrfToken = csrfToken;
    this.onRemoteStream = onRemoteStream;
    this.transport = "webrtc";
    this.pc = null;
    this.channel = null;
    this.sender = null;
    this.microphone = null; // our clone of the microphone's track, on the sender
    this.microphoneOpen = false; // push-to-talk mutes it between presses
    this.location = null; // /v1/realtime/calls/rtc_..., for the hangup
    this.opened = false;
    this.closed = false;
    this.lastError = null;
    this.playoutDelayMs = 0; // the receiver's mean jitter-buffer delay, from getStats
    this.statsTimer = 0;
  }

  async connect() {
    let pc;
    try {
      pc = new RTCPeerConnection();
    } catch {
      this.finish({ code: 1006, wasOpen: false, fallback: true });
      return;
    }
    this.pc = pc;
    // The audio section the server answers on: sendrecv, the microphone replaced in once open.
    const transceiver = pc.addTransceiver("audio", { direction: "sendrecv" });
    this.sender = transceiver.sender;
    if (this.microphone) await this.sender.replaceTrack(this.microphone);
    pc.addEventListener("track", (event) => {
      const stream = event.streams[0] ?? new MediaStream([event.track]);
      this.onRemoteStream(stream);
    });
    pc.addEventListener("connectionstatechange", () => {
      // Failed: ICE lost the route (network change, the server gone). Closed: the server hung
      // up, after an `error` saying why.
      if (pc.connectionState === "failed") this.finish({ code: 1006, wasOpen: this.opened });
      if (pc.connectionState === "closed") this.finish({ code: this.endCode(), wasOpen: true });
    });
    const channel = pc.createDataChannel("oai-events");
    this.channel = channel;
    channel.addEventListener("open", () => {
      this.opened = true;
      this.dispatchEvent(new Event("open"));
      this.statsTimer = setInterval(() => this.readStats(), 1000);
    });
    channel.addEventListener("message", (message) => this.onMessage(message));
    channel.addEventListener("close", () => this.finish({ code: this.endCode(), wasOpen: true }));

    let response;
    try {
      await pc.setLocalDescription(await pc.createOffer());
      response = await fetch(this.url, {
        method: "POST",
        body: pc.localDescription.sdp,
        credentials: "same-origin",
        headers: { "Content-Type": "application/sdp", "X-CSRFToken": this.csrfToken },
      });
    } catch {
      this.finish({ code: 1006, wasOpen: false });
      return;
    }
    if (this.closed) {
      // Hung up while the offer was on its way: the server answered a call nobody will join.
      const location = response.headers.get("Location");
      if (response.status === 201 && location) this.hangUp(location);
      return;
    }
    if (response.status !== 201) {
      await this.refused(response);
      return;
    }
    this.location = response.headers.get("Location");
    try {
      await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
    } catch {
      this.finish({ code: 1006, wasOpen: false });
    }
  }

  /** The call was not answered: 404/501 mean no calls here (the page falls back to WebSocket). */
  async refused(response) {
    let error = null;
    try {
      error = (await response.json()).error ?? null;
    } catch {
      // not the gateway's JSON (a proxy's page): the status says enough
    }
    if (response.status === 404 || response.status === 501) {
      this.finish({ code: 1006, wasOpen: false, fallback: true });
      return;
    }
    if (response.status === 401 || error?.code === "csrf_failed" || error?.code === "cross_origin") {
      // Refused like a socket before it opened: the connection asks the site whether the user
      // is still signed in.
      this.finish({ code: 1006, wasOpen: false });
      return;
    }
    this.lastError = error;
    const code = CLOSE_FOR_ERROR[error?.code] ?? CLOSE_FOR_STATUS[response.status] ?? 4500;
    this.finish({ code, wasOpen: true });
  }

  /** The close code for a call the server ended: from its last `error`, if it sent one. */
  endCode() {
    const code = this.lastError?.code;
    if (code === "call_ended") return CALL_ENDED;
    // Any other error was a passing one (a refused event): the connection itself was lost.
    return CLOSE_FOR_ERROR[code] ?? 1006;
  }

  onMessage(message) {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;
    }
    if (event.type === "error") this.lastError = event.error ?? null;
    this.dispatchEvent(new CustomEvent("server-event", { detail: event }));
  }

  get isOpen() {
    return this.channel?.readyState === "open";
  }

  send(event) {
    if (!this.isOpen) return null;
    const eventId = `evt_web_${Date.now().toString(36)}_${nextId++}`;
    const framed = { event_id: eventId, ...event };
    this.channel.send(JSON.stringify(framed));
    this.dispatchEvent(new CustomEvent("client-event", { detail: framed }));
    return eventId;
  }

  /** The track carries the microphone: nothing to append. */
  appendAudio() {
    return null;
  }

  /** Put the microphone's track on the call (a copy, so muting it leaves the waveform alone). */
  async setMicrophone(track) {
    if (!track || this.microphone?.sourceId === track.id) return;
    this.microphone?.stop();
    const copy = track.clone();
    copy.sourceId = track.id;
    copy.enabled = this.microphoneOpen;
    this.microphone = copy;
    if (this.sender) await this.sender.replaceTrack(copy);
  }

  /** Hands-free: always open. Push-to-talk: open only while the button is held. */
  setMicrophoneOpen(open) {
    this.microphoneOpen = open;
    if (this.microphone) this.microphone.enabled = open;
  }

  /** Wait for the last of a press's audio to reach the server before its commit. */
  flushMicrophone() {
    return new Promise((resolve) => setTimeout(resolve, FLUSH_MS));
  }

  async readStats() {
    if (!this.pc || this.closed) return;
    const stats = await this.pc.getStats();
    stats.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "audio" && s.jitterBufferEmittedCount) {
        this.playoutDelayMs = (1000 * s.jitterBufferDelay) / s.jitterBufferEmittedCount;
      }
    });
  }

  /** Hang up: the server ends and stores the conversation; then the connection goes. */
  close() {
    if (this.closed) return;
    if (this.location) this.hangUp(this.location);
    this.finish({ code: 1000, wasOpen: this.opened, quiet: true });
  }

  hangUp(location) {
    // keepalive: the hangup still goes when the page is being closed.
    fetch(`${location}/hangup`, {
      method: "POST",
      credentials: "same-origin",
      keepalive: true,
      headers: { "X-CSRFToken": this.csrfToken },
    }).catch(() => {});
  }

  finish({ code, wasOpen, fallback = false, quiet = false }) {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.statsTimer);
    this.microphone?.stop();
    this.pc?.close();
    if (quiet) return; // a hangup of our own: the connection already knows
    this.dispatchEvent(
      new CustomEvent("close", {
        detail: { code, reason: "", wasOpen, error: this.lastError, fallback },
      }),
    );
  }
}
