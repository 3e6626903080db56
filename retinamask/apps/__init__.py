"""Torch-free workflows on an exported model: the ONNX predictor, predicting over images, the demo, the evaluate
job.
"""
