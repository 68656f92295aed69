"""Has the user finished their turn? Smart-Turn v3.2 (ONNX) judges the speech before a pause.

semantic_vad (session.py) asks this while the user is silent: a finished sentence ends the turn
~0.3 s into the pause, a sentence broken off ("a pizza with...") is given up to the eagerness'
maximum wait. The model ships in the `pipecat-ai` wheel (BSD-2-Clause), installed with --no-deps:
its file is found and hash-checked by model_files.py without importing pipecat (whose imports
pull in dozens of packages), and its feature code is copied below. One model per process, shared
by every conversation; calls run in the "turn" worker pool (workers.py), ~40 ms each on one core.
LOCAL_TURN_MODEL_PATH takes another Smart-Turn v3 ONNX file instead, and LOCAL_TURN_MODEL a
factory of your own (`f()` returning a TurnModel).
"""

import importlib
import logging
import threading
import time
from pathlib import Path
from typing import Protocol

import numpy as np
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from numpy.lib.stride_tricks import sliding_window_view

from .audio import PCM_RATE, resample_pcm16
from .model_files import ModelFile, ModelUnavailable, PackagedModel

logger = logging.getLogger(__name__)

SMART_TURN_V3_2 = PackagedModel(
    title="Smart-Turn v3.2 (end of turn)",
    requirements=("pipecat-ai==1.14.0",),
    files=(
        ModelFile(
            "smart-turn-v3.2-cpu.onnx",
            ("pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",),
            "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f",
        ),
    ),
)


class TurnModel(Protocol):
    def probability_complete(self, pcm16_24k: bytes) -> float:
        """P(the speaker has finished their turn) after this audio (PCM16 24 kHz mono)."""
        ...


# --- Whisper log-mel features, as Smart-Turn v3 was trained on --------------------------------
# Copied from pipecat-ai 1.14.0, pipecat/audio/turn/smart_turn/_whisper_features.py and
# local_smart_turn_v3.py: Copyright (c) 2024-2026 Daily, BSD-2-Clause (the wheel's LICENSE);
# portions derived from Hugging Face Transformers' WhisperFeatureExtractor, Copyright 2022-2023
# The HuggingFace Inc. team, Apache-2.0. Shortened to the one configuration Smart-Turn uses.

TURN_RATE = 16000
WINDOW_SAMPLES = 8 * TURN_RATE  # the model sees the last 8 s
_N_FFT = 400
_HOP_LENGTH = 160
_N_MELS = 80


def _hertz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    mels = 3.0 * freq / 200.0
    high = freq >= 1000.0
    mels[high] = 15.0 + np.log(freq[high] / 1000.0) * (27.0 / np.log(6.4))
    return mels


def _mel_to_hertz(mels: np.ndarray) -> np.ndarray:
    freq = 200.0 * mels / 3.0
    high = mels >= 15.0
    freq[high] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mels[high] - 15.0))
    return freq


