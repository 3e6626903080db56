"""Predictor: image in (path, PIL image or array), detections and full-image masks out.

>>> predictor = Predictor.from_config("retinanet_mask_R-50-FPN_2x_adjust_std011_ms", "model_final.pth")
>>> result = predictor("street.jpg")
>>> result.boxes, result.scores, result.labels, result.class_names, result.masks
"""

import numpy as np
import torch

from ..checkpoint import load_checkpoint
from ..config import load_config
from ..data.image_io import as_rgb_array
from ..data.transforms import seed_preprocess, upstream_preprocess
from ..evaluation.boxes import rescale_boxes
from ..evaluation.postprocess import boxes_to_original
from ..evaluation.masks import paste_masks
from ..modeling import build_model
from ..structures import Prediction


class Predictor:
    """The PyTorch RetinaMask with its test-time pre- and post-processing.

    ``input_size=None`` uses the original's transform (short side ``INPUT.MIN_SIZE_TEST``, long side
    at most ``INPUT.MAX_SIZE_TEST``, padded to /32); an integer S uses the seed's fixed S x S canvas
    (long side resized to S), as the exported models do.
    """

    def __init__(self, model, cfg, input_size=None, device="cpu", mask_threshold=0.5):
        self.model = model.eval().to(device)
        self.cfg = cfg
        self.input_size = input_size
        self.device = torch.device(device)
        self.mask_threshold = mask_threshold

    @classmethod
    def from_config(cls, config, weights=None, opts=(), **kwargs):
        """Build from a config (shipped name or path) and an optional checkpoint path."""
        cfg = load_config(config, opts)
        model = build_model(cfg)
        if weights is not None:
            load_checkpoint(model, weights)
        return cls(model, cfg, **kwargs)

    @property
    def class_names(self):
        return self.model.class_names

    def preprocess(self, image_rgb):
        """uint8 [H, W, 3] RGB -> (float32 [3, Hp, Wp] input, (h, w) valid region)."""
        inp = self.cfg.INPUT
        if self.input_size is None:
            return upstream_preprocess(image_rgb, inp.MIN_SIZE_TEST, inp.MAX_SIZE_TEST, inp.PIXEL_MEAN,
                                       inp.PIXEL_STD, self.cfg.DATALOADER.SIZE_DIVISIBILITY)
        chw, _, resized_hw = seed_preprocess(image_rgb, self.input_size, inp.PIXEL_MEAN, inp.PIXEL_STD)
        return chw, resized_hw

    @torch.no_grad()
    def __call__(self, image):
        return self.predict_batch([image])[0]

    @torch.no_grad()
    def predict_batch(self, images):
        """A list of images (paths, PIL images or uint8 RGB arrays) -> list of Prediction."""
        rgbs = [as_rgb_array(image) for image in images]
        inputs = [self.preprocess(rgb) for rgb in rgbs]
        height = max(chw.shape[1] for chw, _ in inputs)
        width = max(chw.shape[2] for chw, _ in inputs)
        batch = np.zeros((len(inputs), 3, height, width), dtype=np.float32)
        for i, (chw, _) in enumerate(inputs):
            batch[i, :, : chw.shape[1], : chw.shape[2]] = chw
        # The fixed canvas clips to the whole canvas, as the exported graphs do.
        sizes = [(height, width) if self.input_size else valid_hw for _, valid_hw in inputs]
        detections = self.model(torch.from_numpy(batch).to(self.device), sizes)
        return [self._to_original(det, valid_hw, rgb.shape[:2])
                for det, (_, valid_hw), rgb in zip(detections, inputs, rgbs)]

    def _to_original(self, det, resized_hw, original_hw):
        order = torch.argsort(det["scores"], descending=True, stable=True)
        det = {k: v[order].cpu().numpy() for k, v in det.items()}
        if self.input_size:  # as the exported models: the canvas is clipped, then the image
            boxes = boxes_to_original(det["boxes"], original_hw, resized_hw)
        else:  # as the original: scaled, not clipped again
            boxes = rescale_boxes(det["boxes"], resized_hw, original_hw)
        probs = det.get("mask_probs", np.zeros((len(boxes), 28, 28), np.float32))
        masks = paste_masks(probs, boxes, original_hw[0], original_hw[1], threshold=self.mask_threshold)
        labels = det["labels"].astype(np.int64)
        return Prediction(boxes=boxes, scores=det["scores"].astype(np.float32), labels=labels,
                          class_names=[self.class_names[i - 1] for i in labels], masks=masks,
                          mask_probs=probs, image_size=tuple(original_hw),
                          extras={"mask_levels": det.get("mask_levels")})
