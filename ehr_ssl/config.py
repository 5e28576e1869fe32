"""Every setting of ehr-ssl, declared once: a dataclass field with its type, default, docstring
and check. The command line derives its flags and help text from these fields (`ehr_ssl.cli`).

A run's configuration resolves in layers: the dataclass defaults, then (pretraining) a preset,
then a TOML file (`[data]`, `[split]`, `[tokenizer]`, `[meds]` tables for tokenize; `preset`,
`[model]`, `[objective]`, `[train]` for pretrain; `[finetune]`, `[evaluate]`, `[retrain]`), then
explicit command-line options. The resolved configuration is saved beside every output
(tokens/config.json, RUN/run_config.json). The machinery lives in `ehr_ssl.settings`.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ehr_ssl.artifacts import read_json
from ehr_ssl.errors import InputError
from ehr_ssl.layout import RUN_CONFIG_FILE
from ehr_ssl.outputs import KINDS, output_kind
from ehr_ssl.settings import (
    check_choice,
    check_count,
    check_positive,
    check_range,
    from_dict,
    load_config,
    merge,
    read_toml,
)

DEVICES = ("auto", "cpu", "cuda")
# How `ehr-ssl predict` writes its rows: ours (visit_id, score) or the MEDS prediction schema.
PREDICTION_FORMATS = ("ehr-ssl", "meds")
# The forward's precision (`ehr_ssl.training.device.device_settings`): "auto" is bf16 on a GPU
# with fast bf16 matmuls and fp32 elsewhere; "bf16" also runs on CPU, where the tests use it.
PRECISIONS = ("auto", "fp32", "bf16")
CONTRASTIVE_VIEWS = ("augment", "disjoint", "patient")
MASK_UNITS = ("token", "encounter")
RARE_CODES = ("unk", "ancestor")
FORECAST_TARGETS = ("encounter", "next_day", "horizon")
FORECAST_FRAMES = ("visit", "cut")
# The weight of each self-supervised term (`ObjectiveConfig`); 0 switches a term off.
OBJECTIVE_WEIGHTS = (
    "masked_weight",
    "contrastive_weight",
    "bag_weight",
    "forecast_weight",
    "visit_values_weight",
)
# The visit vector downstream models read (`ehr_ssl.model.encoder.EHREncoder.readout`).
READOUTS = ("pooled", "segments", "windows", "forecast")
# History windows in days before the prediction time (MEDS-TAB's defaults, less "all", which is
# its own scope): the tabular baselines' and the "windows" readout's. Saved "windows" models
# depend on their number (the readout's width), which their config does not record: changing it
# needs a version in EHRConfig.
WINDOW_DAYS: tuple[float, ...] = (7.0, 30.0, 365.0)

# Upper bounds of the size-like settings: generous (far beyond any ED cohort or any model this
# code is for) but finite, so that an absurd value stops at configuration time with one line
# instead of an allocation of terabytes after tokenizing (max_length = 1e11 once asked for a
# 12.8 TB position table).
# Tokens per visit, 32x the default: one visit's attention scores are T^2 floats per head and
# layer (256 MiB at 8192 on CPU, where they are materialized) and the position table T x D.
MAX_TOKENS_PER_VISIT = 8192
MAX_WIDTH = 16_384  # hidden and projection sizes: wider than GPT-3's 12,288
MAX_BATCH = 65_536  # visits per step; the contrastive term compares all (2B)^2 pairs of views
MAX_EPOCHS = 100_000
MAX_STEPS = 10**9  # steps and step intervals: years of training
MAX_VISITS = 10**9  # visits per chunk or shard, patients per code: beyond any hospital system
SCORING_CHUNK_VISITS = 100_000  # `predict` / `embed`: visits tokenized and scored at a time
MAX_WORKERS = 256  # loader processes
MAX_BOOTSTRAP = 1_000_000  # replicates: CI limits stop moving long before

# Starting points, overridden by a TOML file and flags. tiny: tests (seconds); small: the CPU demo,
# sized to train its objectives fast on 2 CPU cores (benchmarks/README.md, "Pretraining");
# base: GPU pretraining.
# What every preset's [model] sets: each code's value gets a direction of its own
# (benchmarks/README.md, "The visit's own values") and each code's vector adds its ancestors'
# ("The code hierarchy"); EHRConfig keeps "shared" and "none" as its defaults so that encoders
# saved before load as they were trained.
PRESET_MODEL_COMMON: dict[str, Any] = {"value_embedding": "per_code", "code_hierarchy": "ancestors"}
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "model": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "hidden_dropout_prob": 0.0,
            **PRESET_MODEL_COMMON,
        },
        "objective": {"projection_dim": 16},
        "train": {"batch_size": 16, "warmup_steps": 5, "checkpoint_every": 20, "log_every": 5},
    },
    "small": {
        "model": {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 128,
            "hidden_dropout_prob": 0.0,
            **PRESET_MODEL_COMMON,
        },
        # 3 epochs, as every recorded figure and the demo: one epoch of a 20,000-visit cohort
        # (about 130 steps, 50 of them warmup) read the few-label probe 0.011-0.014 lower, two
        # as well as three (benchmarks/README.md, "The label efficiency at equal pretraining
        # compute").
        "train": {"batch_size": 128, "learning_rate": 1e-3, "warmup_steps": 50, "epochs": 3},
    },
    "base": {
        "model": {
            "hidden_size": 512,
            "num_hidden_layers": 8,
            "num_attention_heads": 8,
            "intermediate_size": 2048,
            **PRESET_MODEL_COMMON,
        },
        "objective": {"projection_dim": 128},
        "train": {
            "batch_size": 256,
            "learning_rate": 3e-4,
            "warmup_steps": 1000,
            "checkpoint_every": 1000,
            "num_workers": 4,
        },
    },
}


@dataclass
class DataConfig:
    """How the input tables are read."""

    prediction_offset_minutes: float = 60.0
    """prediction_time = arrival_time + this, for visits tables without a prediction_time column."""
    static_columns: list[str] | None = field(
        default=None, metadata={"unset": "age,sex where present"}
    )
    """Visit columns used as static features (comma-separated on the command line); left unset,
    age and sex where present. Name only columns known at arrival: never identifiers or
    anything recorded after prediction_time."""
    drop_null_time_events: bool = False
    """Drop events with a null time (MEDS static rows) instead of rejecting the file."""

    def __post_init__(self) -> None:
        check_range(
            self.prediction_offset_minutes, 0, 7 * 24 * 60, "data.prediction_offset_minutes"
        )


@dataclass
class MedsConfig:
    """Reading a MEDS dataset root (`ehr_ssl.data.meds_input`): `data/**/*.parquet` with
    `metadata/`. The ED visits are its prediction points, from MEDS label files as ACES writes
    them (subject_id, prediction_time, boolean_value)."""

    labels: str | None = None
    """MEDS label file (or directory of them): one ED visit per row; a null boolean_value is an
    unlabeled visit. Needed, with or without prediction_times, to read a MEDS root."""
    prediction_times: str | None = None
    """A second file (or directory) of prediction points, all unlabeled (boolean_value is not
    read), e.g. every ED visit where `labels` holds the labeled ones; a point in both takes its
    label from `labels`."""
    arrival_code: str | None = None
    """Code of the ED arrival event (e.g. ED_REGISTRATION): a visit's arrival_time is the latest
    such event at or before its prediction time. Unset: prediction_time -
    data.prediction_offset_minutes."""


@dataclass
class LeakageConfig:
    """The leakage screen of `validate` and `run` (`ehr_ssl.data.leakage`): a code read before
    the prediction time whose presence alone nearly separates the labeled visits stops them,
    unless accepted here."""

    min_auroc: float = 0.9
    """Flag a code whose presence alone reaches this AUROC (or 1 - this), read by at least
    min_expected patients. A whole triage model reaches 0.80-0.87 on real ED data: one code at
    0.9 is recorded because of the outcome."""
    max_impurity: float = 0.02
    """Flag a code read almost only by one class: the other class's share at most this ..."""
    min_expected: float = 30.0
    """... where chance (the label prevalence) would have put at least this many visits of the
    other class among those that read it, counting one visit per patient."""
    accept: list[str] = field(default_factory=list)
    """Codes (or prefixes ending in "//") accepted after review: checked to be recorded before
    the decision the model supports."""

    def __post_init__(self) -> None:
        check_range(self.min_auroc, 0.5, 1, "leakage.min_auroc")
        check_range(self.max_impurity, 0, 0.5, "leakage.max_impurity")
        check_range(self.min_expected, 0, 1e9, "leakage.min_expected")


