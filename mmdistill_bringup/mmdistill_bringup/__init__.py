"""Launch files, parameter YAML, RViz config and the single-process runner."""
