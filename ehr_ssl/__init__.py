"""ehr-ssl: self-supervised representations of emergency-department visits from EHR Parquet data."""

__version__ = "0.1.0"
