"""osp.eval: evaluations of videos.

``fvd`` (with the ``i3d`` network), ``clip_score`` and ``recon`` are the field's standard metrics;
``adherence`` checks prompts of the moving-shapes domain from pixels. ``folders`` says which files
of a folder are clips.
"""
