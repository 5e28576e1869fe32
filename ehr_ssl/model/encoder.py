"""The visit encoder: `EHRConfig` and `EHREncoder`, a pre-LayerNorm transformer over token
sequences from `ehr_ssl.tokens.tokenizer` (one model, one file).

Each token's input is the sum of five embeddings: its code, its value bin, its time relative to
the prediction time (log-bucketed), its segment (static / history / current visit) and its
position. Attention is `torch.nn.functional.scaled_dot_product_attention` (with the padding
mask it takes the memory-efficient kernel on GPU; flash attention would need padding-free
batches). The encoder returns hidden states and a pooled visit vector
([CLS] or the masked mean), and on request the readout downstream models read (`readout`);
heads for the objectives live in `ehr_ssl.model.heads`.

`import ehr_ssl` registers the classes, so `AutoConfig`/`AutoModel.from_pretrained(dir)` work.
"""

from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ehr_ssl.artifacts import (
    check_tensor_shapes,
    load_safetensors,
    read_json,
    save_safetensors,
    write_failure,
)
from ehr_ssl.config import MAX_TOKENS_PER_VISIT, MAX_WIDTH, READOUTS, WINDOW_DAYS
from ehr_ssl.errors import InputError
from ehr_ssl.layout import MODEL_CONFIG_FILE, WEIGHTS_FILE
from ehr_ssl.tokens.vocab import (
    NOT_EVENT_IDS,
    PAD_ID,
    SEGMENT_CURRENT,
    SEGMENT_HISTORY,
    VISIT_ID,
)

POOLINGS = ("cls", "mean")
# How a value bin enters a token's input (EHRConfig.value_embedding).
VALUE_EMBEDDINGS = ("shared", "per_code")
# Whether a code's vector adds its ancestors' (EHRConfig.code_hierarchy).
CODE_HIERARCHIES = ("none", "ancestors")
# The nearest ancestors a code keeps: a deep parent table (SNOMED) can hold dozens, and each
# token gathers one vector per kept ancestor.
MAX_ANCESTORS_PER_CODE = 8
# The buffer (and safetensors key) of each code's ancestor ids: data made from the vocabulary.
CODE_ANCESTORS_BUFFER = "code_ancestor_ids"
# Eval mode pads each visit to its length rounded up to this, never to its batch's longest
# visit (`EHREncoder._encode_by_width`); 8 also suits GPU tensor cores.
EVAL_WIDTH_MULTIPLE = 8
# The range of each size: generous but finite (as the settings' in ehr_ssl.config), so that an
# absurd value (a hand-edited config.json, a [model] table) is refused before any allocation.
SIZE_RANGES = {
    "hidden_size": (1, MAX_WIDTH),
    "num_hidden_layers": (1, 256),
    "num_attention_heads": (1, MAX_WIDTH),
    "intermediate_size": (1, 4 * MAX_WIDTH),
    "max_position_embeddings": (1, MAX_TOKENS_PER_VISIT),
    "vocab_size": (1, 10**8),
    "n_value_bins": (1, 1024),
    "n_time_buckets": (1, 4096),
    "n_segments": (3, 64),  # the tokenizer's segment ids are 0, 1 and 2
    "n_code_ancestors": (0, 10**8),
    "ancestors_per_code": (1, MAX_ANCESTORS_PER_CODE),
    "pool_width": (0, 4 * MAX_WIDTH),
}
# Settings of EHRConfig that fine-tuning sets, never a [model] table: where to set them instead.
SET_BY_FINETUNING = {"readout": "finetune.readout"}
# ... and the one pretraining sets: the forecast term gives the encoder its forecast state.
SET_BY_PRETRAINING = {"forecast_state": "objective.forecast_weight"}
FORECAST_READOUT_NEEDS = (
    'the "forecast" readout needs the forecast state that pretraining with the forecast term '
    "(objective.forecast_weight > 0) gives an encoder, and this one has none: pretrain with "
    'it, or set finetune.readout = "segments"'
)
# 40 GB of float32 weights, 160 GB with gradients and AdamW's moments: more than one GPU holds.
MAX_PARAMETERS = 10**10


def _check_sizes(sizes: dict[str, int]) -> None:
    """ValueError naming the size at fault: out of its range, or too many parameters in all."""
    for name, value in sizes.items():
        low, high = SIZE_RANGES[name]
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
        if value > high:
            raise ValueError(f"{name} must be <= {high}, got {value}")
    d, embedded = sizes["hidden_size"], ("vocab_size", "n_value_bins", "n_time_buckets",
                                         "n_segments", "max_position_embeddings",
                                         "n_code_ancestors")  # fmt: skip
    per_layer = 4 * d * d + 2 * d * sizes["intermediate_size"]  # attention, then the MLP
    parameters = sizes["num_hidden_layers"] * per_layer + d * sum(sizes[n] for n in embedded)
    if parameters > MAX_PARAMETERS:
        raise ValueError(
            f"about {parameters:.2g} parameters, more than {MAX_PARAMETERS:.0g}: "
            "lower hidden_size, num_hidden_layers or intermediate_size"
        )


