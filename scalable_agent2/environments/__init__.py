"""Environment suites (DeepMind Lab, Atari, Gymnasium) behind one interface."""
