"""Builds the ``tfds`` source from a manifest: re-encoded mp4 bytes per scene in ArrayRecord.

  python -m launch.build_tfds --manifest data/manifest.jsonl --data_dir data/tfds \
      --height 480 --width 720

Then train with ``config.data.source = "tfds"``, ``config.data.path = <data_dir>``. Lines
that are not valid JSON, have an empty caption, or point to missing / unreadable videos are
skipped and counted; the counts are printed at the end.
"""

from __future__ import annotations

import argparse
import sys

from m2dit_jax.data.tfds_builder import build_from_manifest


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--manifest", required=True, help="JSONL manifest (see data/manifest.py)")
    parser.add_argument("--data_dir", required=True, help="TFDS data_dir to write into")
    parser.add_argument("--height", type=int, default=480, help="stored frame height (even)")
    parser.add_argument("--width", type=int, default=720, help="stored frame width (even)")
    args = parser.parse_args(argv)
    try:
        path, skips = build_from_manifest(
            args.manifest, args.data_dir, height=args.height, width=args.width
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    skipped = {k: v for k, v in skips.items() if v}
    print(f"skipped: {skipped if skipped else 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