@dataclass
class SplitConfig:
    """The patient-level train/val/test split (a hash of patient_id and the seed)."""

    seed: int = 0
    """Changing it reassigns patients; keep it fixed across runs that must be comparable."""
    val_fraction: float = 0.1
    """Share of patients in the validation split (model selection reads it)."""
    test_fraction: float = 0.1
    """Share of patients in the test split (read once, for the final report)."""

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**63:
            raise InputError(
                f"must be a non-negative integer, got {self.seed}", setting="split.seed"
            )
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise InputError(f"must be in [0, 1), got {value}", setting=f"split.{name}")
        if self.val_fraction + self.test_fraction >= 1:
            raise InputError(
                "val_fraction + test_fraction must leave patients for training, got "
                f"{self.val_fraction} + {self.test_fraction}",
                setting="split",
            )


@dataclass
class TokenizerConfig:
    """How a visit becomes a token sequence."""

    lookback_days: float = 365.0
    """History window: events from arrival_time - lookback up to prediction_time are read."""
    max_length: int = 256
    """Tokens per visit, specials and statics included (4 to 8192); the oldest history is
    dropped first."""
    min_count: int = 5
    """A code (or static value) enters the vocabulary only if at least this many distinct
    training patients have it; counting patients, not events, is the privacy guard."""
    n_bins: int = 10
    """Per-code quantile bins for numeric values (edges fitted on the training split)."""
    rare_codes: str = field(default="ancestor", metadata={"choices": RARE_CODES})
    """A code below min_count: "ancestor" reads it as its nearest class by the code's spelling
    (ICD category, ATC level: `ehr_ssl.tokens.backoff`) that min_count training patients hold
    through such codes, else as [UNK]; "unk" always as [UNK]. Real ICD and drug codes are
    specific and mostly rare at one hospital while their classes are common. A tokenizer saved
    before this setting existed reads "unk"."""

    def __post_init__(self) -> None:
        check_choice(self.rare_codes, RARE_CODES, "tokenizer.rare_codes")
        check_range(self.lookback_days, 0, 100 * 365, "tokenizer.lookback_days")
        check_count(
            self.max_length,
            "tokenizer.max_length",
            low=4,
            high=MAX_TOKENS_PER_VISIT,
            why="attention memory grows with its square",
        )
        check_count(self.min_count, "tokenizer.min_count", high=MAX_VISITS)
        if not 1 <= self.n_bins <= 100:
            raise InputError(f"must be in [1, 100], got {self.n_bins}", setting="tokenizer.n_bins")


@dataclass
class TokenizeConfig:
    """Everything `ehr-ssl tokenize` needs."""

    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    meds: MedsConfig = field(default_factory=MedsConfig)
    shard_visits: int = 200_000
    """Visits per output shard (each split is written as shards of at most this many visits)."""
    chunk_visits: int = 500_000
    """Memory bound: a dataset with more visits is tokenized in chunks of about this many
    (patients partitioned by a hash of their id), reading the events chunk by chunk. The tokens
    are the same whatever the value."""
    chunk_events: int = 30_000_000
    """Memory bound too: a dataset with more event rows is chunked so that a chunk holds about
    this many at most, whatever its visits (real data has far more events per visit than the
    synthetic cohorts: 500,000 visits of cohort version 2 are 58M events, 9.3 GiB at peak)."""

    def __post_init__(self) -> None:
        for name in ("shard_visits", "chunk_visits", "chunk_events"):  # top-level TOML keys
            check_count(getattr(self, name), name, high=MAX_VISITS)


