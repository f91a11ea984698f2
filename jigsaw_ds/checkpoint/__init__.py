"""Checkpoints: atomic DeepSpeed checkpoints of a run (manager), the layout-free file format (layout_free) and
the jigsaw-ckpt command (cli). Training and evaluation both read them, so they live in neither package."""
