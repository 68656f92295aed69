// The connection's life: opens the transport to the gateway (model, time zone, History's
// "Continue"): a WebRTC call (WebRTCClient) or a WebSocket (RealtimeClient), both the same to
// the conversation. Starts and stops the audio with it, explains a close in the page's language,
// and then either tries again after Reconnect's waits (asking the site first whether the user is
// still signed in) or gives up. A call this server or browser can't make (no RTCPeerConnection,
// or the calls endpoint answers 404/501) falls back to the WebSocket at once. Owns `wanted`:
// whether the user wants to be connected, and `transport`: which of the two it opens.
import { gettext, interpolate, speaksEnglish } from "./i18n.js";
import { RealtimeClient } from "./realtime-client.js";
import { WebRTCClient } from "./webrtc-client.js";

// The gateway sends an `error` event with a readable message before closing with one of these
// (voicechat/protocol.py CloseCode).
const CLOSE_MESSAGES = {
  1001: gettext("The server is restarting."),
  1006: gettext("The connection to the server was lost."),
  1011: gettext("The server hit an unexpected problem."),
  4001: gettext("The AI service couldn't be reached. Please try again in a moment."),
  4002: gettext("The AI service refused the connection."),
  4003: gettext("The AI service ended the conversation."),
  4004: gettext("The AI service reported a problem it can't recover from."),
  4005: gettext("This conversation reached its time limit. Start a new one to keep talking."),
  4006: gettext("An administrator ended this conversation."),
  4007: gettext("The server is restarting."),
  4008: gettext("This conversation reached its time limit. Start a new one to keep talking."),
  4010: gettext("Voice chat isn't set up on this server yet."),
  4011: gettext("This server doesn't allow that model."),
  4012: gettext(
    "You already have as many conversations open as allowed. End one to start another.",
  ),
  4020: gettext("The usage budget for voice chat has been reached."),
  4029: gettext("Too many new conversations in the last minute. Wait a moment and try again."),
  4401: gettext("You were signed out, or your access was withdrawn. Sign in again to go on."),
  4404: gettext("That conversation can't be continued here: it isn't one of yours."),
  4500: gettext("The server hit an unexpected problem."),
};
// The status line's short "why" next to "Ended"; the alert carries the full sentence.
const CLOSE_REASONS = {
  1001: gettext("the server restarted"),
  1006: gettext("connection lost"),
  1011: gettext("server error"),
  4001: gettext("AI service unreachable"),
  4002: gettext("the AI service refused"),
  4003: gettext("the AI service hung up"),
  4004: gettext("AI service error"),
  4005: gettext("time limit reached"),
  4006: gettext("ended by an administrator"),
  4007: gettext("the server restarted"),
  4008: gettext("time limit reached"),
  4010: gettext("not set up on this server"),
  4011: gettext("model not allowed"),
  4012: gettext("too many conversations"),
  4020: gettext("budget reached"),
  4029: gettext("too many new conversations"),
  4401: gettext("access withdrawn"),
  4404: gettext("not your conversation"),
  4500: gettext("server error"),
};
// Worth trying again: the network, the server or the provider blinked. Not: refusals, quotas,
// time limits, an administrator's hang-up. A socket that never opened is retried too, unless
// the user turns out to be signed out (checkSignedIn).
const RETRY_CODES = new Set([1001, 1006, 1011, 1012, 1013, 4001, 4003, 4007]);

