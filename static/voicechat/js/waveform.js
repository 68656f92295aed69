// A calm live waveform: level bars drawn from an AnalyserNode on a canvas, once per display
// frame (requestAnimationFrame), sized for the screen's pixel ratio so it stays crisp on HiDPI.

const BAR_GAP = 3; // CSS pixels between bars
const BAR_WIDTH = 3;

export class Waveform {
  /** @param {HTMLCanvasElement} canvas */
  constructor(canvas) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d");
    this.analyser = null;
    this.samples = null;
    this.levels = new Float32Array(0);
    this.active = false; // dimmed when not listening / not speaking
    this.frame = 0;
    this.color = "";
    this.quietFrames = 0;
    this.painted = null; // the `active` look last painted
    this.resized = true;
    this.width = 0;
    this.height = 0;
    this.ratio = 1;
    this.resize();
    this.observer = new ResizeObserver(() => this.resize());
    this.observer.observe(canvas);
    this.draw = this.draw.bind(this);
    this.frame = requestAnimationFrame(this.draw);
  }

  attach(analyser) {
    this.analyser = analyser;
    this.samples = analyser ? new Float32Array(analyser.fftSize) : null;
  }

  resize() {
    const rect = this.canvas.getBoundingClientRect();
    this.ratio = window.devicePixelRatio || 1;
    this.width = Math.max(1, rect.width);
    this.height = Math.max(1, rect.height);
    this.canvas.width = Math.round(this.width * this.ratio);
    this.canvas.height = Math.round(this.height * this.ratio);
    this.resized = true;
    const bars = Math.max(8, Math.floor(this.width / (BAR_WIDTH + BAR_GAP)));
    if (bars !== this.levels.length) this.levels = new Float32Array(bars);
  }

  /** Feed the newest audio into the bar levels, scrolling right to left like a voice memo. */
  sample() {
    if (!this.analyser) return 0;
    this.analyser.getFloatTimeDomainData(this.samples);
    // RMS of the most recent ~20 ms; a gentle power curve keeps quiet speech visible.
    const n = Math.min(this.samples.length, Math.round(this.analyser.context.sampleRate / 50));
    let sum = 0;
    for (let i = this.samples.length - n; i < this.samples.length; i++) {
      sum += this.samples[i] * this.samples[i];
    }
    return Math.min(1, 3 * Math.pow(Math.sqrt(sum / n), 0.7));
  }

  draw() {
    this.frame = requestAnimationFrame(this.draw);
    const level = this.sample();
    this.levels.copyWithin(0, 1);
    this.levels[this.levels.length - 1] = level;
    // Nothing to animate (no sound for a whole width, same look as last frame): skip the paint.
    if (level === 0) this.quietFrames += 1;
    else this.quietFrames = 0;
    const still = this.quietFrames > this.levels.length && this.painted === this.active;
    if (still && !this.resized) return;
    this.painted = this.active;
    this.resized = false;

    const { context: g, ratio, width, height, levels } = this;
    // Reading computed style every frame forces style work; twice a second follows theme changes.
    if (this.frame % 30 === 0 || !this.color) {
      this.color = getComputedStyle(this.canvas).getPropertyValue("--wave-color").trim() || "#888";
    }
    const color = this.color;
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    g.fillStyle = color;
    g.globalAlpha = this.active ? 1 : 0.35;
    const mid = height / 2;
    const step = BAR_WIDTH + BAR_GAP;
    const offset = width - levels.length * step;
    for (let i = 0; i < levels.length; i++) {
      const h = Math.max(BAR_WIDTH, levels[i] * (height - 4));
      const x = offset + i * step;
      roundedBar(g, x, mid - h / 2, BAR_WIDTH, h);
    }
  }

  destroy() {
    cancelAnimationFrame(this.frame);
    this.observer.disconnect();
  }
}

function roundedBar(g, x, y, w, h) {
  const r = w / 2;
  g.beginPath();
  g.moveTo(x, y + r);
  g.arc(x + r, y + r, r, Math.PI, 0);
  g.lineTo(x + w, y + h - r);
  g.arc(x + r, y + h - r, r, 0, Math.PI);
  g.closePath();
  g.fill();
}
