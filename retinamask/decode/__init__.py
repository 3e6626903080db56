"""Raw model outputs -> Detections (per image, torch-free): the one conversion predict, evaluate, Ray and serving
share.
"""
