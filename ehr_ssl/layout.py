"""The output directories of ehr-ssl, in one place: every file and folder name they hold.

Every output directory but a bundle (whose bundle.json says what it is) carries OUTPUT_MARKER_FILE,
naming its kind (`ehr_ssl.outputs`). A run directory (`ehr-ssl run`) nests the others:

    RUN/ehr_ssl_output.json  the marker: {"format": "ehr-ssl-output", "kind": "run", ...}
    RUN/run_config.json    the resolved PipelineConfig
    RUN/stages.json        stage -> fingerprint of its complete outputs
    RUN/tokens/            a tokens directory (`ehr-ssl tokenize`)
    RUN/pretrain/          a pretraining directory (`ehr-ssl pretrain`); its encoder in encoder/
    RUN/models/<budget>-seed<seed>/<model>/   fine-tuning directories (`ehr-ssl finetune`)
    RUN/report.json  report.md  predictions.parquet  validation_predictions.parquet
    RUN/roc.png  calibration.png  decision_curve.png  label_efficiency.png
    RUN/meds_predictions/<model>/<budget>-seed<seed>.parquet   the test predictions in the
                           MEDS prediction schema (integer patient ids only)
    RUN/bundle/            a bundle (`ehr-ssl bundle`): the SSL model at the main budget
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# In every output directory but a bundle: which kind of ehr-ssl output it is (ehr_ssl.outputs).
OUTPUT_MARKER_FILE = "ehr_ssl_output.json"

# A tokens directory: TOKENS/{tokenizer,manifest,config}.json and TOKENS/<split>/part-*.arrow.
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "manifest.json"
TOKENS_CONFIG_FILE = "config.json"
# Optional, beside them: the code hierarchy (code, parent_codes), MEDS metadata/codes.parquet's
# columns, from which the tabular baselines roll counts up (ehr_ssl.evaluation.tabular).
CODES_FILE = "codes.parquet"

# A pretraining directory. RUN_CONFIG_FILE is also the run directory's own configuration.
RUN_CONFIG_FILE = "run_config.json"
STAGES_FILE = "stages.json"  # a run directory's record of its complete stages
METRICS_FILE = "metrics.jsonl"
PRETRAIN_SUMMARY_FILE = "pretrain_summary.json"  # written last: the pretraining finished
ENCODER_DIR = "encoder"  # config.json + model.safetensors (AutoModel.from_pretrained)
HEADS_FILE = "pretraining_heads.safetensors"
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
MODEL_CONFIG_FILE = "config.json"  # what save_pretrained writes beside the weights
WEIGHTS_FILE = "model.safetensors"

# A fine-tuning directory: the classifier (full, scratch) or the probe (linear-probe).
FINETUNE_SUMMARY_FILE = "finetune_summary.json"  # written last: the fine-tuning finished
CLASSIFIER_DIR = "model"
PROBE_FILE = "linear_probe.safetensors"

# The report of a run (`ehr-ssl evaluate`).
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PREDICTIONS_FILE = "predictions.parquet"
# The reference model's validation scores that fixed the report's operating thresholds (kept
# apart: predictions.parquet holds the test split only).
VALIDATION_PREDICTIONS_FILE = "validation_predictions.parquet"
# The test predictions again, in the MEDS prediction schema for meds-evaluation: it allows no
# model, budget or seed column, so one file per (model, budget, seed).
MEDS_PREDICTIONS_DIR = "meds_predictions"
ROC_PLOT = "roc.png"
CALIBRATION_PLOT = "calibration.png"
LABEL_EFFICIENCY_PLOT = "label_efficiency.png"
DECISION_CURVE_PLOT = "decision_curve.png"

# A bundle: ENCODER_DIR, HEAD_FILE, TOKENIZER_FILE, REPORT_JSON, PROFILE_FILE, MODEL_CARD_FILE.
BUNDLE_FILE = "bundle.json"
HEAD_FILE = "head.safetensors"
PROFILE_FILE = "data_profile.json"
MODEL_CARD_FILE = "MODEL_CARD.md"

# A retrain's work directory (a RunLayout under the registry's work/) fine-tunes the candidate
# into CANDIDATE_DIR; the bundle it registers gains the retrain report.
CANDIDATE_DIR = "finetune"
RETRAIN_REPORT_MD = "retrain_report.md"
RETRAIN_REPORT_JSON = "retrain_report.json"


@dataclass(frozen=True)
class RunLayout:
    """The paths of a run directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / RUN_CONFIG_FILE

    @property
    def stages(self) -> Path:
        return self.root / STAGES_FILE

    @property
    def tokens(self) -> Path:
        return self.root / "tokens"

    @property
    def pretrain(self) -> Path:
        return self.root / "pretrain"

    @property
    def encoder(self) -> Path:
        return self.pretrain / ENCODER_DIR

    def model(self, budget: str, seed: int, model: str) -> Path:
        """The fine-tuning directory of one model at one label budget and seed."""
        return self.root / "models" / f"{budget}-seed{seed}" / model

    @property
    def report(self) -> Path:
        return self.root / REPORT_JSON

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"