def _mel_filters() -> np.ndarray:
    """Slaney-normalised triangular filters, shape (N_FFT // 2 + 1, N_MELS)."""
    edges = np.array([0.0, TURN_RATE / 2.0])
    mel_min, mel_max = _hertz_to_mel(edges)
    filter_freqs = _mel_to_hertz(np.linspace(mel_min, mel_max, _N_MELS + 2))
    fft_freqs = np.linspace(0, TURN_RATE // 2, _N_FFT // 2 + 1)
    filter_diff = np.diff(filter_freqs)
    slopes = np.expand_dims(filter_freqs, 0) - np.expand_dims(fft_freqs, 1)
    down = -slopes[:, :-2] / filter_diff[:-1]
    up = slopes[:, 2:] / filter_diff[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    return filters * (2.0 / (filter_freqs[2 : _N_MELS + 2] - filter_freqs[:_N_MELS]))


_HANN = np.hanning(_N_FFT + 1)[:-1]  # periodic, as torch.hann_window
_MEL_FILTERS_T = _mel_filters().T


def log_mel_features(audio: np.ndarray) -> np.ndarray:
    """Whisper log-mel features (80 x 800, float32) of exactly WINDOW_SAMPLES of 16 kHz audio."""
    x = audio.astype(np.float32)
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    pad = _N_FFT // 2
    padded = np.pad(x.astype(np.float64), (pad, pad), mode="reflect")
    frames = sliding_window_view(padded, _N_FFT)[::_HOP_LENGTH]
    power = (np.abs(np.fft.rfft(frames * _HANN, axis=-1)) ** 2).T
    log_spec = np.log10(np.maximum(1e-10, _MEL_FILTERS_T @ power))[:, :-1]
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def last_window(pcm16_24k: bytes) -> np.ndarray:
    """The last 8 s of the audio at 16 kHz in [-1, 1], zero-padded at the start if shorter."""
    samples = np.frombuffer(resample_pcm16(pcm16_24k, PCM_RATE, TURN_RATE), dtype="<i2")
    audio = samples[-WINDOW_SAMPLES:].astype(np.float32) / 32768.0
    return np.pad(audio, (WINDOW_SAMPLES - audio.size, 0))


# --- The model --------------------------------------------------------------------------------


class SmartTurn:
    """Smart-Turn v3 on onnxruntime, one intra-op thread: many conversations share the cores."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def probability_complete(self, pcm16_24k: bytes) -> float:
        features = log_mel_features(last_window(pcm16_24k))[np.newaxis]
        (output,) = self._session.run(None, {"input_features": features})
        return float(output.reshape(-1)[0])  # the model ends in a sigmoid


def model_path() -> Path:
    """The ONNX file to load: LOCAL_TURN_MODEL_PATH as given, else the pinned one, verified."""
    custom = settings.LOCAL_TURN_MODEL_PATH
    if custom:
        path = Path(custom).expanduser()
        if not path.is_file():
            raise ModelUnavailable(
                f"LOCAL_TURN_MODEL_PATH={custom!r} must be a Smart-Turn v3 ONNX file; "
                "there is no such file."
            )
        return path  # the deployer's own model: no hash to check it against
    return SMART_TURN_V3_2.directory() / SMART_TURN_V3_2.files[0].name


_chosen: dict[tuple[str, str], TurnModel] = {}
_lock = threading.Lock()


def get_turn_model() -> TurnModel:
    """The process-wide turn model, loaded on first use (~0.1 s)."""
    # Settings are part of the key so that a changed setting (in tests) picks anew.
    key = (settings.LOCAL_TURN_MODEL, settings.LOCAL_TURN_MODEL_PATH)
    with _lock:
        if key not in _chosen:
            _chosen[key] = _choose(settings.LOCAL_TURN_MODEL)
        return _chosen[key]


def _choose(name: str) -> TurnModel:
    if name == "smart-turn":
        started = time.perf_counter()
        model = SmartTurn(model_path())
        logger.info("loaded Smart-Turn in %.2f s", time.perf_counter() - started)
        return model
    if "." in name:
        module_name, _, attribute = name.rpartition(".")
        try:
            return getattr(importlib.import_module(module_name), attribute)()
        except (ImportError, AttributeError) as error:
            raise ImproperlyConfigured(
                f"LOCAL_TURN_MODEL={name!r} cannot be imported: {error}"
            ) from error
    raise ImproperlyConfigured(
        f"LOCAL_TURN_MODEL must be smart-turn or a dotted path to a factory, got {name!r}"
    )


def preload() -> None:
    """Load the model and run it once, so the first pause does not pay onnxruntime's set-up."""
    get_turn_model().probability_complete(b"\0\0" * PCM_RATE)


def check_model() -> list[checks.CheckMessage]:
    """System check: the turn model semantic_vad needs is installed and the pinned file."""
    if settings.LOCAL_TURN_DETECTION != "semantic_vad" or settings.LOCAL_TURN_MODEL != "smart-turn":
        return []
    try:
        model_path()
    except ImproperlyConfigured as error:
        return [
            checks.Error(
                str(error),
                hint="Or set LOCAL_TURN_DETECTION=server_vad (a fixed 500 ms silence ends a turn).",
                id="voicechat.E103",
            )
        ]
    return []
