"""Draws mask 1 of a scene layout as a PNG.

  python -m launch.show_mask --scenes 3 --text_len 6 --frames 2 --grid_h 2 --grid_w 3 \
      --out runs/mask.png

White = may attend, black = blocked; text/video regions and scene boundaries are labelled.
Above ~4k tokens the mask is drawn at reduced resolution (each pixel = a block of tokens,
grey where the block is partly allowed) without building the dense L x L array.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

from m2dit_jax.layout import SceneLayout

SCENE_COLOURS = [(230, 80, 60), (60, 150, 230), (90, 190, 90), (220, 170, 40), (170, 90, 210)]


def mask_image(layout: SceneLayout, max_pixels: int = 1024) -> np.ndarray:
    """(P, P) float in [0, 1]: fraction of allowed pairs per pixel block; P <= max_pixels."""
    n = layout.seq_len
    stride = max(1, -(-n // max_pixels))
    size = -(-n // stride)
    out = np.zeros((size, size), np.float64)
    cols = np.arange(n)
    for r in range(size):
        rows = np.arange(r * stride, min(n, (r + 1) * stride))
        allowed = np.asarray(layout.allowed(rows[:, None], cols[None, :]), np.float64).mean(0)
        padded = np.zeros(size * stride)
        padded[:n] = allowed
        out[r] = padded.reshape(size, stride).mean(1)
    return out


def render(layout: SceneLayout, max_pixels: int = 1024) -> Image.Image:
    grid = mask_image(layout, max_pixels)
    p = grid.shape[0]
    scale = max(1, 600 // p)
    cell = (grid * 255).astype(np.uint8)
    body = Image.fromarray(cell).resize((p * scale, p * scale), Image.NEAREST).convert("RGB")
    margin = 90
    img = Image.new("RGB", (body.width + margin + 10, body.height + margin + 10), "white")
    img.paste(body, (margin, margin))
    draw = ImageDraw.Draw(img)
    to_px = lambda tok: margin + tok * body.width / layout.seq_len
    for i in range(layout.num_scenes):
        colour = SCENE_COLOURS[i % len(SCENE_COLOURS)]
        for kind, sl in (("T", layout.text_block_slice(i)), ("V", layout.video_slice(i))):
            a, b = to_px(sl.start), to_px(sl.stop)
            draw.rectangle([a, margin - 18, b, margin - 4], fill=colour)
            draw.rectangle([margin - 18, a, margin - 4, b], fill=colour)
            label = f"{kind}{i + 1}"
            draw.text(((a + b) / 2 - 6, margin - 34), label, fill=colour)
            draw.text((margin - 50, (a + b) / 2 - 5), label, fill=colour)
            for edge in (a, b):
                draw.line([edge, margin, edge, margin + body.height], fill=colour, width=1)
                draw.line([margin, edge, margin + body.width, edge], fill=colour, width=1)
    boundary = to_px(layout.text_total)
    draw.line([boundary, margin, boundary, margin + body.height], fill=(255, 0, 255), width=2)
    draw.line([margin, boundary, margin + body.width, boundary], fill=(255, 0, 255), width=2)
    draw.text(
        (6, 6),
        f"mask 1: S={layout.num_scenes} text={layout.text_len}(+{layout.text_padding} pad) "
        f"video={layout.frames}x{layout.grid_h}x{layout.grid_w}  L={layout.seq_len}  "
        f"blocked={layout.blocked_fraction():.1%}",
        fill="black",
    )
    draw.text((6, 20), "rows = queries, columns = keys; white = attend", fill="black")
    return img


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=3)
    parser.add_argument("--text_len", type=int, default=8)
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--grid_h", type=int, default=3)
    parser.add_argument("--grid_w", type=int, default=4)
    parser.add_argument("--text_pad_to", type=int, default=1)
    parser.add_argument("--max_pixels", type=int, default=1024)
    parser.add_argument("--out", default="runs/mask.png")
    args = parser.parse_args(argv)
    try:
        layout = SceneLayout(
            args.scenes, args.text_len, args.frames, args.grid_h, args.grid_w, args.text_pad_to
        )
    except ValueError as e:
        parser.error(str(e))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    render(layout, args.max_pixels).save(args.out)
    print(f"wrote {args.out} ({layout.seq_len} tokens, {layout.blocked_fraction():.2%} blocked)")
    return args.out


def run() -> None:
    main(sys.argv[1:])


if __name__ == "__main__":
    run()