def _check_architecture(config: EHRConfig) -> None:
    """ValueError naming the argument at fault, for any value no encoder can be built with."""
    sizes = {name: getattr(config, name) for name in SIZE_RANGES}
    _check_sizes(sizes)
    hidden_size, num_attention_heads = sizes["hidden_size"], sizes["num_attention_heads"]
    if hidden_size % num_attention_heads:
        raise ValueError(
            f"hidden_size {hidden_size} is not a multiple of num_attention_heads "
            f"{num_attention_heads}"
        )
    pooling, readout = config.pooling, config.readout
    value_embedding, code_hierarchy = config.value_embedding, config.code_hierarchy
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
    if readout == "forecast" and not config.forecast_state:
        raise ValueError(FORECAST_READOUT_NEEDS)
    if value_embedding not in VALUE_EMBEDDINGS:
        raise ValueError(
            f"value_embedding must be one of {VALUE_EMBEDDINGS}, got {value_embedding!r}"
        )
    if code_hierarchy not in CODE_HIERARCHIES:
        raise ValueError(
            f"code_hierarchy must be one of {CODE_HIERARCHIES}, got {code_hierarchy!r}"
        )
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        value = getattr(config, name)
        if not (math.isfinite(value) and 0 <= value < 1):
            raise ValueError(f"{name} must be in [0, 1), got {value}")


def pooled_dim(config: EHRConfig) -> int:
    """Width of a pooled token summary (P): pool_width when the token states are pooled through
    the learned feature map, else hidden_size."""
    return config.pool_width or config.hidden_size


def readout_dim(config: EHRConfig, readout: str | None = None) -> int:
    """Width of the visit vector under `readout` (one of READOUTS; the config's when None)."""
    readout = readout or config.readout
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
    if readout == "forecast":  # the segment readout and the forecast state (D)
        return readout_dim(config, "segments") + config.hidden_size
    parts = {"pooled": 1, "segments": 3, "windows": 3 + len(WINDOW_DAYS)}[readout]
    counts = 0 if readout == "pooled" else parts - 1
    return parts * pooled_dim(config) + counts


