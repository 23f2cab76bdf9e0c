"""osp.kernels: Triton kernels (attention, fused adaLN modulate-norm) as torch custom ops."""
