"""Bad-input accounting: skip reasons, the exception sources raise, and log-once-per-file.

A source raises ``BadSample(reason, file, message)`` for an input it cannot use; the pipeline
then skips the sample (replacing it with another one so the batch layout never changes),
counts it under ``reason`` and logs the message once per file. With ``strict=True`` the
pipeline raises ``ValueError`` with the same message instead.
"""

from __future__ import annotations

import logging

# Every reason a sample can be skipped for; skip_counts() reports all of them (0 included).
SKIP_REASONS: tuple[str, ...] = (
    "missing_file",  # the video / shard does not exist
    "unreadable_video",  # not a video, corrupt or truncated so that decoding fails
    "too_short",  # a clip or shot has fewer frames than the sampling needs
    "empty_caption",  # a caption is empty, missing or not a string
    "bad_manifest_line",  # a manifest line is not valid JSON or lacks the "video" field
    "too_few_shots",  # a multi-shot video has fewer than S shots (stage 2)
    "bad_record",  # a TFDS / latents record that does not decode or has the wrong shapes
)

logger = logging.getLogger("m2dit_jax.data")
_logged_files: set[str] = set()


class BadSample(Exception):
    """An input the pipeline must skip: ``reason`` is one of ``SKIP_REASONS``."""

    def __init__(self, reason: str, file: str, message: str):
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; expected one of {SKIP_REASONS}")
        super().__init__(f"[{reason}] {file}: {message}")
        self.reason, self.file, self.message = reason, file, message


def log_once(error: BadSample) -> None:
    """Log a skipped input once per file (per process)."""
    if error.file not in _logged_files:
        _logged_files.add(error.file)
        logger.warning("skipping bad input %s", error)


def empty_counts() -> dict[str, int]:
    return {reason: 0 for reason in SKIP_REASONS}
