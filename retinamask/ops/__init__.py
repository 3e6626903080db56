"""Numeric operations on detections: NMS, mask pasting and RLE, COCO results, drawing. No torch."""
