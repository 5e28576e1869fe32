"""ehr-ssl: self-supervised representations of emergency-department visits from EHR Parquet data.

Importing the package registers the encoder with transformers' Auto classes, so
`AutoConfig.from_pretrained(run / "encoder")` and `AutoModel.from_pretrained(...)` work.
"""

__version__ = "0.1.0"

from ehr_ssl import model as _model  # noqa: E402,F401  (registers EHRConfig/EHREncoder)
