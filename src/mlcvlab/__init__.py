"""mlcvlab: a deep-learning library from scratch on NumPy, and labs that rerun the
classic studies of efficient learning."""
__version__ = "0.1.0"
