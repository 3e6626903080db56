"""Line charts as PNG with Pillow (no plotting library needed): the report's precision-recall curves."""

import functools
import io

from PIL import Image, ImageDraw, ImageFont

PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


@functools.lru_cache(maxsize=8)
def _font(size):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def line_chart_png(series, title, x_label="recall", y_label="precision", size=(560, 400), scale=2):
    """PNG bytes of a line chart on [0, 1] x [0, 1].

    series: list of (label, xs, ys) with xs, ys float sequences of equal length; points with
    y < 0 (COCO's "undefined") are left out. Colours follow PALETTE in order; at most
    ``len(PALETTE)`` series get a legend entry each. Drawn at ``scale`` x the size, then
    downsampled, for smooth lines.
    """
    width, height = size[0] * scale, size[1] * scale
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(14 * scale), _font(12 * scale)
    left, right, top, bottom = 64 * scale, width - 16 * scale, 36 * scale, height - 52 * scale

    def to_px(x, y):
        return left + x * (right - left), bottom - y * (bottom - top)

    draw.text(((left + right) / 2, 8 * scale), title, fill="black", font=font, anchor="ma")
    for step in range(6):
        value = step / 5
        x, _ = to_px(value, 0)
        _, y = to_px(0, value)
        draw.line([(x, top), (x, bottom)], fill=(230, 230, 230), width=scale)
        draw.line([(left, y), (right, y)], fill=(230, 230, 230), width=scale)
        draw.text((x, bottom + 6 * scale), f"{value:.1f}", fill="black", font=small, anchor="ma")
        draw.text((left - 6 * scale, y), f"{value:.1f}", fill="black", font=small, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline="black", width=scale)
    draw.text(((left + right) / 2, height - 8 * scale), x_label, fill="black", font=font, anchor="md")
    label_image = Image.new("RGB", (bottom - top, 20 * scale), "white")
    ImageDraw.Draw(label_image).text(((bottom - top) / 2, 0), y_label, fill="black", font=font, anchor="ma")
    image.paste(label_image.rotate(90, expand=True), (4 * scale, top))

    legend = []
    for index, (label, xs, ys) in enumerate(series):
        colour = PALETTE[index % len(PALETTE)]
        points = [to_px(float(x), float(y)) for x, y in zip(xs, ys) if y >= 0]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2 * scale, joint="curve")
        elif points:
            draw.ellipse(
                [
                    points[0][0] - 3 * scale,
                    points[0][1] - 3 * scale,
                    points[0][0] + 3 * scale,
                    points[0][1] + 3 * scale,
                ],
                fill=colour,
            )
        if index < len(PALETTE):
            legend.append((label, colour))
    for row, (label, colour) in enumerate(legend):  # bottom left: PR curves fall towards the bottom right
        y_line = bottom - (len(legend) - row) * 18 * scale
        draw.line([(left + 10 * scale, y_line), (left + 34 * scale, y_line)], fill=colour, width=3 * scale)
        draw.text((left + 40 * scale, y_line), label, fill="black", font=small, anchor="lm")
    buffer = io.BytesIO()
    image.reduce(scale).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
