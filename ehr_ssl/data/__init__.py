"""Input data, polars and pyarrow only (never torch): the contract (schema), readers, windows (the
cutoff), splits and label budgets, the dataset summary and the synthetic cohort."""
