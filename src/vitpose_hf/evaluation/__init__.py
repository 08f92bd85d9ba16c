"""Evaluation: COCO OKS AP/AR, CrowdPose, WholeBody and PCK metrics."""
