"""Training for osp models: datasets and buckets, DeepSpeed engine setup, EMA, losses, resume.

This is the only package that imports deepspeed; ``osp`` itself never imports ``osp_train``.
"""
