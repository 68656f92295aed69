// Why the microphone could not be opened, in words a person can act on.

import { gettext, interpolate } from "./i18n.js";

export class MicrophoneError extends Error {
  constructor(kind, message) {
    super(message);
    this.kind = kind; // "denied" | "missing" | "busy" | "insecure" | "unknown"
  }
}

/** Plain words for why the microphone could not be opened. */
export function describeMicrophoneError(error) {
  switch (error?.name) {
    case "NotAllowedError":
    case "SecurityError":
      return new MicrophoneError(
        "denied",
        gettext(
          "Microphone access is blocked. Allow it in your browser's site settings and reconnect — or type your messages below.",
        ),
      );
    case "NotFoundError":
    case "OverconstrainedError":
      return new MicrophoneError(
        "missing",
        gettext("No microphone was found. Plug one in and reconnect — or type your messages below."),
      );
    case "NotReadableError":
    case "AbortError":
      return new MicrophoneError(
        "busy",
        gettext(
          "The microphone couldn't be started; another app may be using it. You can type your messages below.",
        ),
      );
    default:
      return new MicrophoneError(
        "unknown",
        interpolate(
          gettext(
            "The microphone couldn't be opened (%(error)s). You can type your messages below.",
          ),
          { error: error?.message || error },
        ),
      );
  }
}
