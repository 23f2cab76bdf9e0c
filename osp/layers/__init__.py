"""Shared primitives: the attention entry point, embeddings, norms, patchify."""

from osp.layers.attention import attention, available_backends, register_backend

__all__ = ["attention", "available_backends", "register_backend"]
