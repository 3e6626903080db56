"""The evaluation report's HTML page: one file, styles, script and pictures inline (no network)."""

import base64
import html

from retinamask.evaluation.coco_eval import STAT_NAMES

_STAT_TITLES = {
    "AP": "AP @[.50:.95]",
    "AP50": "AP @.50",
    "AP75": "AP @.75",
    "APs": "AP small",
    "APm": "AP medium",
    "APl": "AP large",
    "AR1": "AR max 1",
    "AR10": "AR max 10",
    "AR100": "AR max 100",
    "ARs": "AR small",
    "ARm": "AR medium",
    "ARl": "AR large",
}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1180px; color: #222; padding: 0 16px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; } td, th { padding: 3px 10px; border-bottom: 1px solid #eee; }
th { background: #f4f4f4; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.meta { color: #555; } .grid { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; } figcaption { font-size: 0.9em; color: #444; } img { max-width: 100%; border: 1px solid #ddd; }
#load-warning { display: none; background: #fee; border: 1px solid #c00; padding: 8px; }
"""

# Records how many pictures decoded: data-images-loaded / data-images-total on <body>
# (read by tests/test_evaluation_report.py through headless Chromium's --dump-dom).
_SCRIPT = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (img) { return img.complete && img.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-loaded', String(loaded));
  document.body.setAttribute('data-images-total', String(images.length));
  if (loaded < images.length) {
    var warning = document.getElementById('load-warning');
    warning.textContent = (images.length - loaded) + ' of ' + images.length + ' pictures failed to load.';
    warning.style.display = 'block';
  }
});
"""


def _fmt(value):
    return "&mdash;" if value is None or value < 0 else f"{value:.3f}"


def _img(pictures, index, alt):
    name, data, _ = pictures[index]
    kind = "png" if name.endswith(".png") else "jpeg"
    uri = f"data:image/{kind};base64," + base64.b64encode(data).decode("ascii")
    return f'<img src="{uri}" alt="{html.escape(alt)}" data-file="{html.escape(name)}">'


def render_page(summary, numbers, names, curves, shown, pictures, missing):
    """The page as a string; arguments as ``report.write_report`` builds them."""
    stats = numbers["stats"]
    types = list(stats)
    parts = _head(summary)
    parts += _stats_table(stats, types)
    parts += _size_table(stats, numbers["gt_counts"], types)
    parts += _class_table(numbers, names, types)
    parts += _curve_figures(curves, pictures, types)
    parts += _image_figures(numbers["images"]["ranked_by"], shown, pictures, missing)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _head(summary):
    """[html line]: the document head, the load warning, the title and the run's one-line description."""
    e = html.escape
    return [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>RetinaMask evaluation report</title>",
        f"<style>{_STYLE}</style>",
        f"<script>{_SCRIPT}</script></head><body>",
        '<div id="load-warning"></div>',
        "<h1>RetinaMask evaluation report</h1>",
        f'<p class="meta">{summary["images_evaluated"]} images evaluated ({e(str(summary["layout"]))} layout, '
        f"{e(str(summary.get('convention', 'original')))} convention, {summary['num_results']} detections, "
        f"COCO backend {e(str(summary['stats'].get('backend')))}); outputs: {e(str(summary['results_dir']))}</p>",
    ]


def _stats_table(stats, types):
    """[html line]: the 12 COCO stats, one column per IoU type."""
    parts = ["<h2>COCO stats</h2><table><tr><th>stat</th>" + "".join(f"<th>{t}</th>" for t in types) + "</tr>"]
    for name in STAT_NAMES:
        parts.append(
            f"<tr><td>{_STAT_TITLES[name]}</td>"
            + "".join(f'<td class="n">{_fmt(stats[t][name])}</td>' for t in types)
            + "</tr>"
        )
    parts.append("</table>")
    return parts


def _size_table(stats, counts, types):
    """[html line]: AP and AR by object size with the number of ground-truth objects of each size."""
    totals = {size: sum(c[size] for c in counts.values()) for size in ("small", "medium", "large")}
    parts = [
        '<h2>By object size</h2><p class="meta">small &lt; 32&sup2; px, medium &lt; 96&sup2; px, '
        "large above (COCO's ranges; a detection's size is its own area).</p>",
        "<table><tr><th>size</th><th>objects</th>"
        + "".join(f"<th>{t} AP</th><th>{t} AR</th>" for t in types)
        + "</tr>",
    ]
    for size, key in (("small", "s"), ("medium", "m"), ("large", "l")):
        parts.append(
            f'<tr><td>{size}</td><td class="n">{totals[size]}</td>'
            + "".join(
                f'<td class="n">{_fmt(stats[t]["AP" + key])}</td><td class="n">{_fmt(stats[t]["AR" + key])}</td>'
                for t in types
            )
            + "</tr>"
        )
    parts.append("</table>")
    return parts


def _class_table(numbers, names, types):
    """[html line]: AP, AP50, AP75 and AP by size of each class, with its number of ground-truth objects."""
    e = html.escape
    counts = numbers["gt_counts"]
    parts = [
        "<h2>Per class</h2><table><tr><th>class</th><th>objects</th>"
        + "".join(f"<th>{t} AP</th><th>{t} AP50</th><th>{t} AP75</th><th>{t} APs / APm / APl</th>" for t in types)
        + "</tr>"
    ]
    for cat_id, name in names.items():
        row = f'<tr><td>{e(name)}</td><td class="n">{counts.get(cat_id, {}).get("all", 0)}</td>'
        for t in types:
            ap = numbers["per_class"][t][cat_id]
            row += "".join(f'<td class="n">{_fmt(ap[k])}</td>' for k in ("AP", "AP50", "AP75"))
            row += f'<td class="n">{" / ".join(_fmt(ap[k]) for k in ("APs", "APm", "APl"))}</td>'
        parts.append(row + "</tr>")
    parts.append("</table>")
    return parts


def _curve_figures(curves, pictures, types):
    """[html line]: the precision-recall charts, inline."""
    e = html.escape
    parts = ['<h2>Precision-recall curves</h2><div class="grid">']
    for t in types:
        for index in curves[t]:
            parts.append(
                f"<figure>{_img(pictures, index, pictures[index][2])}"
                f"<figcaption>{e(pictures[index][2])}</figcaption></figure>"
            )
    parts.append("</div>")
    return parts


def _image_figures(ranking, shown, pictures, missing):
    """[html line]: the best and worst images (drawn ones inline) and the images that could not be drawn."""
    e = html.escape
    parts = []
    for group, title in (("best", "Best images"), ("worst", "Worst images")):
        parts.append(
            f'<h2>{title}</h2><p class="meta">Ranked by {e(ranking)}; left: ground truth, right: '
            'detections above the score threshold.</p><div class="grid">'
        )
        for entry in shown[group]:
            caption = (
                f"{e(entry['file_name'])}: F1 {entry['f1']:.2f} (TP {entry['tp']}, FP {entry['fp']}, FN {entry['fn']})"
            )
            picture = _img(pictures, entry["picture"], entry["file_name"]) if "picture" in entry else ""
            parts.append(f"<figure>{picture}<figcaption>{caption}</figcaption></figure>")
        parts.append("</div>")
    if missing:
        parts.append('<p class="meta">Not drawn: ' + "; ".join(e(m) for m in missing[:10]) + "</p>")
    return parts
