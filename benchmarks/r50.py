"""The model the R-50 benchmarks time and what they feed it.

R-50-FPN RetinaMask with random weights (He init; the classification bias lowered so that ~100
detections survive, as with a trained model); one preprocessed synthetic image; folders of
synthetic JPEG photos.
"""

from retinamask.core.contract import DEFAULT_MAX_DETECTIONS, SEED_CANVAS_SIDE

CONFIG = "retinanet_mask_R-50-FPN_2x_adjust_std011_ms"
INPUT_SIZE = SEED_CANVAS_SIDE  # the seed's square canvas side S, as the suite exports its models
MAX_DETECTIONS = DEFAULT_MAX_DETECTIONS


def build_benchmark_model():
    """The R-50 model in eval mode, weights random but deterministic (torch seed 0)."""
    import torch

    from retinamask.config import load_config
    from retinamask.modeling import build_model

    torch.manual_seed(0)
    model = build_model(load_config(CONFIG))
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.fill_(1.0)
            elif ".bn" in name or "downsample.1" in name:
                tensor.normal_(1.0 if name.endswith("weight") else 0.0, 0.05 if name.endswith("weight") else 0.01)
        model.backbone.body.stem.conv1.weight.mul_(1 / 64)  # inputs are 0-255 minus mean
        model.rpn.head.cls_logits.bias.fill_(-2.5)
        model.rpn.head.cls_logits.weight.normal_(0, 0.02)
    return model.eval()


def benchmark_input(canvas_side=INPUT_SIZE, variant=0):
    """One preprocessed image, float32 [1, 3, S, S]: a textured synthetic 4:3 picture through the
    seed transform (so the canvas has the zero padding a real landscape image gives)."""
    from retinamask.data.transforms import seed_preprocess
    from retinamask.export.verify import synthetic_image

    image = synthetic_image(height=canvas_side * 3 // 4, width=canvas_side, variant=variant)
    return seed_preprocess(image, canvas_side)[0][None]


def write_jpegs(folder, count, height=480, width=640, start_variant=100):
    """``count`` synthetic JPEG photos (quality 90), COCO-sized by default; existing ones are kept."""
    from PIL import Image

    from retinamask.export.verify import synthetic_image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:06d}.jpg"
        if not path.exists():
            Image.fromarray(synthetic_image(height, width, variant=start_variant + i)).save(path, quality=90)
        paths.append(path)
    return paths
