"""osp.eval: evaluations of generated videos."""
