"""The `osp` command line."""
