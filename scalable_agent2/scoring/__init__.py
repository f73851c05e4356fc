"""Human-normalised scores for DMLab-30 and Atari-57."""
