"""Evaluation: analytic detectors for the synthetic task and video metrics."""
