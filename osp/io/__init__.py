"""Files in and out: videos, weights folders and checkpoint converters."""
