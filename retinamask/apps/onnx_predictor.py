"""OnnxPredictor: the exported model behind the same interface as the PyTorch Predictor (torch-free)."""

import numpy as np

from retinamask.data.transforms import policy_preprocess
from retinamask.decode.outputs import decode_outputs
from retinamask.formats.images import as_rgb_array
from retinamask.formats.model_info import read_model_info
from retinamask.runtime.backends import create_session


class OnnxPredictor:
    """image (path, PIL image or uint8 RGB array) -> Detections, through ONNX Runtime or OpenVINO.

    Preprocessing (the resize policy: ``resize``, else the metadata's), class names, thresholds
    and the layout come from the model's metadata (docs/onnx_contract.md); the seed layout gets
    the host-side NMS.
    """

    def __init__(self, model_path, backend="auto", device="cpu", precision="fp32", mask_threshold=0.5, resize=None):
        self.info = read_model_info(model_path, resize=resize)
        self.session = create_session(model_path, backend, device, precision, model_info=self.info)
        self.mask_threshold = mask_threshold

    @property
    def class_names(self):
        return self.info.class_names

    def __call__(self, image):
        rgb = as_rgb_array(image)
        info = self.info
        chw, geometry = policy_preprocess(rgb, info.resize, info.pixel_mean, info.pixel_std)
        if self.session.dynamic_hw:
            outputs = self.session.run(chw[None], np.asarray([geometry.resized_hw], np.int64))
        else:
            outputs = self.session.run(chw[None])
        outputs = [o[0] for o in outputs]
        detections = decode_outputs(
            outputs,
            info.layout,
            rgb.shape[:2],
            geometry.resized_hw,
            nms_threshold=info.nms_threshold,
            clip=info.resize.clip_to_image,
            max_detections=info.max_detections,
            mask_threshold=self.mask_threshold,
        ).sorted_by_score()
        detections.class_names = [self._name(label) for label in detections.labels]
        return detections

    def _name(self, label):
        names = self.class_names
        return names[label - 1] if names and label <= len(names) else f"class_{label}"
