"""File formats: images, .bin/.info, raw output files, the exported model's contract (ModelInfo), the run
sidecar. No torch.
"""
