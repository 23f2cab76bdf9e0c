"""osp.synth: the synthetic moving-shapes domain (rendering, captions, held-out combinations)."""
