"""The networks: the encoder (EHRConfig + EHREncoder), heads, the classifier, the pretraining model,
losses, masking and views. Pure torch modules and functions: no files, no loops."""
