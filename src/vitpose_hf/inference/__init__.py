"""Inference: the pose pipeline, detectors, drawing and Hub loading."""
