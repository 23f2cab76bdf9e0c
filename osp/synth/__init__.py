"""osp.synth: training data osp makes itself: the moving-shapes domain and clips cut from real videos."""