@dataclass
class ObjectiveConfig:
    """The self-supervised objectives; a weight of 0 switches a term off."""

    masked_weight: float = 1.0
    """Masked-event modeling (BERT-style): predict the code and, for numeric events, the bin."""
    value_bin_weight: float = 0.5
    """Weight of the value-bin prediction within the masked-event term."""
    contrastive_weight: float = 0.0
    """Contrastive visits (SimCLR-style NT-Xent between two views). Off by default: on cohort
    version 2 it pulled the few-label probe down with or without the forecast term
    (benchmarks/README.md, "The forecast term")."""
    bag_weight: float = 0.0
    """Bag of masked codes: predict, from the masked view's pooled visit vector, the codes that
    masking hid (a softmax over the vocabulary against their distribution). A token's state can
    copy its code from its neighbours; the one visit vector must carry the patient's codes
    (issue 19). Uses the masking of `mask_rate` and `mask_unit`, also when masked_weight is 0."""
    forecast_weight: float = 1.0
    """Forecast the next codes (CLMBR/MOTOR-style, within the visit's own input): each visit is
    cut before one of its history or current events, drawn uniformly, and the prefix's pooled
    vector predicts the codes from the cut to the end of that encounter (softmax over the
    vocabulary, as the bag term): a past ED visit's first events must say how it ended. One more
    encoder pass of the prefixes (`ehr_ssl.model.forecast`)."""
    forecast_target: str = field(default="encounter", metadata={"choices": FORECAST_TARGETS})
    """What the forecast term predicts after the cut: "encounter" (the rest of the cut event's
    encounter, a history day or the current visit), "next_day" (every event within 24 hours
    of the cut event, CLMBR's next day, across day boundaries) or "horizon": each distinct code
    that occurs within `forecast_horizon_days` of the cut event, once (MOTOR-style: what the
    patient will have, not what this encounter holds; a chronic condition's codes recur over
    months, so the prefix must carry the condition to predict them)."""
    forecast_horizon_days: float = 365.0
    """The window of the "horizon" target, in days from the cut event, censored at the visit's
    prediction time as every target is: at the tokenizer's default lookback of 365 days the
    default window reaches the prediction time from every history cut."""
    forecast_current_share: float = 0.0
    """How often the forecast's cut is drawn within the current visit only (else among all the
    visit's events, most of them history): the downstream visit vector is that of a sequence
    ending in the current visit, which uniform cuts rarely train."""
    forecast_share: float = 0.5
    """Share of each batch's visits that get a forecast prefix, drawn at random every step; the
    prefix pass encodes only those (and never a visit without events), so its cost falls in
    proportion. Half: on cohort version 2 it probes level with every visit (four pretraining
    seeds: -0.000 / -0.002 / +0.000 at 100 / 300 / 1,000 labels; a quarter -0.001 / -0.003 /
    -0.001) and pretrains 29% faster on CPU, 58k against 45k tokens/s (benchmarks/README.md,
    "A share of the visits forecast")."""
    forecast_frame: str = field(default="visit", metadata={"choices": FORECAST_FRAMES})
    """How the forecast's prefix is framed: "visit" (its times and segments as in the visit)
    or "cut": cuts among history events only (the current visit's rest is censored at the
    prediction time), each prefix re-framed as a visit predicted at the cut (times taken from
    the cut event's, the cut event's encounter in the current-visit segment after a [VISIT]
    separator), so that a prefix cut inside a past ED visit reads exactly like a visit at its
    prediction time (`ehr_ssl.model.forecast.reframe_at_cut`)."""
    visit_values_weight: float = 0.0
    """Visit values: from view A's pooled visit vector and the code of each of the visit's own
    numeric events (statics and current visit: age, triage acuity, vital signs, ED labs), predict
    that event's value bin. A mean over a long history gives the current visit's dozen tokens a
    small weight, and no other term asks the vector for their values; on ED data the triage is
    the strongest single predictor of the disposition (issue 19; `ValueQueryHead`)."""
    mask_rate: float = 0.15
    """Share of event tokens chosen for prediction (of those, 80% [MASK], 10% random, 10% kept)."""
    mask_unit: str = field(default="token", metadata={"choices": MASK_UNITS})
    """What masked-event modeling chooses: "token" (each event token at mask_rate) or
    "encounter" (whole history encounters, a visit's history events of one day, each at
    mask_rate, so a code cannot be copied from its own encounter: issue 19; current-visit
    events are still chosen token by token at mask_rate)."""
    temperature: float = 0.1
    """NT-Xent softmax temperature."""
    projection_dim: int = 64
    """Output size of the contrastive projection head."""
    event_dropout: float = 0.1
    """View augmentation: share of event tokens dropped."""
    history_crop: float = 0.5
    """View augmentation: up to this share of the oldest history events cropped."""
    time_jitter: float = 0.1
    """View augmentation: times multiplied by exp(N(0, time_jitter^2))."""
    contrastive_views: str = field(default="augment", metadata={"choices": CONTRASTIVE_VIEWS})
    """How the contrastive pair is drawn: "augment" (two augmented copies of the visit, sharing
    its statics and current visit), "disjoint" (history encounters split between the views;
    view A also has the statics and current visit, view B only its encounters: issue 19; the
    view augmentation settings above then go unused) or "patient" (view B is another visit of
    the same patient, drawn at random among the patient's other train-split visits per batch;
    both views get the augmentation above; in-batch negatives are other patients only; a visit
    without such a partner, e.g. of a val or test patient, is left out of the contrastive term
    only: issue 19, CLOCS/PCLR-style patient-level positives)."""

    def __post_init__(self) -> None:
        for name in (*OBJECTIVE_WEIGHTS, "value_bin_weight"):
            check_range(getattr(self, name), 0, 1e6, f"objective.{name}")
        for name in ("event_dropout", "history_crop", "forecast_current_share"):
            check_range(getattr(self, name), 0, 1, f"objective.{name}")
        check_range(self.time_jitter, 0, 10, "objective.time_jitter")
        check_range(self.forecast_horizon_days, 1, 36_500, "objective.forecast_horizon_days")
        if all(getattr(self, name) == 0 for name in OBJECTIVE_WEIGHTS):
            raise InputError("at least one objective needs a weight > 0", setting="objective")
        if not 0 < self.mask_rate < 1:
            raise InputError(
                f"must be in (0, 1), got {self.mask_rate}", setting="objective.mask_rate"
            )
        if self.forecast_target not in FORECAST_TARGETS:
            raise InputError(
                f"must be one of {', '.join(FORECAST_TARGETS)}, got {self.forecast_target!r}",
                setting="objective.forecast_target",
            )
        if self.forecast_frame not in FORECAST_FRAMES:
            raise InputError(
                f"must be one of {', '.join(FORECAST_FRAMES)}, got {self.forecast_frame!r}",
                setting="objective.forecast_frame",
            )
        if self.forecast_frame == "cut" and self.forecast_current_share > 0:
            raise InputError(
                'forecast_frame = "cut" draws no cut inside the current visit (its rest is '
                "censored at the prediction time): set forecast_current_share = 0",
                setting="objective.forecast_current_share",
            )
        if not 0 < self.forecast_share <= 1:
            raise InputError(
                f"must be in (0, 1] (forecast_weight = 0 switches the term off), got "
                f"{self.forecast_share}",
                setting="objective.forecast_share",
            )
        if self.mask_unit not in MASK_UNITS:
            raise InputError(
                f"must be one of {', '.join(MASK_UNITS)}, got {self.mask_unit!r}",
                setting="objective.mask_unit",
            )
        check_range(self.temperature, 1e-4, 100, "objective.temperature")
        check_count(self.projection_dim, "objective.projection_dim", high=MAX_WIDTH)
        if self.contrastive_views not in CONTRASTIVE_VIEWS:
            raise InputError(
                f"must be one of {', '.join(CONTRASTIVE_VIEWS)}, got {self.contrastive_views!r}",
                setting="objective.contrastive_views",
            )


