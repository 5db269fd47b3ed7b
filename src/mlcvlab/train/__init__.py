"""Training: the Trainer loop, per-epoch History and callbacks."""
from mlcvlab.train.callbacks import (Callback, Checkpoint, EarlyStopping, NaNGuard, ProgressBar,
                                     load_checkpoint)
from mlcvlab.train.history import History
from mlcvlab.train.trainer import Trainer, array_batches, evaluate

__all__ = ["Trainer", "History", "evaluate", "array_batches", "Callback", "Checkpoint",
           "EarlyStopping", "NaNGuard", "ProgressBar", "load_checkpoint"]
