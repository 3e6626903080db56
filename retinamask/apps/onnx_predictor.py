"""OnnxPredictor: the exported model behind the same interface as the PyTorch Predictor (torch-free).

One image goes through three steps, which the HTTP server also calls one by one (it batches the
middle one across requests): :meth:`~OnnxPredictor.prepare` (image -> canvas tensor and geometry),
:meth:`~OnnxPredictor.run` (a batch of prepared images -> raw outputs per image) and
:meth:`~OnnxPredictor.finish` (raw outputs -> Detections in the image's pixels).
"""

from dataclasses import dataclass

import numpy as np

from retinamask.core.geometry import ImageGeometry
from retinamask.data.transforms import policy_preprocess
from retinamask.decode.outputs import decode_outputs
from retinamask.formats.images import as_rgb_array
from retinamask.formats.model_info import read_model_info
from retinamask.ops.masks import paste_function
from retinamask.runtime.backends import create_session


@dataclass(frozen=True)
class PreparedImage:
    """One image ready for the model: ``tensor`` float32 [3, Hc, Wc] (the canvas) and its geometry."""

    tensor: np.ndarray
    geometry: ImageGeometry

    @property
    def canvas_hw(self):
        """(Hc, Wc): images share a batch only when their canvases are equal."""
        return tuple(self.tensor.shape[1:])


class OnnxPredictor:
    """image (path, PIL image or uint8 RGB array) -> Detections, through ONNX Runtime or OpenVINO.

    Preprocessing (the resize policy: ``resize``, else the metadata's), class names, thresholds
    and the layout come from the model's metadata (docs/onnx_contract.md); the seed layout gets
    the host-side NMS. ``threads``: the session's intra-op threads (None: the runtime's default).
    ``session``: a session of this model already made (``create_sessions``); backend, device,
    precision and threads are then its own. ``mask_paste``: "original" (the original's Masker) or
    "subpixel" (:func:`~retinamask.ops.masks.paste_masks_subpixel`, sharper on small objects).
    """

    def __init__(
        self,
        model_path,
        backend="auto",
        device="cpu",
        precision="fp32",
        mask_threshold=0.5,
        resize=None,
        threads=None,
        session=None,
        mask_paste="original",
    ):
        paste_function(mask_paste)  # ValueError for an unknown one, before the session is made
        self.info = read_model_info(model_path, resize=resize)
        if session is None:
            session = create_session(model_path, backend, device, precision, threads=threads, model_info=self.info)
        self.session = session
        self.mask_paste = mask_paste
        self.mask_threshold = mask_threshold

    @classmethod
    def sessions(cls, model_path, count, threads=None, backend="auto", device="cpu", precision="fp32", **kwargs):
        """``count`` predictors of one model that run at once (``runtime.backends.create_sessions``: OpenVINO
        one compile with a stream each), ``threads`` intra-op threads each; ``kwargs`` as the constructor's."""
        from retinamask.runtime.backends import create_sessions

        info = read_model_info(model_path, resize=kwargs.get("resize"))
        made = create_sessions(model_path, count, backend, device, precision, threads=threads, model_info=info)
        return [cls(model_path, session=session, **kwargs) for session in made]

    @property
    def class_names(self):
        return self.info.class_names

    def __call__(self, image):
        prepared = self.prepare(as_rgb_array(image))
        return self.finish(self.run([prepared])[0], prepared)

    def prepare(self, rgb):
        """uint8 [H, W, 3] RGB -> PreparedImage (the policy's resize, normalisation and padding)."""
        info = self.info
        tensor, geometry = policy_preprocess(rgb, info.resize, info.pixel_mean, info.pixel_std)
        return PreparedImage(tensor, geometry)

    def run(self, prepared):
        """PreparedImages of one canvas -> each image's raw outputs (boxes, labels, scores, masks), one
        session run (a batch of len(prepared); more than 1 needs a model with a dynamic batch axis)."""
        batch = np.stack([p.tensor for p in prepared]) if len(prepared) > 1 else prepared[0].tensor[None]
        if self.session.dynamic_hw:
            sizes = np.asarray([p.geometry.resized_hw for p in prepared], np.int64)
            outputs = self.session.run(batch, sizes)
        else:
            outputs = self.session.run(batch)
        return [tuple(o[i] for o in outputs) for i in range(len(prepared))]

    def finish(self, outputs, prepared, paste=True):
        """One image's raw outputs -> Detections in its pixels, by descending score, with class names.
        ``paste``: also the full-image masks (without: ``mask_probs`` only, for the fused paste + RLE)."""
        info, geometry = self.info, prepared.geometry
        detections = decode_outputs(
            outputs,
            info.layout,
            geometry.image_hw,
            geometry.resized_hw,
            nms_threshold=info.nms_threshold,
            clip=info.resize.clip_to_image,
            max_detections=info.max_detections,
            mask_threshold=self.mask_threshold,
            mask_paste=self.mask_paste,
            paste=paste,
        ).sorted_by_score()
        detections.class_names = [self._name(label) for label in detections.labels]
        return detections

    def _name(self, label):
        names = self.class_names
        return names[label - 1] if names and label <= len(names) else f"class_{label}"
