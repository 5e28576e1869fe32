"""Training recipes: the pretraining loop, fine-tuning and the linear probe, checkpoints,
distributed processes and the device."""
