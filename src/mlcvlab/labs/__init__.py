"""The labs: one module per classic study, each a config plus a run function.

Writing a lab: add ``src/mlcvlab/labs/my_study.py`` (lab name ``my-study``)::

    from mlcvlab.labs.registry import lab
    from mlcvlab.labs.report import Report, new_figure

    @lab(name="my-study", study="Who et al. (year): what is rerun",
         quick={"n": 100, "lr": 0.1}, full={"n": 10_000, "lr": 0.1},
         expected_seconds={"quick": 5, "full": 600})
    def run(config, out_dir, progress):
        losses = [1.0 / (1 + t) for t in progress(range(config["n"]), desc="train")]
        results = {"final_loss": losses[-1], "n": config["n"]}
        rep = Report(out_dir, "My study", results)
        rep.setup(config)
        fig, ax = new_figure(); ax.plot(losses, label="train"); ax.set_xlabel("step")
        ax.set_ylabel("loss"); ax.legend(); rep.figure("loss", fig, "Loss after {n} steps")
        rep.conclusions(["The final loss is {final_loss:.4f}."])   # filled from results
        rep.write()
        return results            # the framework writes results.json and config.json

``config`` always holds "seed" (``--seed``, default the preset's or 0): build a
``numpy.random.Generator`` from it. ``progress(iterable, desc=..., total=...)`` gives
a tqdm bar. If a dataset is substituted, call ``rep.note_substitution(wanted, used)``.
Data rule (LABS.md, as updated by the embedded-data issue): a lab whose study uses MNIST,
Fashion-MNIST or CIFAR-10 reads the full dataset when its files are on disk
(``mlcvlab data info`` says where), and otherwise runs on the real subsets shipped
with the package — ``mnist10k`` for MNIST, ``fashion10k`` for Fashion-MNIST and as a
labelled small substitute for CIFAR-10 — through
``mlcvlab.data.load_or_substitute``, saying so on the console and in the report
header. It never fails silently and never pretends.

Run it with ``mlcvlab lab run my-study --quick --set n=50`` or
:func:`mlcvlab.labs.run_lab`; ``mlcvlab lab list`` finds it with no other change.
"""
from mlcvlab.labs.registry import Lab, discover, get_lab, lab, lab_names, run_lab

__all__ = ["Lab", "lab", "get_lab", "lab_names", "discover", "run_lab"]
