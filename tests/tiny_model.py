"""The tiny RetinaMask the export and runtime tests share: the R-50 code path with one block per
stage and narrow widths (``load_config(name, TINY_OPTS)``), and random weights rescaled so that it
detects something.
Importing this module needs no torch (the runtime-only tests use TINY_OPTS too)."""

TINY_OPTS = [
    "MODEL.RESNETS.BLOCK_COUNTS",
    "(1, 1, 1, 1)",
    "MODEL.RESNETS.WIDTH_PER_GROUP",
    "8",
    "MODEL.RESNETS.STEM_OUT_CHANNELS",
    "8",
    "MODEL.RESNETS.RES2_OUT_CHANNELS",
    "32",
    "MODEL.BACKBONE.OUT_CHANNELS",
    "32",
    "MODEL.ROI_MASK_HEAD.CONV_LAYERS",
    "(32, 32)",
    "RETINANET.NUM_CLASSES",
    "4",
]


def tiny_model_with_detections(cfg, canvas_side, structured_masks=False):
    """Seeded random weights, eval mode. Classification logits rescaled to std 1.5 around -3 on a
    sample input (so that detections survive the score threshold), box regression x20 (boxes that
    differ from their anchors); ``structured_masks``: mask logits x5 (masks with structure)."""
    import torch

    from retinamask.export import sample_input
    from retinamask.modeling import build_model

    torch.manual_seed(0)
    model = build_model(cfg).eval()
    head = model.rpn.head
    with torch.no_grad():
        _, logits, _ = model.rpn(model.backbone(sample_input(cfg, canvas_side, 1)))
        raw = torch.cat([(level - head.cls_logits.bias.view(1, -1, 1, 1)).flatten() for level in logits])
        head.cls_logits.weight.mul_(1.5 / raw.std())
        head.cls_logits.bias.fill_(-3.0 - (raw.mean() * 1.5 / raw.std()).item())
        head.bbox_pred.weight.mul_(20)
        if structured_masks:
            model.mask.predictor.mask_fcn_logits.weight.mul_(5)
    return model
