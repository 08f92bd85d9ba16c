"""Releases on the Hugging Face Hub: one Hub-ready folder per model size and variant, its model card, the upload.

- :mod:`.variants`: which checkpoints are released (names, sources, the authors' reported figures) and their cards;
- :mod:`.folder`: writing a folder (config with ``auto_map`` and ``custom_pipelines``, sharded safetensors,
  preprocessor config, the remote-code files, ``README.md``) and uploading it with huggingface_hub.

The command line is ``vitpose-hf push`` (:mod:`vitpose_hf.cli.push`).
"""
