"""Parameter groups and torch-style schedulers inside Trainer: a run interrupted after one
epoch and resumed from a checkpoint file ends with exactly the weights of the run in one go."""
import numpy as np

from mlcvlab import nn, optim
from mlcvlab.train.checkpoint import read_state, write_state
from mlcvlab.train.trainer import Trainer
from optim_helpers import make_data, make_mlp


class Batches:
    """A fixed, re-iterable list of batches (no loader state to resume)."""

    def __init__(self, n_batches=6, batch=16):
        x, y = make_data(n=n_batches * batch)
        self.batches = [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]
        self.batch_size = batch

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def _build():
    model = make_mlp()
    ps = model.parameters()
    opt = optim.AdamW([{"params": [p for p in ps if p.data.ndim == 2], "weight_decay": 0.05},
                       {"params": [p for p in ps if p.data.ndim == 1], "weight_decay": 0.0,
                        "lr": 2e-3}], lr=1e-3)
    sched = optim.OneCycleLR(opt, [1e-2, 5e-3], total_steps=18)  # 3 epochs of 6 batches
    trainer = Trainer(model, nn.CrossEntropyLoss(), opt, schedulers=[sched])
    return model, opt, trainer


def test_resume_with_groups_and_onecycle(tmp_path):
    data = Batches()
    model, opt, trainer = _build()
    trainer.fit(data, 3)
    full = model.flat().data.copy()
    assert opt.param_groups[0]["lr"] != opt.param_groups[1]["lr"]

    model2, opt2, trainer2 = _build()
    trainer2.fit(data, 1)
    path = str(tmp_path / "ck.npz")
    write_state(path, trainer2.checkpoint_state())   # npz + JSON, no pickle
    model3, opt3, trainer3 = _build()
    trainer3.load_checkpoint_state(read_state(path))
    assert opt3.t == 6 and trainer3.schedulers[0].t == 6
    assert [g["betas"] for g in opt3.param_groups] == [g["betas"] for g in opt2.param_groups]
    trainer3.fit(data, 2)
    np.testing.assert_array_equal(model3.flat().data, full)
    assert [r["lr"] for r in trainer3.history.records] == [r["lr"] for r in trainer.history.records]