@dataclass
class TrainConfig:
    """The training loop."""

    batch_size: int = 64
    """Visits per step (the contrastive term's negatives come from the same batch)."""
    learning_rate: float = 1e-3
    """Peak learning rate, reached after warmup."""
    weight_decay: float = 0.01
    """AdamW decay, applied to weight matrices only (not biases, norms or embeddings)."""
    warmup_steps: int = 100
    """Steps of linear warmup to learning_rate."""
    min_lr_ratio: float = 0.1
    """The cosine schedule decays to learning_rate * min_lr_ratio."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this."""
    epochs: int = 1
    """Passes over the pretraining visits (when max_steps is not set)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps; none: epochs x batches per epoch."""
    checkpoint_every: int = 200
    """Steps between checkpoints (and one at the end)."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept; older ones are deleted."""
    log_every: int = 20
    """Steps between metrics.jsonl lines (and log lines when not on a terminal)."""
    seed: int = 0
    """Seeds initialization, data order, masking, views and dropout."""
    num_workers: int = 0
    """DataLoader worker processes reading the memory-mapped shards."""
    device: str = field(default="auto", metadata={"choices": DEVICES})
    """Where to train: "auto" (cuda when available), "cpu" or "cuda"."""
    precision: str = field(default="auto", metadata={"choices": PRECISIONS})
    """The forward's matmul precision: "auto" (bf16 autocast on a GPU with bf16, fp32 elsewhere),
    "fp32" or "bf16" (also on CPU, slower there). Weights and checkpoints stay fp32."""
    compile: bool = False
    """torch.compile the encoder (worth it on GPU for long runs)."""
    pad_to_multiple_of: int | None = None
    """Round the encoder's input length up to a multiple of this; none: 8 on GPU (tensor cores),
    1 on CPU."""
    include_test_unlabeled: bool = False
    """Transductive setting: also pretrain on the test patients' unlabeled visits."""
    tensorboard: bool = False
    """Also log to RUN/tensorboard (needs the tensorboard package)."""

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**32:
            raise InputError(f"must be in [0, 2**32), got {self.seed}", setting="train.seed")
        check_count(
            self.batch_size,
            "train.batch_size",
            high=MAX_BATCH,
            why="the contrastive term compares every pair of the batch's views",
        )
        check_count(self.epochs, "train.epochs", high=MAX_EPOCHS)
        check_positive(
            self, ("checkpoint_every", "keep_checkpoints", "log_every"), "train", high=MAX_STEPS
        )
        if self.max_steps is not None:
            check_count(self.max_steps, "train.max_steps", high=MAX_STEPS)
        if self.device not in DEVICES:
            raise InputError(
                f"must be auto, cpu or cuda, got {self.device!r}", setting="train.device"
            )
        check_range(self.learning_rate, 1e-9, 10, "train.learning_rate")
        check_range(self.weight_decay, 0, 10, "train.weight_decay")
        check_range(self.grad_clip, 1e-6, 1e6, "train.grad_clip")
        check_range(self.min_lr_ratio, 0, 1, "train.min_lr_ratio")
        check_count(self.warmup_steps, "train.warmup_steps", low=0, high=MAX_STEPS)
        check_count(self.num_workers, "train.num_workers", low=0, high=MAX_WORKERS)
        if self.pad_to_multiple_of is not None:
            check_count(
                self.pad_to_multiple_of, "train.pad_to_multiple_of", high=MAX_TOKENS_PER_VISIT
            )
        check_choice(self.precision, PRECISIONS, "train.precision")