class EHRConfig(PreTrainedConfig):
    """Architecture of the encoder: the one description of the model. A pipeline's `[model]`
    table (presets included) holds these keyword arguments, less the sizes the tokenizer sets
    (`TOKENIZER_DERIVED`); extra keyword arguments go to PreTrainedConfig, so a saved
    config.json round-trips.

    Args:
        vocab_size: Codes, statics and special tokens (from the tokenizer).
        n_value_bins: Value bins 1..n plus 0 = no value (from the tokenizer).
        hidden_size: Width of the token states (D).
        num_hidden_layers: Transformer blocks.
        num_attention_heads: Heads per block; must divide hidden_size.
        intermediate_size: Width of each block's MLP.
        max_position_embeddings: Tokens per visit (the tokenizer's max_length).
        n_time_buckets: Log-spaced buckets of the time before the prediction time.
        time_bucket_scale: Buckets per e-fold of hours (see `time_buckets`): 5 resolves minutes
            near the prediction time and months in the history; 64 buckets reach ~30 years.
        n_segments: Static, history and current visit.
        hidden_dropout_prob: Dropout on hidden states. On CPU it costs ~15% of a step (random
            numbers for every hidden state); the augmented views already regularize pretraining.
        attention_probs_dropout_prob: Dropout on attention probabilities (> 0 forces the slower
            math attention kernel).
        pooling: Visit vector: "mean" (masked mean of all token states) or "cls" (the [CLS]
            state). The masked-event term trains the token states and never the [CLS] state;
            probes of pretrained encoders read the chronic conditions and the admission risk
            better from the mean (benchmarks/README.md, "pooling").
        value_embedding: How a numeric event's value bin enters its input: "shared" (one
            embedding per bin, added to the code's: bin 9 is the same vector for potassium and
            for the triage acuity, so a sum or mean over a visit's tokens mixes the values of
            different codes) or "per_code" (that, plus the bin's level, a learned scalar
            starting from -1 for the lowest decile to +1 for the highest, times a direction of
            the code's own: each code's value has a direction of its own in every sum of
            tokens, as code-specific value tokens give CLMBR/femr; issue 19).
        code_hierarchy: "none" (a code's vector is its own) or "ancestors": its own plus one
            per ancestor above at least 2 vocabulary codes (ICD category, ATC levels, or the
            tokens' MEDS parent table; `ehr_ssl.tokens.hierarchy`), in the input and in the
            tied decoders (as GRAM, Choi et al. 2017): a code seen a handful of times shares
            what its category learned from all its codes, as a tabular model's roll-up
            columns do (issue 19).
        n_code_ancestors: Ancestor vectors (from the vocabulary and its hierarchy); 0 without.
        ancestors_per_code: Nearest ancestors each code keeps (at most MAX_ANCESTORS_PER_CODE).
        readout: The visit vector downstream models read (the classifier's head, the linear
            probe, a bundle's `embed`): "pooled" (the pooled vector, P), "segments" (see
            `EHREncoder.readout`, 3 P + 2), "windows" (6 P + 5) or "forecast" (3 P + 2 + D;
            needs forecast_state), P = `pooled_dim`.
            Fine-tuning records it (`finetune.readout`), never a [model] table; pretraining
            reads the pooled vector whatever it is.
        pool_width: 0 (every pooled summary averages the token states, P = D) or K: each
            token state first goes through a learned feature map, GELU(W h + b) with W of
            K x D, and every pooled summary (the pooled vector, each part of a readout)
            averages those K features (P = K), as Deep Sets sums a wide feature map. A mean
            of D-wide states keeps D linear summaries of the visit; pooling K > D features
            after a nonlinearity keeps more (random features of the same states read the
            chronic conditions better than their mean: benchmarks/README.md, "A year ahead"),
            at K x D more weights on every token.
        forecast_state: Whether the encoder holds the forecast term's state map
            (`CodeState`: what the term's code decoder reads of a pooled vector). The
            pretraining sets it when the forecast term is on (`objective.forecast_weight`),
            never a [model] table; the "forecast" readout reads it.
        layer_norm_eps: LayerNorm epsilon.
        initializer_range: Standard deviation of the initial weights.
        pad_token_id: The [PAD] id (from the tokenizer's fixed vocabulary).
    """

    model_type = "ehr-ssl"

    def __init__(
        self,
        vocab_size: int = 64,
        n_value_bins: int = 11,
        hidden_size: int = 64,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 2,
        intermediate_size: int = 256,
        max_position_embeddings: int = 256,
        n_time_buckets: int = 64,
        time_bucket_scale: float = 5.0,
        n_segments: int = 3,
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.0,
        pooling: str = "mean",
        readout: str = "pooled",
        pool_width: int = 0,
        value_embedding: str = "shared",
        code_hierarchy: str = "none",
        n_code_ancestors: int = 0,
        ancestors_per_code: int = 1,
        forecast_state: bool = False,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        pad_token_id: int = 0,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.n_value_bins = n_value_bins
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.n_time_buckets = n_time_buckets
        self.time_bucket_scale = time_bucket_scale
        self.n_segments = n_segments
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.pooling = pooling
        self.readout = readout
        self.pool_width = pool_width
        self.value_embedding = value_embedding
        self.code_hierarchy = code_hierarchy
        self.n_code_ancestors = n_code_ancestors
        self.ancestors_per_code = ancestors_per_code
        self.forecast_state = forecast_state
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        _check_architecture(self)  # before PreTrainedConfig records anything
        super().__init__(pad_token_id=pad_token_id, **kwargs)


# Sizes that come from the tokenizer (and its code hierarchy), never from a [model] table.
TOKENIZER_DERIVED = ("vocab_size", "n_value_bins", "max_position_embeddings", "pad_token_id",
                     "n_code_ancestors", "ancestors_per_code")  # fmt: skip
# [model] keys of releases before the table took EHRConfig's names.
RENAMED = {"dropout": "hidden_dropout_prob", "attention_dropout": "attention_probs_dropout_prob"}


def _settable() -> list[str]:
    parameters = inspect.signature(EHRConfig.__init__).parameters
    return [name for name, p in parameters.items()
            if p.default is not p.empty
            and name not in (*TOKENIZER_DERIVED, *SET_BY_FINETUNING,
                             *SET_BY_PRETRAINING)]  # fmt: skip


def resolve_model_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A `[model]` table checked and completed with EHRConfig's defaults: every architecture
    setting, as run_config.json and the stage fingerprints record it."""
    config = config_from_settings(settings)
    return {name: getattr(config, name) for name in _settable()}


def config_from_settings(settings: dict[str, Any], **derived: Any) -> EHRConfig:
    """An EHRConfig from a `[model]` table (`PretrainConfig.model`) and the sizes the tokenizer
    sets (`derived`). Raises InputError naming the key at fault: unknown, wrong type or value."""
    parameters = inspect.signature(EHRConfig.__init__).parameters
    settable = _settable()
    values = {}
    for key, value in settings.items():
        if key not in settable:
            renamed = RENAMED | SET_BY_FINETUNING | SET_BY_PRETRAINING
            close = (
                [renamed[key]] if key in renamed else difflib.get_close_matches(key, settable, n=1)
            )
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise InputError(f"unknown key '{key}'{hint}", setting="model")
        expected = type(parameters[key].default)
        fits = isinstance(value, expected) and not isinstance(value, bool)
        if not (fits or (expected is float and type(value) is int)):
            raise InputError(
                f"must be {expected.__name__}, got {type(value).__name__} {value!r}",
                setting=f"model.{key}",
            )
        values[key] = expected(value)  # a TOML 0 for a float setting is 0.0
    try:
        return EHRConfig(**derived, **values)
    except ValueError as e:
        raise InputError(str(e), setting="model") from None


def time_buckets(time_deltas: torch.Tensor, config: EHRConfig) -> torch.Tensor:
    """Log-bucketed time offsets. Shape: (B, T) float hours -> (B, T) long in [0, n_buckets)."""
    scaled = torch.log1p(time_deltas.abs().float()) * config.time_bucket_scale
    return scaled.round().long().clamp_(0, config.n_time_buckets - 1)


class EncoderLayer(nn.Module):
    """Pre-LayerNorm block: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: EHRConfig):
        super().__init__()
        d = config.hidden_size
        self.n_heads = config.num_attention_heads
        self.attn_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.mlp_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.fc_in = nn.Linear(d, config.intermediate_size)
        self.fc_out = nn.Linear(config.intermediate_size, d)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.attention_dropout = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, attention_bias: torch.Tensor) -> torch.Tensor:
        """Shape: x (B, T, D), attention_bias (B, 1, 1, T) bool (True = attend) -> (B, T, D)."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).split(d, dim=2)
        # (B, T, D) -> (B, H, T, D/H) for attention, then back.
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attention_bias,
            dropout_p=self.attention_dropout if self.training else 0.0,
        )
        y = y.transpose(1, 2).reshape(b, t, d)
        x = x + self.dropout(self.out(y))
        return x + self.dropout(self.fc_out(F.gelu(self.fc_in(self.mlp_norm(x)))))


def load_config(directory: Path) -> EHRConfig:
    """The EHRConfig of a saved model directory (its config.json), checked.

    Raises:
        InputError: naming config.json when it is missing, not JSON, not an ehr-ssl
            configuration or holds a value no encoder can be built with.
    """
    path = Path(directory) / MODEL_CONFIG_FILE
    document = read_json(path, what="model configuration")
    if document.get("model_type") != EHRConfig.model_type:
        raise InputError(
            f"model_type {document.get('model_type')!r} is not {EHRConfig.model_type!r}: not "
            "an ehr-ssl model configuration",
            file=str(path),
        )
    try:
        return EHRConfig.from_dict(document)
    except (TypeError, ValueError) as e:
        raise InputError(f"invalid model configuration ({e})", file=str(path)) from None


class EHRPreTrainedModel(PreTrainedModel):
    """Weight initialization and the config class shared by the encoder and task models, and
    their checked saving and loading (config.json + model.safetensors, what save_pretrained
    writes and AutoModel.from_pretrained reads)."""

    config_class = EHRConfig
    base_model_prefix = "encoder"

    @classmethod
    def load_checked(cls, directory: Path) -> Self:
        """The model saved in `directory`, in eval mode, every weight from the file.

        Unlike `from_pretrained`, nothing is ever initialized at random and nothing but
        safetensors is read: a config and weights that disagree (a layer more or less, another
        hidden size), a damaged weights file or a pickled `pytorch_model.bin` are refused.

        Raises:
            InputError: one line naming the file at fault and the problem.
        """
        directory = Path(directory)
        config = load_config(directory)
        weights_path = directory / WEIGHTS_FILE
        if not weights_path.exists() and any(directory.glob("*.bin")):
            raise InputError(
                f"no {WEIGHTS_FILE}: ehr-ssl reads weights from safetensors only, never from "
                "pickled .bin files",
                file=str(directory),
            )
        weights = load_safetensors(weights_path, what="model weights")
        try:
            with torch.device("meta"):  # shapes only: every value comes from the file
                model = cls(config)
        except (TypeError, ValueError, RuntimeError) as e:
            raise InputError(
                f"no model can be built from this configuration ({e})",
                file=str(directory / MODEL_CONFIG_FILE),
            ) from None
        expected = model.state_dict()
        check_tensor_shapes(
            weights,
            {name: tuple(t.shape) for name, t in expected.items()},
            path=weights_path,
            what="model weights",
        )
        weights = {name: t.to(expected[name].dtype) for name, t in weights.items()}
        model.load_state_dict(weights, strict=True, assign=True)
        encoders = [m for m in model.modules() if isinstance(m, EHREncoder)]
        if config.code_hierarchy == "ancestors":
            try:  # a damaged index would fail at the first forward, far from its file
                encoders[0].check_code_ancestors(encoders[0].code_ancestor_ids)
            except ValueError as e:
                raise InputError(str(e), file=str(weights_path)) from None
        return model.eval()

    def save_checked(self, directory: Path) -> None:
        """Write config.json and model.safetensors to `directory` (what `load_checked` and
        `from_pretrained` read), with the mode of every other output.

        Raises:
            OSError: naming the file when a write fails (a full disk, say).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.architectures = [type(self).__name__]  # as save_pretrained records them
        self.config.dtype = self.dtype
        try:
            self.config.to_json_file(directory / MODEL_CONFIG_FILE)
        except OSError as e:
            raise write_failure(directory / MODEL_CONFIG_FILE, e) from None
        weights = {name: t.detach().cpu().contiguous() for name, t in self.state_dict().items()}
        save_safetensors(weights, directory / WEIGHTS_FILE, metadata={"format": "pt"})

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, PoolFeatureMap):  # before nn.Linear: a feature map of its own
            nn.init.normal_(module.weight, mean=0.0, std=module.in_features**-0.5)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class CodeState(nn.Module):
    """What a tied code decoder reads of a pooled vector: LayerNorm(GELU(W p + b)), D wide (the
    decoder scores it against every code's vector). The forecast term's is part of the encoder
    (`EHREncoder.forecast_state`), not of the pretraining heads, so that the "forecast" readout
    can read it downstream."""

    def __init__(self, pooled_size: int, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.transform = nn.Linear(pooled_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """Shape: (..., P) -> (..., D)."""
        return self.norm(F.gelu(self.transform(pooled)))


def as_past_encounter(
    input_ids: torch.Tensor,
    value_bins: torch.Tensor,
    time_deltas: torch.Tensor,
    segment_ids: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """Each visit as its next visit's history would hold it: the [VISIT] separator dropped
    (the later tokens moved one place left, the freed place padding) and the current visit's
    events in the history segment, their times (hours before this visit's prediction time)
    kept. Shape: (B, T) each -> (B, T) each."""
    keep = mask & (input_ids != VISIT_ID)
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices  # kept ones first
    moved = [x.gather(1, order) for x in (input_ids, value_bins, time_deltas, segment_ids)]
    kept = keep.gather(1, order)
    segments = torch.where(moved[3] == SEGMENT_CURRENT, SEGMENT_HISTORY, moved[3])
    return (
        torch.where(kept, moved[0], PAD_ID), torch.where(kept, moved[1], 0),
        torch.where(kept, moved[2], 0), torch.where(kept, segments, 0), kept,
    )  # fmt: skip


class PoolFeatureMap(nn.Linear):
    """The W, b of pool_width's GELU(W h + b). Initialized with a standard deviation of
    1 / sqrt(D) rather than initializer_range: on the final norm's unit-scale states that puts
    its inputs to GELU at unit scale, where GELU bends (features a mean keeps that no linear map
    of the mean states has); at 0.02 they start at 0.16 and the GELU is nearly linear there."""


@dataclass
class EHREncoderOutput(BaseModelOutputWithPooling):
    """The encoder's outputs: BaseModelOutputWithPooling's, and `readout` (B, R), the visit
    vector under the readout asked of `forward` (None when none was asked)."""

    readout: torch.Tensor | None = None


class EHREncoder(EHRPreTrainedModel):
    """Token sequences of visits -> contextual token states, a pooled visit vector and, on
    request, a readout of them."""

    def __init__(self, config: EHRConfig):
        super().__init__(config)
        d = config.hidden_size
        self.code_embeddings = nn.Embedding(config.vocab_size, d, padding_idx=config.pad_token_id)
        self.value_embeddings = nn.Embedding(config.n_value_bins, d)
        if config.value_embedding == "per_code":
            self.code_value_directions = nn.Embedding(config.vocab_size, d)
            # bin 0 (no value) has level 0; bins 1..K start evenly spaced in [-1, 1]
            levels = torch.linspace(-1.0, 1.0, max(config.n_value_bins - 1, 1))
            self.value_levels = nn.Parameter(F.pad(levels, (1, 0)))
        if config.code_hierarchy == "ancestors":
            self.ancestor_embeddings = nn.Embedding(config.n_code_ancestors + 1, d)  # 0: none
            # Data, not learned: saved with the weights so a loaded model embeds as trained.
            shape = (config.vocab_size, config.ancestors_per_code)
            self.register_buffer(CODE_ANCESTORS_BUFFER, torch.zeros(shape, dtype=torch.long))
        self.time_embeddings = nn.Embedding(config.n_time_buckets, d)
        self.segment_embeddings = nn.Embedding(config.n_segments, d)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, d)
        self.embedding_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.final_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        if config.pool_width:
            self.pool_features = PoolFeatureMap(d, config.pool_width)
        if config.forecast_state:
            self.forecast_state = CodeState(pooled_dim(config), d, config.layer_norm_eps)
        self.post_init()

    def add_forecast_state(self) -> None:
        """Give an encoder built without it the forecast state (`CodeState`, initialized
        like every layer), as the forecast term does to the encoder it pretrains; recorded in
        the config, so the saved encoder has it."""
        if not self.config.forecast_state:
            config = self.config
            self.forecast_state = CodeState(pooled_dim(config), config.hidden_size,
                                                config.layer_norm_eps)  # fmt: skip
            self.forecast_state.apply(self._init_weights)
            config.forecast_state = True

    def forward(
        self,
        input_ids: torch.Tensor,
        value_bins: torch.Tensor,
        time_deltas: torch.Tensor,
        segment_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        readout: str | None = None,
    ) -> EHREncoderOutput:
        """Encode a right-padded batch, and read it out under `readout` (one of READOUTS) if
        given. In eval mode a visit's outputs do not depend on the other visits of the batch,
        bitwise on CPU (see `_encode_by_width` and `_row_invariant_state`).

        Shape: every input (B, T) (attention_mask bool, True = token) ->
        last_hidden_state (B, T, D), pooler_output (B, P), readout (B, R) or None.
        """
        t = input_ids.shape[1]
        if t > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {t} exceeds max_position_embeddings "
                f"{self.config.max_position_embeddings}"
            )
        inputs = (input_ids, value_bins, time_deltas, segment_ids, attention_mask.bool())
        if readout == "forecast":
            return self._forecast_readout(*inputs)
        if not self.training:
            return self._encode_by_width(*inputs, readout=readout)
        hidden = self._encode(*inputs)
        features = self.token_features(hidden)  # computed once for the pool and the readout
        read = None if readout is None else self._read(
            features, input_ids, segment_ids, inputs[-1], readout, time_deltas)  # fmt: skip
        return EHREncoderOutput(
            last_hidden_state=hidden, pooler_output=self._pool(features, inputs[-1]), readout=read
        )

    def _forecast_readout(self, *inputs: torch.Tensor) -> EHREncoderOutput:
        """The "forecast" readout: the visit's segment readout, then the forecast state of the
        visit read as a completed past encounter (`as_past_encounter`). The forecast term
        learns what follows an encounter's first events from the history's encounters, past
        ED visits and their dispositions among them; a current visit as encoded (behind
        [VISIT], its events in their own segment) is an input that term never saw.
        Shape: (B, T) each -> the outputs of the visit as encoded, readout (B, 3 P + 2 + D)."""
        if not self.config.forecast_state:
            raise ValueError(FORECAST_READOUT_NEEDS)
        out = self(*inputs, readout="segments")
        past = self(*as_past_encounter(*inputs)).pooler_output  # (B, P)
        out.readout = torch.cat([out.readout, self._row_invariant_state(past)], dim=1)
        return out

    def _row_invariant_state(self, pooled: torch.Tensor) -> torch.Tensor:
        """`forecast_state` of each row, its rows padded with zeros to a multiple of 8 (at least
        8): on CPU a matrix product of a few rows takes another kernel (a matrix-vector one for
        one row) whose sums round differently, and a visit's vector would depend on how many
        visits it was read with. Shape: (B, P) -> (B, D)."""
        n = pooled.shape[0]
        rows = max(8, -(-n // 8) * 8)
        return self.forecast_state(F.pad(pooled, (0, 0, 0, rows - n)))[:n]

    def _encode(
        self,
        input_ids: torch.Tensor,
        value_bins: torch.Tensor,
        time_deltas: torch.Tensor,
        segment_ids: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """Embeddings, the blocks and the final norm. Shape: (B, T) each -> (B, T, D)."""
        x = self.embed(input_ids, value_bins, time_deltas, segment_ids)
        x = self.dropout(self.embedding_norm(x))
        attention_bias = mask[:, None, None, :]  # (B, T) -> (B, 1, 1, T): keys to attend to
        for layer in self.layers:
            x = layer(x, attention_bias)
        return self.final_norm(x)

    def embed(
        self,
        input_ids: torch.Tensor,
        value_bins: torch.Tensor,
        time_deltas: torch.Tensor,
        segment_ids: torch.Tensor,
    ) -> torch.Tensor:
        """Each token's input before the embedding norm: the sum of its code, value, time,
        segment and position embeddings (and, with value_embedding "per_code", its value's
        level along its code's own direction). Shape: (B, T) each -> (B, T, D)."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = (
            self.code_vectors(input_ids)
            + self.value_embeddings(value_bins)
            + self.time_embeddings(time_buckets(time_deltas, self.config))
            + self.segment_embeddings(segment_ids)
            + self.position_embeddings(positions)[None]
        )
        if self.config.value_embedding == "per_code":
            level = self.value_levels[value_bins] * (value_bins > 0)  # (B, T); no value: 0
            x = x + level[..., None] * self.code_value_directions(input_ids)
        return x

    def code_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """The codes' vectors: their own embeddings, plus their ancestors' under
        code_hierarchy "ancestors". Shape: (...) -> (..., D)."""
        vectors = self.code_embeddings(ids)
        if self.config.code_hierarchy == "ancestors":
            vectors = vectors + self._ancestor_sums(self.code_ancestor_ids[ids])
        return vectors

    def code_table(self) -> torch.Tensor:
        """Every code's vector, what the tied decoders score against. Shape: (V, D)."""
        if self.config.code_hierarchy == "none":
            return self.code_embeddings.weight
        return self.code_embeddings.weight + self._ancestor_sums(self.code_ancestor_ids)

    def _ancestor_sums(self, ancestors: torch.Tensor) -> torch.Tensor:
        """The sum of each row's ancestor vectors, id 0 (none) adding nothing; a bag sum needs
        no (..., K, D) intermediate. Shape: (..., K) -> (..., D)."""
        k, d = ancestors.shape[-1], self.config.hidden_size
        sums = F.embedding_bag(
            ancestors.reshape(-1, k), self.ancestor_embeddings.weight, mode="sum", padding_idx=0
        )
        return sums.view(*ancestors.shape[:-1], d)

    def check_code_ancestors(self, ids: torch.Tensor) -> None:
        """ValueError unless `ids` (V, K) fit the config: its shape, ids in [0, A]."""
        expected = (self.config.vocab_size, self.config.ancestors_per_code)
        if tuple(ids.shape) != expected:
            raise ValueError(f"code ancestor ids of shape {tuple(ids.shape)}, expected {expected}")
        if (
            ids.numel()
            and not 0 <= int(ids.min()) <= int(ids.max()) <= self.config.n_code_ancestors
        ):
            raise ValueError(f"code ancestor ids outside [0, {self.config.n_code_ancestors}]")

    def set_code_ancestors(self, ids: np.ndarray | torch.Tensor) -> None:
        """Load each code's ancestor ids (`ehr_ssl.tokens.hierarchy.ancestor_index`), checked.
        Shape: (V, K) as the config says; ids in [0, n_code_ancestors]."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        self.check_code_ancestors(ids)
        self.code_ancestor_ids.copy_(ids)

    def _encode_by_width(
        self,
        input_ids: torch.Tensor,
        value_bins: torch.Tensor,
        time_deltas: torch.Tensor,
        segment_ids: torch.Tensor,
        mask: torch.Tensor,
        readout: str | None = None,
    ) -> EHREncoderOutput:
        """Eval mode: each group of visits of one width (the visit's own length rounded up to
        EVAL_WIDTH_MULTIPLE) encoded on its own. The sums over keys (attention) and tokens (mean
        pooling) then run over the same width whatever the batch, so a visit's numbers never
        depend on its batch mates; the padded width of the batch changed them by up to 2.4e-7
        (float32 rounding). Elementwise kernels (GELU) round the last elements of a tensor that
        is not whole vectors differently: widths a multiple of 8 keep the presets' tensors whole.
        Padding positions come back as zeros. The readout, if asked, is read group by group too.

        Shape: every input (B, T) -> last_hidden_state (B, T, D), pooler_output (B, P),
        readout (B, R) or None.
        """
        b, t = input_ids.shape
        positions = torch.arange(1, t + 1, device=mask.device)
        ends = (mask * positions).amax(1) if t else mask.new_zeros(b, dtype=torch.long)
        multiple = EVAL_WIDTH_MULTIPLE
        widths = (-(-ends // multiple) * multiple).clamp(1, self.config.max_position_embeddings)
        pad = max(int(widths.max()) - t, 0) if b else 0  # a width may reach past the batch's T
        padded = [F.pad(x, (0, pad), value=v) for x, v in (
            (input_ids, self.config.pad_token_id), (value_bins, 0), (time_deltas, 0),
            (segment_ids, 0), (mask, False))]  # fmt: skip
        hidden = padded[0].new_zeros((b, t, self.config.hidden_size), dtype=self.dtype)
        pooled = hidden.new_zeros((b, pooled_dim(self.config)))
        read = None if readout is None else hidden.new_zeros(
            (b, readout_dim(self.config, readout)))  # fmt: skip
        for width in widths.unique().tolist():
            rows = (widths == width).nonzero()[:, 0]
            group = [x[rows, :width] for x in padded]  # (G, width) each
            states = self._encode(*group)  # (G, width, D)
            hidden[rows, : min(width, t)] = states[:, :t].to(hidden.dtype)
            features = self.token_features(states)  # (G, width, P), once for both
            pooled[rows] = self._pool(features, group[-1]).to(hidden.dtype)
            if read is not None:
                read[rows] = self._read(features, group[0], group[3], group[-1], readout,
                                        group[2]).to(hidden.dtype)  # fmt: skip
        return EHREncoderOutput(last_hidden_state=hidden, pooler_output=pooled, readout=read)

    def pool(
        self, hidden: torch.Tensor, mask: torch.Tensor, pooling: str | None = None
    ) -> torch.Tensor:
        """The visit vector under `pooling` (one of POOLINGS; the config's when None), so a
        probe can read any pooling of one forward pass: the [CLS] token's features or the mean
        of every token's (`token_features`). Shape: hidden (B, T, D), mask (B, T) bool ->
        (B, P), P = `pooled_dim`."""
        return self._pool(self.token_features(hidden), mask, pooling)

    def _pool(
        self, features: torch.Tensor, mask: torch.Tensor, pooling: str | None = None
    ) -> torch.Tensor:
        """`pool` of the tokens' features. Shape: (B, T, P), (B, T) bool -> (B, P)."""
        if (pooling or self.config.pooling) == "cls":
            return features[:, 0]
        weights = mask.to(features.dtype)[..., None]  # (B, T, 1)
        return (features * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def token_features(self, hidden: torch.Tensor) -> torch.Tensor:
        """What every pooled summary averages: the token states themselves, or under
        pool_width K their learned feature map GELU(W h + b). Shape: (..., D) -> (..., P)."""
        if not self.config.pool_width:
            return hidden
        return F.gelu(self.pool_features(hidden))

    def readout(
        self,
        hidden: torch.Tensor,
        input_ids: torch.Tensor,
        segment_ids: torch.Tensor,
        mask: torch.Tensor,
        readout: str | None = None,
        time_deltas: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The visit vector downstream models read, under `readout` (one of READOUTS; the
        config's when None): the one place the probe, the classifier and `embed` get it from.

        "pooled": the pooled vector (`pool`). "segments": the [CLS] token's features, the mean
        features of the history's event tokens, the mean features of the current visit's event
        tokens (zeros for a part without events; features: `token_features`, the states
        themselves unless pool_width) and log1p of each part's event count, concatenated:
        what a mean over all tokens dilutes (the history) and drops (its volume). "windows": as
        "segments", with the history's part also taken over the events of its last 7, 30 and
        365 days (WINDOW_DAYS, the tabular baselines' windows; needs `time_deltas`): a
        hospitalization two weeks ago does not weigh as one two years ago. Structural tokens
        ([CLS], [HIST], [VISIT], [PAD], [MASK]) are not events; [UNK] is.

        Shape: hidden (B, T, D), input_ids, segment_ids, mask and time_deltas (B, T) (mask
        bool, True = token; time_deltas in hours, negative before the prediction time) ->
        (B, R), R = `readout_dim(config, readout)`.
        """
        features = self.token_features(hidden)  # (B, T, P)
        return self._read(features, input_ids, segment_ids, mask, readout, time_deltas)

    def _read(
        self,
        features: torch.Tensor,
        input_ids: torch.Tensor,
        segment_ids: torch.Tensor,
        mask: torch.Tensor,
        readout: str | None = None,
        time_deltas: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`readout` of the tokens' features. Shape: features (B, T, P), the rest (B, T) ->
        (B, R)."""
        readout = readout or self.config.readout
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        if readout == "pooled":
            return self._pool(features, mask)
        not_events = torch.tensor(NOT_EVENT_IDS, device=input_ids.device, dtype=input_ids.dtype)
        events = mask & ~torch.isin(input_ids, not_events)  # (B, T)
        history = events & (segment_ids == SEGMENT_HISTORY)
        parts = [history, events & (segment_ids == SEGMENT_CURRENT)]
        if readout == "windows":
            if time_deltas is None:
                raise ValueError('the "windows" readout needs time_deltas')
            parts += [history & (time_deltas >= -24.0 * days) for days in WINDOW_DAYS]
        means, counts = [], []
        for chosen in parts:  # (B, T) each
            n = chosen.sum(1, keepdim=True)  # (B, 1) long: exact however many events
            weights = chosen.to(features.dtype)[..., None]  # (B, T, 1)
            means.append((features * weights).sum(1) / n.clamp_min(1).to(features.dtype))
            counts.append(torch.log1p(n.float()).to(features.dtype))
        return torch.cat([features[:, 0], *means, *counts], dim=1)  # (B, R)

    def num_flops_per_token(self, sequence_length: int) -> float:
        """Training FLOPs per token: 6 x non-embedding parameters plus attention (fwd + bwd)."""
        c = self.config
        per_token = ("layers.", "pool_features.")  # weights applied to every token
        dense = 6 * sum(p.numel() for n, p in self.named_parameters() if n.startswith(per_token))
        attention = 12 * c.num_hidden_layers * c.hidden_size * sequence_length
        return float(dense + attention)


def _register() -> None:
    """Make AutoConfig/AutoModel resolve model_type "ehr-ssl" (idempotent)."""
    try:
        AutoConfig.register(EHRConfig.model_type, EHRConfig)
        AutoModel.register(EHRConfig, EHREncoder)
    except ValueError:  # already registered
        pass


_register()
