"""Pose annotation of whole image datasets (``vitpose-hf annotate``): inputs, resumable shards, the run.

See :mod:`vitpose_hf.annotation.runner` for the output columns and :mod:`vitpose_hf.annotation.shards` for the
shard layout and resumption.
"""
