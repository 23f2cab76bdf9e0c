"""osp: train, compile and serve Open-Sora-Plan-class video generators."""

from osp.errors import ConfigError, OspError, ShapeError, VideoReadError, WeightsError

__version__ = "0.1.0"

__all__ = ["ConfigError", "OspError", "ShapeError", "VideoReadError", "WeightsError", "__version__"]
