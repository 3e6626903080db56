"""The bottom layer: errors, atomic file I/O, geometry (resize and its inverse), the contract constants, the one
result type, the batch-job machinery. Imports nothing else of retinamask; no torch.
"""
