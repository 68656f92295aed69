// PCM16 <-> base64 helpers for the Realtime protocol's audio fields.

/** Base64 of an ArrayBuffer (a 40 ms chunk is 1920 bytes, so one pass is cheap). */
export function toBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes.toBase64) return bytes.toBase64(); // Chrome 140+, Firefox 133+
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/** An ArrayBuffer of the bytes in a base64 string. */
export function fromBase64(text) {
  if (Uint8Array.fromBase64) return Uint8Array.fromBase64(text).buffer;
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes.buffer;
}

/** Milliseconds of 24 kHz mono PCM16 in `byteLength` bytes. */
export function pcm16Ms(byteLength) {
  return byteLength / 2 / 24;
}
