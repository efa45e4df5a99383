"""Inference: sampling scripts, exported model bundles and the sampling pipeline."""