export class Connection extends EventTarget {
  /**
   * @param {object} config from json_script: realtimePath, callsPath, model, resume
   * @param {object} parts
   * @param {import("./conversation.js").Conversation} parts.conversation
   * @param {import("./audio.js").AudioGraph} parts.audio
   * @param {import("./transcript.js").Transcript} parts.transcript
   * @param {import("./event-log.js").EventLog} parts.log
   * @param {import("./reconnect.js").Reconnect} parts.reconnect
   * @param {import("./chat-view.js").ChatView} parts.view for alerts
   * @param {string} parts.loginUrl the sign-in page, for a user who was signed out
   * @param {"webrtc"|"websocket"} parts.transport the one to open first
   */
  constructor(
    config,
    { conversation, audio, transcript, log, reconnect, view, loginUrl, transport },
  ) {
    super();
    this.config = config;
    this.conversation = conversation;
    this.audio = audio;
    this.transcript = transcript;
    this.log = log;
    this.reconnect = reconnect;
    this.view = view;
    this.loginUrl = loginUrl;
    this.transport = transport;
    this.wanted = false; // the user wants to be connected (drives reconnects)
    this.reconnectNotice = null; // the transcript's "reconnecting…" line, removed once back
    reconnect.addEventListener("retry", () => this.retryNow());
  }

  async connect() {
    if (this.wanted) return;
    this.wanted = true;
    this.reconnect.reset();
    this.view.hideAlert();
    this.conversation.setStatus("connecting");
    // The transport and the audio graph start together; the session takes longer than the audio.
    this.openSocket();
    await this.audio.start();
    // A call sends the microphone as its track, once the browser has opened it.
    this.conversation.client?.setMicrophone?.(this.audio.microphoneTrack);
  }

  /** Whether the WebRTC switch can be offered at all in this browser. */
  static get canCall() {
    return typeof window.RTCPeerConnection === "function";
  }

  /** The query both transports take: model, time zone, and History's "Continue" once. */
  nextQuery() {
    const query = new URLSearchParams();
    query.set("model", this.config.model);
    // The offline engine answers "what time is it?" in the user's own time zone.
    query.set("tz", Intl.DateTimeFormat().resolvedOptions().timeZone || "");
    const resume = this.config.resume;
    if (resume) {
      // History's "Continue": the gateway replays that transcript to the assistant first.
      // Once only: a later conversation on this page starts afresh.
      query.set("resume", String(resume.id));
      this.config.resume = null;
      const started = new Date(resume.started).toLocaleString(document.documentElement.lang, {
        dateStyle: "medium",
        timeStyle: "short",
      });
      this.transcript.notice(
        interpolate(gettext("Continuing your conversation of %(started)s"), { started }),
      );
    }
    return query;
  }

  openSocket(query = this.nextQuery()) {
    let client;
    if (this.transport === "webrtc" && Connection.canCall) {
      const url = new URL(this.config.callsPath, window.location.href);
      url.search = query.toString();
      client = new WebRTCClient(url.href, {
        csrfToken: document.querySelector("[name=csrfmiddlewaretoken]")?.value ?? "",
        onRemoteStream: (stream) => this.audio.playRemote(stream),
      });
      client.setMicrophone(this.audio.microphoneTrack);
    } else {
      if (this.transport === "webrtc") this.fallBack();
      const url = new URL(this.config.realtimePath, window.location.href);
      url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
      url.search = query.toString();
      client = new RealtimeClient(url.href);
      this.audio.playRemote(null); // replies play through the Player's worklet again
    }
    client.query = query;
    this.conversation.client = client;
    client.addEventListener("server-event", (event) => this.onServerEvent(event.detail));
    client.addEventListener("client-event", (event) => this.log.add("out", event.detail));
    client.addEventListener("close", (event) => this.onClose(client, event.detail));
    client.connect();
  }

  onServerEvent(event) {
    this.log.add("in", event);
    if (event.type === "session.created") this.onSessionStarted();
    this.conversation.onServerEvent(event);
  }

  /** A session began: the waits start over, and a conversation after a drop says it is new. */
  onSessionStarted() {
    const reconnected = this.reconnect.attempts > 0 || this.transcript.entries.size > 0;
    this.reconnect.reset();
    if (this.reconnectNotice) {
      this.transcript.remove(this.reconnectNotice);
      this.reconnectNotice = null;
    }
    if (reconnected) this.transcript.notice(gettext("New conversation"));
  }

