"""Predictor: image in (path, PIL image or array), detections and full-image masks out.

>>> predictor = Predictor.from_config("retinanet_mask_R-50-FPN_2x_adjust_std011_ms", "model_final.pth")
>>> result = predictor("street.jpg")
>>> result.boxes, result.scores, result.labels, result.class_names, result.masks
"""

import numpy as np
import torch

from retinamask.config import load_config
from retinamask.core.detections import Detections
from retinamask.core.geometry import boxes_to_image
from retinamask.core.resize import OriginalResize, make_policy
from retinamask.data.transforms import policy_preprocess
from retinamask.formats.images import as_rgb_array
from retinamask.modeling import build_model
from retinamask.modeling.checkpoint import load_checkpoint
from retinamask.ops.masks import paste_function


class Predictor:
    """The PyTorch RetinaMask with its test-time pre- and post-processing.

    ``resize``: a :class:`~retinamask.core.resize.ResizePolicy` or its name. None (default) uses the
    original's transform (``original``: short side ``INPUT.MIN_SIZE_TEST``, long side at most
    ``INPUT.MAX_SIZE_TEST``, padded to DATALOADER.SIZE_DIVISIBILITY); ``seed`` the seed's fixed
    S x S canvas (long side resized to S = ``canvas_side``, as the square exported models do).
    An integer ``canvas_side`` alone selects the seed policy (as before resize policies).
    ``mask_paste``: "original" (the original's Masker) or "subpixel" (``paste_masks_subpixel``), as
    :func:`~retinamask.ops.masks.paste_function` names them.
    """

    def __init__(
        self, model, cfg, canvas_side=None, device="cpu", mask_threshold=0.5, resize=None, mask_paste="original"
    ):
        self.model = model.eval().to(device)
        self.cfg = cfg
        inp = cfg.INPUT
        if resize is None:
            resize = "seed" if canvas_side else "original"
        if isinstance(resize, str):
            if resize == "original":
                resize = OriginalResize(inp.MIN_SIZE_TEST, inp.MAX_SIZE_TEST, cfg.DATALOADER.SIZE_DIVISIBILITY)
            else:
                resize = make_policy(
                    resize,
                    inp.MIN_SIZE_TEST,
                    inp.MAX_SIZE_TEST,
                    int(cfg.DATALOADER.SIZE_DIVISIBILITY) or 32,
                    canvas_side=canvas_side,
                )
        self.policy = resize
        self.device = torch.device(device)
        self.mask_threshold = mask_threshold
        self.paste = paste_function(mask_paste)

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
        """uint8 [H, W, 3] RGB -> (float32 [3, Hc, Wc] input on the policy's canvas, resized (h, w))."""
        inp = self.cfg.INPUT
        chw, geometry = policy_preprocess(image_rgb, self.policy, inp.PIXEL_MEAN, inp.PIXEL_STD)
        return chw, geometry.resized_hw

    @torch.no_grad()
    def __call__(self, image):
        return self.predict_batch([image])[0]

    @torch.no_grad()
    def predict_batch(self, images):
        """A list of images (paths, PIL images or uint8 RGB arrays) -> list of Detections."""
        rgbs = [as_rgb_array(image) for image in images]
        inputs = [self.preprocess(rgb) for rgb in rgbs]
        height = max(chw.shape[1] for chw, _ in inputs)
        width = max(chw.shape[2] for chw, _ in inputs)
        batch = np.zeros((len(inputs), 3, height, width), dtype=np.float32)
        for i, (chw, _) in enumerate(inputs):
            batch[i, :, : chw.shape[1], : chw.shape[2]] = chw
        # The fixed square canvas clips to the whole canvas, as the exported graphs do.
        sizes = [(height, width) if self.policy.square else resized_hw for _, resized_hw in inputs]
        detections = self.model(torch.from_numpy(batch).to(self.device), sizes)
        return [
            self._to_image(det, resized_hw, rgb.shape[:2])
            for det, (_, resized_hw), rgb in zip(detections, inputs, rgbs)
        ]

    def _to_image(self, det, resized_hw, image_hw):
        """One image's model detections (canvas pixels, tensors) -> Detections in image pixels, by score."""
        order = torch.argsort(det["scores"], descending=True, stable=True)
        det = {k: v[order].cpu().numpy() for k, v in det.items()}
        # The seed's canvas is clipped again in the image, as the exported models; the original's is not.
        boxes = boxes_to_image(det["boxes"], image_hw, resized_hw, clip=self.policy.clip_to_image)
        probs = det.get("mask_probs", np.zeros((len(boxes), 28, 28), np.float32))
        masks = self.paste(probs, boxes, image_hw[0], image_hw[1], threshold=self.mask_threshold)
        labels = det["labels"].astype(np.int64)
        return Detections(
            boxes=boxes,
            scores=det["scores"].astype(np.float32),
            labels=labels,
            class_names=[self.class_names[i - 1] for i in labels],
            masks=masks,
            mask_probs=probs,
            image_hw=tuple(image_hw),
        )
