"""RGB, depth and thermal teacher detectors, pseudo-label fusion and synchronization, bag recorder."""
