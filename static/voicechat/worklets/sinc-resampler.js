// A streaming windowed-sinc resampler for the audio thread (imported by both worklets).
// Linear interpolation aliases audibly when going 48 kHz -> 24 kHz; a low-pass sinc kernel,
// precomputed for 256 fractional phases, does not, and costs ~40 multiply-adds per sample.
// All buffers are preallocated; push() never allocates.

const PHASES = 256;
const ZERO_CROSSINGS = 12; // kernel half-width, in units of the (lower) cutoff period

export class SincResampler {
  /** @param {number} inRate @param {number} outRate @param {number} maxInput frames per push */
  constructor(inRate, outRate, maxInput = 8192) {
    this.step = inRate / outRate; // input frames per output frame
    // Cut off a little below the lower Nyquist so the transition band stays out of hearing range.
    const cutoff = 0.92 * Math.min(1, outRate / inRate);
    this.half = Math.ceil(ZERO_CROSSINGS / cutoff);
    this.taps = 2 * this.half;
    this.table = new Float32Array(PHASES * this.taps);
    for (let p = 0; p < PHASES; p++) {
      const frac = p / PHASES;
      let sum = 0;
      for (let k = 0; k < this.taps; k++) {
        const x = k - this.half + 1 - frac; // distance from the output point, input frames
        const u = cutoff * x;
        const sinc = u === 0 ? 1 : Math.sin(Math.PI * u) / (Math.PI * u);
        const w = 0.5 + 0.5 * Math.cos((Math.PI * x) / (this.half + 1)); // Hann window
        const value = sinc * w;
        this.table[p * this.taps + k] = value;
        sum += value;
      }
      // Normalise each phase to unity DC gain, so silence stays silent and levels stay put.
      for (let k = 0; k < this.taps; k++) this.table[p * this.taps + k] /= sum;
    }
    this.buffer = new Float32Array(maxInput + 2 * this.taps + 4);
    this.zeros = new Float32Array(this.half + 2);
    this.length = 0; // valid frames in buffer
    this.pos = this.half - 1; // position of the next output frame, in buffer frames
    this.reset();
  }

  /** Forget all history (after a barge-in, for example). */
  reset() {
    this.buffer.fill(0);
    // Start with half a kernel of zeros so the first output frame lines up with input frame 0.
    this.length = this.half - 1;
    this.pos = this.half - 1;
  }

  /** Push enough silence to bring out the frames still held back by the kernel. */
  flush(output) {
    return this.push(this.zeros, this.zeros.length, output);
  }

  /** Largest number of output frames push() can produce for `frames` input frames. */
  maxOutput(frames) {
    return Math.ceil((frames + this.taps) / this.step) + 2;
  }

  /**
   * Resample `input` (frames [0, count)) into `output`; returns the number of frames written.
   * `output` must hold at least maxOutput(count) frames.
   */
  push(input, count, output) {
    let written = 0;
    let offset = 0;
    while (offset < count) {
      const room = this.buffer.length - this.length;
      const n = Math.min(room, count - offset);
      this.buffer.set(input.subarray(offset, offset + n), this.length);
      this.length += n;
      offset += n;
      written += this._drain(output, written);
    }
    return written;
  }

  _drain(output, start) {
    const { buffer, table, taps, half, step } = this;
    let written = start;
    // An output frame at `pos` needs input frames up to floor(pos) + half (+1 when rounding up).
    while (Math.floor(this.pos) + half + 1 < this.length) {
      let base = Math.floor(this.pos);
      let phase = Math.round((this.pos - base) * PHASES);
      if (phase === PHASES) {
        base += 1; // rounds up to the next input frame; the kernel still has room (half >= 2)
        phase = 0;
      }
      const row = phase * taps;
      const first = base - half + 1;
      let acc = 0;
      for (let k = 0; k < taps; k++) acc += buffer[first + k] * table[row + k];
      output[written++] = acc;
      this.pos += step;
    }
    // Drop input frames no future output frame can reach.
    const keepFrom = Math.max(0, Math.floor(this.pos) - half + 1);
    if (keepFrom > 0) {
      buffer.copyWithin(0, keepFrom, this.length);
      this.length -= keepFrom;
      this.pos -= keepFrom;
    }
    return written - start;
  }
}
