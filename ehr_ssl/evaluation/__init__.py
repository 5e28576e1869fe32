"""Evaluation: metrics with patient-level bootstrap CIs, the counts baselines, scoring every model
on the test split, and the report (its rendering and plots)."""