@dataclass
class PretrainConfig:
    """Everything `ehr-ssl pretrain` needs; `preset` picks the starting values."""

    preset: str = field(default="small", metadata={"choices": tuple(PRESETS)})
    """Starting values of [model], [objective] and [train] (PRESETS): tiny (tests), small (CPU),
    base (GPU)."""
    model: dict[str, Any] = field(default_factory=dict)
    """The encoder's architecture: keyword arguments of `ehr_ssl.model.encoder.EHRConfig` (the
    one description of the model; its docstring explains each). Unset keys take EHRConfig's
    defaults; the vocabulary sizes and max length come from the tokenizer. Checked when the
    encoder is built (`ehr_ssl.model.encoder.config_from_settings`)."""
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.objective.contrastive_weight > 0 and self.train.batch_size < 2:
            raise InputError(
                "the contrastive term needs batch_size >= 2 (its negatives are the batch's "
                "other visits)",
                setting="train.batch_size",
            )


FINETUNE_MODES = ("full", "linear-probe", "scratch")
# How a model's settings are chosen on a label budget (`ehr_ssl.training.selection`).
SELECTIONS = ("auto", "cv", "holdout")
# How cv selection picks among its candidates (`ehr_ssl.training.selection.choose`).
CV_RULES = ("best", "one_se")
# What the folds of cv selection score (`ehr_ssl.training.selection.FoldScore`).
CV_METRICS = ("auroc", "log_loss")
# How an L2 logistic model's penalty is chosen under cv selection (`ehr_ssl.training.selection`).
PENALTY_SELECTIONS = ("cv", "evidence")


