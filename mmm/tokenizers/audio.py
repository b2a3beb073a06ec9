"""Audio: decoded clips -> normalized log-mel spectrograms -> time frames or time-frequency patches.

``AudioTokenizer`` decodes wav/flac/mp3/ogg bytes with soundfile (libsndfile), mixes to mono,
resamples with torchaudio to one rate, crops to a fixed duration, computes a log-mel spectrogram
with torchaudio, normalizes it (per clip, or with dataset statistics written by
``mmm audio-stats``), and cuts it into positions for the masked-modeling objective:

- ``patch_mels: null`` (frames): each position is ``patch_frames`` consecutive spectrogram
  frames across every mel band, a 1-D sequence over time; ``SpanMasking`` on it hides
  contiguous stretches of time (wav2vec 2.0, w2v-BERT).
- ``patch_mels: 16`` (patches): each position is a ``patch_mels x patch_frames`` tile of the
  spectrogram (Audio-MAE); positions form a (time, frequency) grid, time first.

Clips shorter than the duration are padded with zeros after normalization (the feature mean);
the positions that hold only padding are marked unreal (``attention_mask`` False) so they are
neither encoded nor scored.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import soundfile as sf
import torch
from einops import rearrange
from torch import Tensor

from mmm import optional
from mmm.checks import require_at_least, require_one_of
from mmm.data.formats import AUDIO_EXTENSIONS
from mmm.tokenizers.base import (
    ContinuousSpec,
    Crop,
    PatchLayout,
    SampleError,
    Tokenizer,
    copy_with,
    crop_window,
    leading_real_positions,
)

Normalize = Literal["clip", "dataset"]


@dataclass(frozen=True)
class LogMelSettings:
    """How a waveform becomes a log-mel spectrogram (torchaudio ``MelSpectrogram``, then dB).

    The same settings must be used to compute dataset statistics (``mmm audio-stats``) and to
    train; the statistics file records them and the tokenizer refuses a mismatch.
    """

    sample_rate: int = 16000
    """Every clip is resampled to this rate (Hz)."""
    n_fft: int = 400
    """FFT size in samples (400 at 16 kHz = 25 ms windows, as in AST and Audio-MAE)."""
    hop_length: int = 160
    """Samples between frames (160 at 16 kHz = 10 ms)."""
    n_mels: int = 64
    """Mel bands (rows of the spectrogram)."""
    f_min: float = 0.0
    """Lowest mel filter frequency (Hz)."""
    f_max: float | None = None
    """Highest mel filter frequency (Hz); ``None`` = half the sample rate."""
    top_db: float = 80.0
    """Dynamic range kept below each clip's loudest bin, in dB (quieter bins are clamped)."""

    def __post_init__(self) -> None:
        require_at_least(
            "LogMelSettings",
            1,
            sample_rate=self.sample_rate,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            n_mels=self.n_mels,
        )
        nyquist = self.sample_rate / 2
        f_max = nyquist if self.f_max is None else self.f_max
        if not 0.0 <= self.f_min < f_max <= nyquist:
            raise ValueError(
                f"LogMelSettings: need 0 <= f_min < f_max <= sample_rate / 2 = {nyquist}, got "
                f"f_min={self.f_min}, f_max={self.f_max}"
            )
        if self.top_db <= 0:
            raise ValueError(f"LogMelSettings: top_db must be > 0, got {self.top_db}")

    def transform(self) -> torch.nn.Module:
        """The torchaudio pipeline: waveform (N,) -> log-mel (n_mels, 1 + N // hop_length)."""
        transforms = optional.torchaudio().transforms
        return torch.nn.Sequential(
            transforms.MelSpectrogram(
                sample_rate=self.sample_rate,
                n_fft=self.n_fft,
                hop_length=self.hop_length,
                f_min=self.f_min,
                f_max=self.f_max,
                n_mels=self.n_mels,
                power=2.0,
            ),
            transforms.AmplitudeToDB(stype="power", top_db=self.top_db),
        )


@dataclass(frozen=True)
class AudioItem:
    """One decoded clip, what ``collate`` batches.

    Attributes:
        features: (n_mels, num_frames) normalized log-mel, zero-padded to the duration.
        real_frames: how many leading frames come from the clip (the rest is padding).
    """

    features: Tensor
    real_frames: int


