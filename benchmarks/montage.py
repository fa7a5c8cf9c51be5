"""Stacks every `views.png` under a folder into one labelled PNG (rows = assets), for reading results at a glance."""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw


def montage(root: Path, output: Path) -> None:
    files = sorted(root.rglob("views.png"))
    if not files:
        return
    images = [Image.open(f).convert("RGB") for f in files]
    label_width = 200
    width = max(i.width for i in images) + label_width
    canvas = Image.new("RGB", (width, sum(i.height for i in images)), "white")
    draw, y = ImageDraw.Draw(canvas), 0
    for file, image in zip(files, images):
        canvas.paste(image, (label_width, y))
        draw.text((4, y + image.height // 2 - 6), str(file.parent.relative_to(root)), fill="black")
        y += image.height
    canvas.save(output)


if __name__ == "__main__":
    montage(Path(sys.argv[1]), Path(sys.argv[2]))