@dataclass
class FinetuneConfig:
    """Fine-tuning for admission within 7 days; its settings are selected on the budget's own
    labels (cv folds or the validation split, `selection`), never on the test split."""

    mode: str = field(default="full", metadata={"choices": FINETUNE_MODES})
    """full: the pretrained encoder trained further with a head; linear-probe: a logistic
    regression on the frozen encoder's readout (`readout`); scratch: the same architecture from
    random initialization (the supervised-only baseline)."""
    label_budget: int | float | None = None
    """Labeled train visits used: a count, a fraction, or "all" (None in Python); val keeps the
    proportional share (at least 20). Nested subsets for a seed; test keeps all its labels."""
    learning_rate: float = 1e-3
    """Learning rate of the head (and of the whole model in scratch mode)."""
    encoder_lr_ratio: float = 0.1
    """full mode: encoder learning rate = learning_rate x this (lower than the head's)."""
    warmup_epochs: float = 0.0
    """Epochs over which every learning rate (head, encoder, a scratch model's) rises linearly
    to its full value, the first step at 1/warmup_steps of it (warmup_steps: this many epochs'
    steps), as BERT-style fine-tuning warms up: Adam's first steps move every weight by about
    its rate, whatever the gradient. 0: the full rate from the first step. With every label it
    delayed full fine-tuning's first-epoch fall, not stopped it (benchmarks/README.md, "With
    every label, full fine-tuning falls in its first epoch")."""
    batch_size: int = 64
    """Labeled visits per step."""
    max_epochs: int = 30
    """Epochs at most (early stopping on the validation AUROC usually ends sooner)."""
    patience: int = 4
    """Stop after this many epochs without a better validation AUROC (under cv selection:
    the mean fold AUROC)."""
    selection: str = field(default="auto", metadata={"choices": SELECTIONS})
    """How the regularization, the epoch and (full mode) probe-versus-fine-tuning are chosen,
    for every model of a run alike: "cv" (repeated stratified K-fold over the budget's labels,
    grouped by patient, then a refit on all of them), "holdout" (train on the budget's train
    split labels, select on its val split labels) or "auto" (cv for a budget of at most
    cv_max_labels, holdout above and for "all")."""
    cv_folds: int = 5
    """Folds of cv selection (fewer when a class has fewer patients)."""
    cv_repeats: int = 1
    """Repeats of the K folds, each shuffled anew: averaging repeats steadies the choice, and
    each costs K more trainings of every transformer (1 keeps `ehr-ssl demo` short on CPU).
    Three moved no probe or tabular model by more than 0.002 on 60,000 visits: what misleads
    a 100-label choice is the subset itself, not its folds (benchmarks/README.md, "60,000
    visits, six label subsets per pretraining")."""
    cv_max_labels: int = 1000
    """selection "auto": the largest budget selected by cv (K + 1 trainings per model)."""
    cv_rule: str = field(default="best", metadata={"choices": CV_RULES})
    """Which candidate cv selection keeps, for every model alike: "best" (the best mean fold
    AUROC) or "one_se" (the most regularized C, the fewest epochs, whose mean is within one
    standard error of the best; Breiman's rule, glmnet's lambda.1se). Measured over three
    pretrainings, one_se moved every model by up to 0.03 in both directions and helped none
    at both 100 and 300 labels (benchmarks/README.md, "The one-standard-error rule")."""
    cv_metric: str = field(default="auroc", metadata={"choices": CV_METRICS})
    """What cv selection's folds score, for every model and every choice (C, epoch, probe
    versus fine-tuning) alike: "auroc" (the mean fold AUROC) or "log_loss" (the mean fold
    log-loss, each class weighted to half as in training; cv.glmnet's deviance). Holdout
    selection scores AUROC. Measured on two cohorts, log-loss steadied the choices (the counts
    logistic regression's C) but moved the seven models' mean test AUROC by -0.001 to +0.002
    and helped only the scratch transformer on both (benchmarks/README.md, "Selection by
    log-loss"), so it is an option, not the default."""
    penalty_selection: str = field(default="evidence", metadata={"choices": PENALTY_SELECTIONS})
    """How every L2 logistic model (the probe, also inside full fine-tuning; the counts and
    tabular logistic regressions; the hybrid) chooses its penalty C under cv selection:
    "evidence" (default: the highest marginal likelihood of the budget's labels under the
    model's Gaussian prior, every label read at once; `selection.log_evidence_bound`) or "cv"
    (by the folds, as `cv_rule` and `cv_metric` say). The epoch, probe versus fine-tuning and
    the GBM's trees are chosen by the folds under either; holdout selection is unchanged.
    Over three pretrainings of the 20,000-visit cohort the evidence raised every logistic
    model's mean AUROC at 100 labels (counts logistic +0.012, interval above 0; SSL +0.003,
    its probe +0.005, tabular logistic +0.004) and moved none down by more than 0.002 at 300
    (benchmarks/README.md, "The penalty by the evidence")."""
    weight_decay: float = 0.01
    """AdamW decay of the weight matrices."""
    head_dropout: float = 0.1
    """Dropout in front of the classification head."""
    readout: str = field(default="forecast", metadata={"choices": READOUTS})
    """The visit vector the head (or the probe) reads, in every mode: "forecast" (default:
    "segments" and the forecast term's state of the visit read as a completed past encounter,
    what the pretraining learned follows such an encounter: 4 D + 2; needs an encoder
    pretrained with the forecast term; a scratch model, with no pretraining, reads "segments"),
    "segments" ([CLS] state, mean state of the history events, mean state of the current
    visit's events, log1p of each segment's event count: 3 D + 2; it keeps the current visit's
    triage apart from the history's mean), "pooled" (the encoder's pooled vector, D) or
    "windows" ("segments" and the same of the history's last WINDOW_DAYS: 6 D + 5). The
    forecast state lifts SSL by 0.008 / 0.006 at 100 / 300 labels over "segments"
    (benchmarks/README.md, "The forecast readout"). Recorded with the model, so predict,
    embed and bundles use it; pretraining never reads it."""
    seed: int = 0
    """Seed of the label subset and of training."""
    device: str = field(default="auto", metadata={"choices": DEVICES})
    """Where to train: "auto" (cuda when available), "cpu" or "cuda"."""
    precision: str = field(default="auto", metadata={"choices": PRECISIONS})
    """Training precision, as train.precision; scoring and embedding always run in fp32."""

    def __post_init__(self) -> None:
        check_choice(self.precision, PRECISIONS, "finetune.precision")
        if self.mode not in FINETUNE_MODES:
            raise InputError(
                f"must be one of {', '.join(FINETUNE_MODES)}, got {self.mode!r}",
                setting="finetune.mode",
            )
        check_count(self.batch_size, "finetune.batch_size", high=MAX_BATCH)
        check_positive(self, ("max_epochs", "patience"), "finetune", high=MAX_EPOCHS)
        if self.selection not in SELECTIONS:
            raise InputError(
                f"must be one of {', '.join(SELECTIONS)}, got {self.selection!r}",
                setting="finetune.selection",
            )
        check_count(self.cv_folds, "finetune.cv_folds", low=2, high=20)
        check_count(self.cv_repeats, "finetune.cv_repeats", high=20)
        check_count(self.cv_max_labels, "finetune.cv_max_labels", high=MAX_BATCH)
        check_choice(self.cv_rule, CV_RULES, "finetune.cv_rule")
        check_choice(self.cv_metric, CV_METRICS, "finetune.cv_metric")
        check_choice(self.penalty_selection, PENALTY_SELECTIONS, "finetune.penalty_selection")
        check_range(self.learning_rate, 1e-9, 10, "finetune.learning_rate")
        check_range(self.encoder_lr_ratio, 0, 10, "finetune.encoder_lr_ratio")
        check_range(self.warmup_epochs, 0, MAX_EPOCHS, "finetune.warmup_epochs")
        check_range(self.weight_decay, 0, 10, "finetune.weight_decay")
        check_range(self.head_dropout, 0, 0.99, "finetune.head_dropout")
        if self.readout not in READOUTS:
            raise InputError(
                f"must be one of {', '.join(READOUTS)}, got {self.readout!r}",
                setting="finetune.readout",
            )
        if self.mode == "scratch" and self.readout == "forecast":
            # The forecast state is what pretraining learned; a model without pretraining reads
            # the rest of the readout. Set here, the one place every scratch fine-tuning's
            # settings come from, so its summary, its config and the pipeline's fingerprint of
            # it all name what it reads.
            self.readout = "segments"
        if self.device not in DEVICES:
            raise InputError(
                f"must be auto, cpu or cuda, got {self.device!r}", setting="finetune.device"
            )
        if not 0 <= self.seed < 2**32:
            raise InputError(f"must be in [0, 2**32), got {self.seed}", setting="finetune.seed")


# The models of a run: the SSL encoder fine-tuned in full (the reference), its linear probe, the
# same transformer from scratch, the counts baselines, the hybrid of counts and SSL vectors, and
# the tabular baselines (windowed counts, value stats and code roll-ups).
MODELS = ("ssl", "ssl_linear_probe", "scratch", "counts_logistic", "counts_gbm", "ssl_plus_counts",
          "tabular_logistic", "tabular_gbm")  # fmt: skip
# The fine-tuned models and their fine-tuning mode; the counts baselines and their kind
# (counts_gbm: LightGBM on the sparse counts, as strong as HistGradientBoosting on the densified
# ones at 1,000 labels, stronger below and about 100x faster; benchmarks/README.md).
FINETUNED = {"ssl": "full", "ssl_linear_probe": "linear-probe", "scratch": "scratch"}
COUNTS = {"counts_logistic": "logistic", "counts_gbm": "lightgbm"}
# The tabular baselines (`ehr_ssl.evaluation.tabular`) and their kind: L2 logistic, LightGBM.
TABULAR = {"tabular_logistic": "logistic", "tabular_gbm": "lightgbm"}
HYBRID = "ssl_plus_counts"  # one logistic regression on the counts and the frozen SSL vectors


