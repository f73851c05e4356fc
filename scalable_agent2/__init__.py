"""scalable_agent2: IMPALA on TensorFlow 2 and Sonnet 2."""

__version__ = '0.1.0'
