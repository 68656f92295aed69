// Why the microphone could not be opened, in words a person can act on.

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
        "Microphone access is blocked. Allow it in your browser's site settings and reconnect — or type your messages below.",
      );
    case "NotFoundError":
    case "OverconstrainedError":
      return new MicrophoneError(
        "missing",
        "No microphone was found. Plug one in and reconnect — or type your messages below.",
      );
    case "NotReadableError":
    case "AbortError":
      return new MicrophoneError(
        "busy",
        "The microphone couldn't be started; another app may be using it. You can type your messages below.",
      );
    default:
      return new MicrophoneError(
        "unknown",
        `The microphone couldn't be opened (${error?.message || error}). You can type your messages below.`,
      );
  }
}