def parse_budget(text: str | int | float) -> int | float | None:
    """A label budget: "all" (None: every label), a count ("1000") or a fraction ("0.25")."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str):
        raise InputError(
            f"must be a count, a fraction or 'all', got {text!r}", setting="label_budget"
        )
    if text.strip().lower() == "all":
        return None
    if text.strip().isdigit():
        value = int(text)
    else:
        try:
            fraction = float(text)
        except ValueError:
            raise InputError(
                f"must be a count, a fraction or 'all', got {text!r}", setting="label_budget"
            ) from None
        if not 0 < fraction <= 1:
            raise InputError(f"a fraction must be in (0, 1], got {text}", setting="label_budget")
        return fraction
    if value < 1:
        raise InputError(f"a count must be >= 1, got {text}", setting="label_budget")
    return value


@dataclass
class EvaluateConfig:
    """Which models a run trains and how they are compared on the test split."""

    label_budget: str = "all"
    """The budget of the report's main table: "all", a count ("1000") or a fraction ("0.1")."""
    label_budgets: list[str] = field(default_factory=list)
    """Budgets of the label-efficiency curve (the main budget is always one of them), e.g.
    100,300,1000,3000,all."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Label subsets (and fine-tuning seeds) per budget, e.g. 0,1,2; the main table, the
    bundle and a retrain's candidate use the smallest (`main_seed`)."""
    models: list[str] = field(default_factory=lambda: list(MODELS))
    """The models trained and compared (`MODELS`); "ssl" is the reference."""
    n_boot: int = 1000
    """Patient-level bootstrap replicates for every confidence interval."""

    def __post_init__(self) -> None:
        for budget in [self.label_budget, *self.label_budgets]:
            parse_budget(budget)
        unknown = sorted(set(self.models) - set(MODELS))
        if unknown or not self.models:
            raise InputError(
                f"unknown models {unknown or '(none given)'} (choose from {', '.join(MODELS)})",
                setting="evaluate.models",
            )
        if "ssl" not in self.models:
            raise InputError("'ssl' is the reference model and must be listed",
                             setting="evaluate.models")  # fmt: skip
        if not self.seeds or any(not 0 <= s < 2**32 for s in self.seeds):
            raise InputError(f"must be integers in [0, 2**32), got {self.seeds}",
                             setting="evaluate.seeds")  # fmt: skip
        if len(set(self.seeds)) < len(self.seeds):
            raise InputError(f"a seed is repeated: {self.seeds}", setting="evaluate.seeds")
        check_count(self.n_boot, "evaluate.n_boot", high=MAX_BOOTSTRAP)

    @property
    def budgets(self) -> list[str]:
        """The main budget and the curve's, each once, in the order given."""
        return list(dict.fromkeys([self.label_budget, *self.label_budgets]))

    @property
    def main_seed(self) -> int:
        """The seed of the main table, the bundle and a retrain's candidate: the smallest, as
        the report picks the smallest seed every model has (so "2,0" and "0,2" agree)."""
        return min(self.seeds)


@dataclass
class RetrainConfig:
    """Scheduled retraining (`ehr-ssl retrain`): the fresh test window, continued pretraining
    and the gate a candidate must pass to replace the production model."""

    test_fraction: float = 0.1
    """The most recent visits (by prediction_time) held out as the test window on which the
    candidate and the production model are compared."""
    pretrain_epochs: int = 1
    """Epochs of continued pretraining from the production encoder on the new data (a first
    retrain, with no production model, pretrains from scratch for train.epochs)."""
    label_budget: str = "all"
    """Labeled train visits used for fine-tuning: a count, a fraction or "all"."""
    max_auroc_drop: float = 0.01
    """Gate: candidate test AUROC >= production test AUROC - this."""
    min_auroc: float = 0.7
    """Gate: candidate test AUROC at least this (the only AUROC check of a first retrain). A
    model near 0.5 ranks visits at chance: 0.7 is the floor below which a triage risk score is
    not worth an alert (ESI acuity alone reaches about 0.71 on MIMIC-IV-ED)."""
    calibration_slope_min: float = 0.7
    """Gate: the candidate's calibration slope at least this on the test window (below 1:
    overconfident; 0.7-1.4 is the band the validation literature treats as acceptable)."""
    calibration_slope_max: float = 1.4
    """Gate: the candidate's calibration slope within [min, max] on the test window."""
    max_abs_calibration_intercept: float = 1.5
    """Gate: |calibration intercept| at most this. (Loss weighting for class imbalance shifts
    scores upward, so intercepts near -log(n_neg / n_pos) are expected.)"""

    def __post_init__(self) -> None:
        if not 0 < self.test_fraction < 1:
            raise InputError(
                f"must be in (0, 1), got {self.test_fraction}", setting="retrain.test_fraction"
            )
        check_count(self.pretrain_epochs, "retrain.pretrain_epochs", high=MAX_EPOCHS)
        parse_budget(self.label_budget)
        check_range(self.max_auroc_drop, 0, 1, "retrain.max_auroc_drop")
        check_range(self.min_auroc, 0, 1, "retrain.min_auroc")
        if not 0 <= self.calibration_slope_min <= self.calibration_slope_max:
            raise InputError(
                f"need 0 <= calibration_slope_min <= calibration_slope_max, got "
                f"{self.calibration_slope_min}, {self.calibration_slope_max}",
                setting="retrain.calibration_slope_min",
            )
        check_range(
            self.max_abs_calibration_intercept, 0, 100, "retrain.max_abs_calibration_intercept"
        )


