"""Using trained models: bundles and their model card, batch scoring, drift, the model registry and
scheduled retraining."""
