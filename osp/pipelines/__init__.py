"""End-to-end jobs: the only code that wires several components together."""