# The keywords of `ehr_ssl.run` and the flags of `ehr-ssl run`: the settings they set.
RUN_OPTIONS = {
    "preset": "preset",
    "epochs": "train.epochs",
    "max_steps": "train.max_steps",
    "label_budget": "evaluate.label_budget",
    "label_budgets": "evaluate.label_budgets",
    "seeds": "evaluate.seeds",
    "n_boot": "evaluate.n_boot",
    "val_fraction": "split.val_fraction",
    "test_fraction": "split.test_fraction",
    "split_seed": "split.seed",
    "accept_leaks": "leakage.accept",
    "meds_labels": "meds.labels",
    "meds_prediction_times": "meds.prediction_times",
    "meds_arrival_code": "meds.arrival_code",
}


@dataclass
class PipelineConfig(PretrainConfig, TokenizeConfig):
    """Everything `ehr-ssl run` needs, one TOML file for all stages: the tokenize tables
    (`[data]`, `[split]`, `[tokenizer]`, `[meds]`, `shard_visits`, `chunk_visits`,
    `chunk_events`), the
    pretraining ones (`preset`, `[model]`, `[objective]`, `[train]`), `[finetune]`, `[evaluate]`
    and `[retrain]`.
    The fields of the first two groups are inherited, so each is declared once."""

    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    leakage: LeakageConfig = field(default_factory=LeakageConfig)

    def __post_init__(self) -> None:
        self.tokenize_config()
        self.pretrain_config()
        if self.finetune.mode != "full" or self.finetune.label_budget is not None:
            raise InputError(
                "the run trains every mode and budget itself: set [evaluate] models and "
                "label_budget(s), not finetune.mode or finetune.label_budget",
                setting="finetune",
            )

    def check_stages_fit(self) -> None:
        """InputError for settings of two stages that do not fit together; the commands that
        run both (`run`, `retrain`) check before the first, not after hours of pretraining."""
        if self.finetune.readout == "forecast" and self.objective.forecast_weight == 0:
            raise InputError(
                "reads the forecast term's state: keep objective.forecast_weight > 0 or set "
                'finetune.readout = "segments"',
                setting="finetune.readout",
            )

    def tokenize_config(self) -> TokenizeConfig:
        return TokenizeConfig(
            data=self.data,
            split=self.split,
            tokenizer=self.tokenizer,
            meds=self.meds,
            shard_visits=self.shard_visits,
            chunk_visits=self.chunk_visits,
            chunk_events=self.chunk_events,
        )

    def pretrain_config(self) -> PretrainConfig:
        return PretrainConfig(self.preset, self.model, self.objective, self.train)

    def finetune_config(self, mode: str, seed: int) -> FinetuneConfig:
        return dataclasses.replace(self.finetune, mode=mode, seed=seed)


def load_pipeline_config(path: Path | None, overrides: dict[str, Any]) -> PipelineConfig:
    """Defaults, then the preset (from the flags, else the file, else "small"), then the TOML
    file, then the flags ("section.key" -> value, None = unset)."""
    file_values = read_toml(path) if path is not None else {}
    preset = overrides.get("preset") or file_values.get("preset") or PipelineConfig.preset
    if not isinstance(preset, str) or preset not in PRESETS:
        in_file = path is not None and not overrides.get("preset")
        raise InputError(
            f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})",
            file=str(path) if in_file else None,
            setting="preset",
        )
    values = merge({"preset": preset, **copy.deepcopy(PRESETS[preset])}, file_values)
    return load_config(PipelineConfig, None, overrides, base=values, source=str(path or "config"))


def load_pretrain_config(path: Path | None, overrides: dict[str, Any]) -> PretrainConfig:
    """The pretraining part of a pipeline config (a file may hold every stage's tables)."""
    return load_pipeline_config(path, overrides).pretrain_config()


def load_tokenize_config(path: Path | None, overrides: dict[str, Any]) -> TokenizeConfig:
    """The tokenize part of a pipeline config (a file may hold every stage's tables)."""
    return load_pipeline_config(path, overrides).tokenize_config()


def read_run_config(run_dir: Path) -> PipelineConfig:
    """The resolved configuration a run directory was made with (RUN/run_config.json).

    Raises:
        InputError: naming `run_dir` when it is not a run directory (a pretraining, tokens or
            fine-tuning directory, a bundle: saying which, and what to give instead), or
            naming run_config.json when it is damaged or holds a bad setting.
    """
    run_dir = Path(run_dir)
    kind = output_kind(run_dir) if run_dir.is_dir() else None
    saved = run_dir / RUN_CONFIG_FILE
    if kind in ("run", "pretrain") and saved.is_file():
        document = read_json(saved, what="run configuration")
        # A pretraining directory keeps its own run_config.json: {"config", "init_encoder",
        # "data"}; a run's holds the PipelineConfig itself.
        if not {"config", "data"} <= set(document):
            return from_dict(PipelineConfig, document, source=str(saved))
        kind = "pretrain"
    raise InputError(_not_a_run_directory(run_dir, kind), file=str(run_dir))


# What to give instead of an output of another kind, where a command takes that one.
_TAKEN_BY = {
    "pretrain": "`ehr-ssl finetune --encoder` takes this one",
    "tokens": "`ehr-ssl pretrain --tokens` and `finetune --tokens` take this one",
    "bundle": "`ehr-ssl predict --model` takes this one",
}


def _not_a_run_directory(path: Path, kind: str | None) -> str:
    """The problem with `path` given as a run directory: what it is and what to give instead
    (the run directory it lies in, when it lies in one)."""
    if not path.exists():
        return "run directory not found"
    what = f"is an ehr-ssl {KINDS[kind]}, not a run directory" if kind in KINDS else (
        "not a run directory (no run_config.json)")  # fmt: skip
    enclosing = next(
        (parent for parent in list(path.resolve().parents)[:3] if output_kind(parent) == "run"),
        None,
    )
    instead = f"the run directory it lies in, {enclosing}" if enclosing else (
        "the directory `ehr-ssl run --out` wrote")  # fmt: skip
    taken_by = f" ({_TAKEN_BY[kind]})" if kind in _TAKEN_BY else ""
    return f"{what}: give {instead}{taken_by}"
