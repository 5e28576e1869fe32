"""ehr-ssl: self-supervised representations of emergency-department visits from EHR Parquet data.

After `import ehr_ssl`, `AutoConfig`/`AutoModel.from_pretrained(run / "encoder")` work: the encoder
classes are registered with transformers as soon as transformers is imported (at once if it
already is). Data-only work (`ehr-ssl validate`, `tokenize`) thus never pays the seconds that
importing torch and transformers takes.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Any

__version__ = "0.1.0"

# Public API, imported on first use (PEP 562) so `import ehr_ssl` stays light.
_EXPORTS = {
    "load": "ehr_ssl.api",
    "run": "ehr_ssl.api",
    "evaluate": "ehr_ssl.api",
    "RunResult": "ehr_ssl.api",
    "AdmissionModel": "ehr_ssl.deploy.bundle",
    "Tokenizer": "ehr_ssl.tokens.tokenizer",
    "tokenize_dataset": "ehr_ssl.tokens.tokenize",
    "read_dataset": "ehr_ssl.data.readers",
    "generate_cohort": "ehr_ssl.data.synthetic",
    "EHRConfig": "ehr_ssl.model.encoder",
    "EHREncoder": "ehr_ssl.model.encoder",
    "pretrain": "ehr_ssl.training.pretrain",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ehr_ssl' has no attribute {name!r}")


def _register_encoder() -> None:
    importlib.import_module("ehr_ssl.model.encoder")  # registers EHRConfig/EHREncoder on import


class _RegisterAfterTransformers(importlib.abc.MetaPathFinder):
    """One-shot import hook: when `transformers` is imported, register the encoder after it."""

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001 - importlib protocol
        if fullname != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module) -> None:  # noqa: ANN001
            exec_module(module)
            _register_encoder()

        spec.loader.exec_module = exec_then_register
        return spec


if "transformers" in sys.modules:
    _register_encoder()
elif not any(isinstance(f, _RegisterAfterTransformers) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTransformers())
