"""Frozen encoders: text (captions -> embeddings) and video (pixels <-> latents)."""
