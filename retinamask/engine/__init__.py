"""Loops over images and datasets: the Predictor (inference) and the trainer."""