  disconnect() {
    const client = this.conversation.client;
    if (!this.wanted && !client) return;
    this.wanted = false;
    this.reconnect.stop();
    this.conversation.end();
    this.audio.stop();
    this.conversation.setStatus("ended", gettext("you hung up"));
    client?.close(1000, "user ended the conversation");
  }

  /** WebRTC can't be used here: the WebSocket from now on, for as long as the page is open. */
  fallBack() {
    this.transport = "websocket";
    this.dispatchEvent(new Event("fallback"));
  }

  async onClose(client, { code, wasOpen, error, fallback }) {
    if (client !== this.conversation.client) return; // an old socket we already left
    this.conversation.end();
    this.audio.player?.interrupt();
    if (!this.wanted) return;
    if (fallback) {
      // No calls on this server (404/501) or in this browser: the WebSocket at once, with the
      // same query (a "Continue" still continues).
      this.fallBack();
      this.openSocket(client.query);
      return;
    }
    // The gateway explains a close in English: a page in another language says it in its own.
    const serverWords = code >= 4000 && error?.message;
    const message =
      (speaksEnglish && serverWords) ||
      CLOSE_MESSAGES[code] ||
      serverWords ||
      (wasOpen
        ? gettext("The connection closed unexpectedly.")
        : gettext("Couldn't reach the server."));
    if (wasOpen ? RETRY_CODES.has(code) : true) {
      // A socket refused before it opened looks the same for a server that is down and for a
      // user who was signed out (the handshake is refused with no reason): ask the site.
      const signedIn = wasOpen ? "yes" : await this.checkSignedIn();
      // Hung up, or retried by hand, meanwhile.
      if (!this.wanted || this.conversation.client) return;
      if (signedIn === "no") {
        this.giveUp(
          gettext("signed out"),
          gettext("You were signed out, so the conversation can't continue."),
          { href: this.signInUrl(), text: gettext("Sign in again") },
        );
        return;
      }
      const why =
        signedIn === "unreachable"
          ? gettext("Couldn't reach the server. You're still signed in.")
          : wasOpen
            ? message
            : gettext("Couldn't connect to the voice service. You're still signed in.");
      this.scheduleRetry(why);
      return;
    }
    this.giveUp(CLOSE_REASONS[code] ?? gettext("connection closed"), message);
  }

  giveUp(reason, message, link = null) {
    this.wanted = false;
    this.reconnect.stop();
    this.audio.stop();
    this.conversation.setStatus("ended", reason);
    this.view.showAlert(message, "error", { link });
  }

  /** "yes", "no" (signed out) or "unreachable", from a HEAD of this (sign-in only) page. */
  async checkSignedIn() {
    try {
      const response = await fetch(window.location.href, {
        method: "HEAD",
        credentials: "same-origin",
        cache: "no-store",
        redirect: "manual", // signed out: a redirect to the sign-in page
      });
      if (response.type === "opaqueredirect" || response.status === 401 || response.status === 403) {
        return "no";
      }
      return response.ok ? "yes" : "unreachable";
    } catch {
      return "unreachable";
    }
  }

  signInUrl() {
    const next = encodeURIComponent(window.location.pathname);
    return `${this.loginUrl}?next=${next}`;
  }

  /** Wait (1, 2, 4, ... 30 s, with a countdown) and try again. */
  scheduleRetry(message) {
    if (!this.reconnectNotice) {
      this.reconnectNotice = this.transcript.notice(gettext("Connection lost — reconnecting…"));
    }
    this.view.hideAlert();
    this.reconnect.schedule(message);
    if (this.conversation.status !== "reconnecting") this.conversation.setStatus("reconnecting");
  }

  retryNow() {
    if (!this.wanted || this.conversation.client) return;
    this.conversation.setStatus("reconnecting");
    this.openSocket();
  }
}