# ------------------------------------------------------------------------------ waveforms
def read_audio(data: bytes, max_seconds: float | None = None) -> tuple[Tensor, int]:
    """Decode wav/flac/mp3/ogg bytes with libsndfile -> (channels, samples) float32 in [-1, 1],
    and the file's sample rate. (torchaudio >= 2.9 delegates loading to torchcodec, an extra
    native dependency; libsndfile reads these formats already.)

    Raises:
        ValueError: when the file declares more than ``max_seconds`` of audio (a corrupt
            header can claim billions of frames, which decoding would try to allocate), or
            holds non-finite values (NaN or inf, possible in float WAV files).
    """
    with sf.SoundFile(io.BytesIO(data)) as audio:
        rate, declared = audio.samplerate, audio.frames
        if max_seconds is not None and declared > max_seconds * rate:
            raise ValueError(
                f"declares {declared} frames ({declared / rate / 3600:.1f} h at {rate} Hz), more "
                f"than max_clip_seconds={max_seconds}: a corrupt header, or a recording to cut "
                "before sharding"
            )
        array = audio.read(dtype="float32", always_2d=True)  # (N, C)
    finite = np.isfinite(array)
    if not finite.all():
        raise ValueError(f"holds {int((~finite).sum())} non-finite values (NaN or inf)")
    return torch.from_numpy(np.ascontiguousarray(array.T)), rate  # (C, N)


def to_mono(waveform: Tensor) -> Tensor:
    """Average the channels: (C, N) -> (N,)."""
    return waveform.mean(dim=0)


def resample(waveform: Tensor, rate: int, target_rate: int) -> Tensor:
    """Band-limited sinc resampling (torchaudio) of (..., N) from ``rate`` to ``target_rate``."""
    if rate == target_rate:
        return waveform
    return optional.torchaudio().functional.resample(waveform, orig_freq=rate, new_freq=target_rate)


def peak_dbfs(waveform: Tensor) -> float:
    """Loudest sample in dB relative to full scale (``-inf`` for digital silence)."""
    peak = float(waveform.abs().max()) if waveform.numel() else 0.0
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf


# -------------------------------------------------------------------------------- patches
def patchify(features: Tensor, patch_mels: int, patch_frames: int) -> Tensor:
    """Cut spectrograms into positions, time-major (all bands of one time step, then the next).

    Args:
        features: (B, F, T) with F divisible by ``patch_mels`` and T by ``patch_frames``.

    Returns:
        (B, (T / patch_frames) * (F / patch_mels), patch_mels * patch_frames).
    """
    # (B, Fp * pf, Tp * pt) -> (B, Tp * Fp, pf * pt): time positions outer, bands inner
    return rearrange(features, "b (f pf) (t pt) -> b (t f) (pf pt)", pf=patch_mels, pt=patch_frames)


def unpatchify(patches: Tensor, n_mels: int, patch_mels: int, patch_frames: int) -> Tensor:
    """Inverse of ``patchify``: (B, L, patch_mels * patch_frames) -> (B, n_mels, T)."""
    # (B, Tp * Fp, pf * pt) -> (B, Fp * pf, Tp * pt)
    return rearrange(
        patches,
        "b (t f) (pf pt) -> b (f pf) (t pt)",
        f=n_mels // patch_mels,
        pf=patch_mels,
        pt=patch_frames,
    )


# ------------------------------------------------------------------------------ tokenizer
class AudioTokenizer(Tokenizer):
    """Audio clips -> normalized log-mel frames or patches, fixed duration, padding marked.

    Args:
        features: log-mel settings (rate, FFT, hop, mel bands, dynamic range).
        duration: seconds per sample; longer clips are cropped, shorter ones padded.
        patch_frames: spectrogram frames per position (time extent of a patch).
        patch_mels: mel bands per position; ``None`` = all bands (time frames, a 1-D
            sequence), else a divisor of ``n_mels`` (time-frequency patches on a grid).
        normalize: ``clip`` standardizes each clip by its own mean and std; ``dataset`` uses
            the mean and std in ``stats`` (AST and Audio-MAE normalize by dataset statistics).
        stats: JSON written by ``mmm audio-stats`` with the same ``features`` settings.
        crop: which window of a longer clip is kept: ``start``, ``center`` (deterministic, so
            validation is repeatable) or ``random`` (a new window each time: augmentation).
        silence_dbfs: clips whose loudest sample is quieter than this (dB full scale) are
            rejected as silent: they carry nothing to reconstruct and break per-clip scaling.
        max_clip_seconds: clips that declare a longer length are rejected before decoding (a
            corrupt header can claim billions of frames); cut longer recordings first.
    """

    modality_name = "audio"
    sample_keys = AUDIO_EXTENSIONS
    export_family = "vit"

    def __init__(
        self,
        features: LogMelSettings | None = None,
        duration: float = 2.0,
        patch_frames: int = 4,
        patch_mels: int | None = None,
        normalize: Normalize = "clip",
        stats: str | None = None,
        crop: Crop = "center",
        silence_dbfs: float = -60.0,
        max_clip_seconds: float = 600.0,
    ) -> None:
        self.features = features if features is not None else LogMelSettings()
        mels = self.features.n_mels
        require_at_least("AudioTokenizer", 1, patch_frames=patch_frames)
        if patch_mels is not None and (patch_mels < 1 or mels % patch_mels):
            raise ValueError(
                f"AudioTokenizer: patch_mels={patch_mels} must divide features.n_mels={mels}"
            )
        require_one_of("AudioTokenizer", "normalize", normalize, get_args(Normalize))
        if (normalize == "dataset") != (stats is not None):
            raise ValueError("AudioTokenizer: normalize='dataset' needs stats=<json>, and only it")
        require_one_of("AudioTokenizer", "crop", crop, get_args(Crop))
        self.duration = duration
        self.patch_frames = patch_frames
        self.patch_mels = patch_mels if patch_mels is not None else mels
        self.normalize = normalize
        self.stats = stats
        self.crop = crop
        self.silence_dbfs = silence_dbfs
        self.max_clip_seconds = max_clip_seconds
        self.num_samples = round(duration * self.features.sample_rate)
        # Frames of a full-length clip, cut to whole positions (a trailing part-position is dropped).
        self.num_frames = (
            self.num_samples // self.features.hop_length // patch_frames * patch_frames
        )
        if self.num_frames < patch_frames:
            raise ValueError(
                f"AudioTokenizer: duration={duration} s gives fewer than patch_frames="
                f"{patch_frames} frames at hop_length={self.features.hop_length}"
            )
        # One position needs its first STFT window plus patch_frames - 1 hops.
        self.min_samples = self.features.n_fft + (patch_frames - 1) * self.features.hop_length
        self.mean, self.std = self._load_stats(stats) if stats is not None else (0.0, 1.0)
        self._log_mel = self.features.transform()

    def patch_layout(self) -> PatchLayout:
        """The spectrogram as a one-channel ViT image with time as its height; mmm
        flattens an audio patch as (mels, frames)."""
        frames, mels = self.patch_frames, self.patch_mels
        return PatchLayout(
            img_size=(self.num_frames, self.features.n_mels),
            patch_size=(frames, mels),
            in_chans=1,
            kernel_pattern="d (pf pt) -> d 1 pt pf",
            kernel_axes={"pf": mels, "pt": frames},
        )

    def _load_stats(self, path: str) -> tuple[float, float]:
        try:
            stats = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"AudioTokenizer: cannot read stats file {path} ({error})") from error
        recorded = stats.get("features")
        if recorded != asdict(self.features):
            raise ValueError(
                f"AudioTokenizer: stats file {path} was computed with features={recorded}, but "
                f"this tokenizer uses {asdict(self.features)}; rerun mmm audio-stats"
            )
        mean, std = float(stats.get("mean", "nan")), float(stats.get("std", "nan"))
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise ValueError(
                f"AudioTokenizer: stats file {path} holds mean={mean}, std={std}; both must be "
                "finite and std > 0 (rerun mmm audio-stats)"
            )
        return mean, std

    # ---------------------------------------------------------------------- geometry
    @property
    def grid(self) -> tuple[int, int]:
        """(time positions, frequency positions) of one sample."""
        return self.num_frames // self.patch_frames, self.features.n_mels // self.patch_mels

    @property
    def spec(self) -> ContinuousSpec:
        rows, cols = self.grid
        return ContinuousSpec(
            input_dim=self.patch_mels * self.patch_frames,
            max_length=rows * cols,
            grid=(rows, cols) if cols > 1 else None,
        )

    # ---------------------------------------------------------------------- decoding
    def waveform(self, sample: dict[str, Any]) -> Tensor:
        """The sample's audio member as a mono waveform (N,) at ``features.sample_rate``,
        uncropped. Raises ``SampleError`` naming the sample when it is missing, undecodable,
        silent or shorter than one position."""
        key, url = sample.get("__key__"), sample.get("__url__")
        member = next((ext for ext in self.sample_keys if ext in sample), None)
        if member is None:
            found = sorted(k for k in sample if not k.startswith("__"))
            raise SampleError(f"no audio member {self.sample_keys} (members: {found})", key, url)
        try:
            audio, rate = read_audio(sample[member], self.max_clip_seconds)
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, MemoryError) as error:
            raise SampleError(f"cannot decode {member!r}: {error}", key, url) from error
        wave = resample(to_mono(audio), rate, self.features.sample_rate)  # (N,)
        if wave.shape[0] < self.min_samples:
            raise SampleError(
                f"clip of {wave.shape[0] / self.features.sample_rate:.3f} s is shorter than one "
                f"position ({self.min_samples / self.features.sample_rate:.3f} s = n_fft + "
                "(patch_frames - 1) * hop_length)",
                key,
                url,
            )
        loudest = peak_dbfs(wave)
        if loudest < self.silence_dbfs:
            raise SampleError(
                f"clip is silent (peak {loudest:.1f} dBFS < silence_dbfs={self.silence_dbfs})",
                key,
                url,
            )
        return wave

    def log_mel(self, wave: Tensor) -> Tensor:
        """Un-normalized log-mel of a waveform: (N,) -> (n_mels, 1 + N // hop_length) in dB."""
        return self._log_mel(wave)

    def decode_sample(self, sample: dict[str, Any]) -> AudioItem:
        wave = crop_window(self.waveform(sample), self.num_samples, self.crop)
        mel = self.log_mel(wave)[:, : self.num_frames]  # (F, T_real)
        if self.normalize == "clip":
            mel = (mel - mel.mean()) / mel.std().clamp_min(1e-5)
        else:
            mel = (mel - self.mean) / self.std
        real_frames = mel.shape[1]
        padded = torch.nn.functional.pad(mel, (0, self.num_frames - real_frames))  # (F, T)
        return AudioItem(features=padded, real_frames=real_frames)

    # ---------------------------------------------------------------------- batching
    def for_evaluation(self) -> AudioTokenizer:
        """The same settings with the middle window of long clips instead of a random one."""
        return self if self.crop != "random" else copy_with(self, crop="center")

    def collate(self, items: list[AudioItem]) -> dict[str, Tensor]:
        """Stack clips and cut them into positions.

        Returns:
            ``patches`` (B, L, input_dim) float, ``attention_mask`` and ``maskable`` (B, L)
            bool (``False`` at positions made only of padding), ``features`` (B, F, T) the
            normalized spectrograms, ``real_frames`` (B,) long.
        """
        features = torch.stack([item.features for item in items])  # (B, F, T)
        real_frames = torch.tensor([item.real_frames for item in items], dtype=torch.long)
        return {
            "patches": self.patchify(features),
            **self.position_masks(real_frames),
            "features": features,
            "real_frames": real_frames,
        }

    def patchify(self, features: Tensor) -> Tensor:
        """(B, n_mels, num_frames) spectrograms -> (B, L, input_dim) positions."""
        return patchify(features, self.patch_mels, self.patch_frames)

    def unpatchify(self, patches: Tensor) -> Tensor:
        """(B, L, input_dim) positions -> (B, n_mels, num_frames) spectrograms."""
        return unpatchify(patches, self.features.n_mels, self.patch_mels, self.patch_frames)

    def render(self, patches: Tensor, value_range: float = 3.0) -> Tensor:
        """Spectrogram pictures for ``mmm.callbacks.ReconstructionImages``: (B, L, P) positions
        -> (B, 3, n_mels, num_frames) RGB in [0, 1], low frequencies at the bottom, through
        matplotlib's ``magma`` colormap. Normalized values in ``[-value_range, value_range]``
        span the colormap (a fixed range, so original, masked and reconstructed rows compare;
        hidden positions drawn as zeros show as its middle)."""
        from matplotlib import colormaps

        spectrogram = self.unpatchify(patches.detach().float().cpu()).flip(1)  # (B, F, T)
        scaled = ((spectrogram + value_range) / (2 * value_range)).clamp(0, 1)
        rgb = colormaps["magma"](scaled.numpy())[..., :3]  # (B, F, T, 3)
        return torch.from_numpy(rgb).permute(0, 3, 1, 2).float()  # (B, 3, F, T)

    def position_masks(self, real_frames: Tensor) -> dict[str, Tensor]:
        """``attention_mask`` and ``maskable`` (B, L): a position is real when it holds at least
        one frame of the clip."""
        rows, cols = self.grid
        return leading_real_positions(real_frames, self.patch_frames, rows, repeat=cols)

    def __repr__(self) -> str:
        return (
            f"AudioTokenizer(features={self.features}, duration={self.duration}, "
            f"patch_frames={self.patch_frames}, patch_mels={self.patch_mels}, "
            f"normalize={self.normalize!r})"
        )
