"""``audit finetune --tune``: the hyperparameter search, with KerasTuner.

Two phases, both KerasTuner searches into a folder the caller owns (a temporary folder inside
the model folder, removed afterwards):

- **head** (:func:`search_head`): a seeded random search over the learning rate (log scale),
  the L2 factor (log scale) and the dropout rate of the classifier head, trained on the frozen
  backbone's features (computed once; seconds per trial). The recipe's own values are the first
  trial, so the search can only keep or beat them on the validation split.
- **fine-tune** (:func:`search_finetune`): for the best few heads, a grid over the number of
  top blocks unfrozen, each a short training of the whole model (a few epochs, at a tenth of
  the head's learning rate, BatchNorm frozen) starting from that head's trained weights.

The objective is the validation cross-entropy (the data loss without the L2 penalty, so heads
with different L2 factors are compared fairly), lower is better. The winner is the trial with
the lowest score over both phases (a head trial stands for "unfreeze 0"); a trial that fails
(an exception, a NaN loss) stays in the table with its error and no score. KerasTuner has no wall-clock
budget: :class:`Budget` adds one, a Keras callback that ends a trial's training after the epoch
in which the budget ran out plus a tuner hook that starts no trial after it (by lowering the
oracle's ``max_trials``). Each trial reseeds Keras with the same seed, so a trial's result does
not depend on the trials before it, and the oracles are seeded: same data, same seed -> same
table and same winner (unless the budget cuts the search, which depends on the clock).

This module knows nothing of datasets or backbones: the caller passes arrays, or functions that
return fresh ``tf.data`` streams (a new one per trial, so that each trial sees the same order
and nothing has to fit in memory), and functions that build the models
(:mod:`auditor.pipeline.finetune` does).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: The validation metric each trial is scored on (min): cross-entropy without the L2 term.
OBJECTIVE = "val_crossentropy"
#: Head search space (log-uniform for the learning rate and L2, uniform for dropout).
LEARNING_RATE = (1e-4, 1e-2)
L2 = (1e-6, 1e-2)
DROPOUT = (0.0, 0.5)
#: How many of the best heads get fine-tuning trials, and how many epochs each such trial trains.
TOP_HEADS = 2
FINETUNE_TRIAL_EPOCHS = 2
#: Phase 2 learning rate = the head's learning rate times this (the recipe's "10x lower").
FINETUNE_LR_FACTOR = 0.1


class Budget:
    """A wall-clock budget shared by the phases of one search (``minutes`` None: none)."""

    def __init__(self, minutes: float | None) -> None:
        self.minutes = minutes
        self.deadline = None if minutes is None else time.monotonic() + minutes * 60.0
        self.stopped = False  # the budget cut a trial short or kept one from starting

    def over(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def callback(self):
        """A Keras callback that ends training after the epoch in which the budget ran out."""
        import keras

        budget = self

        class StopAtDeadline(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if budget.over() and epoch + 1 < self.params.get("epochs", epoch + 1):
                    budget.stopped = True
                    self.model.stop_training = True

        return StopAtDeadline()


@dataclass
class Trial:
    """One row of the trial table. ``score``: best validation cross-entropy over the trial's
    epochs (None when it did not finish); ``weights``: the head's classifier weights at its
    best epoch (head trials; kept in memory, not written)."""

    trial: str
    phase: str  # "head" | "finetune"
    hyperparameters: dict
    score: float | None
    seconds: float
    epochs: int  # epochs trained (early stopping or the budget may end a trial sooner)
    best_epoch: int  # the epoch the score comes from (1-based)
    error: str | None = None  # why the trial failed (the last line of its exception)
    weights: list = field(default_factory=list, repr=False)

    def row(self) -> dict:
        row = {"trial": self.trial, "phase": self.phase, "hyperparameters": dict(self.hyperparameters),
               "score": self.score, "seconds": round(self.seconds, 3), "epochs": self.epochs,
               "best_epoch": self.best_epoch}  # fmt: skip
        return row if self.error is None else {**row, "error": self.error}


def _compile(model, learning_rate: float):
    import keras

    # no XLA: compiling each trial's model costs more than it saves in a few short epochs (CPU: 6.1 -> 4.4 s
    # for a 2-epoch fine-tuning trial at 64 px)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy", keras.metrics.SparseCategoricalCrossentropy(name="crossentropy")],
                  jit_compile=False)  # fmt: skip
    return model


def _tuner_class():
    """A ``keras_tuner.Tuner`` that times its trials, reports them, and honours a :class:`Budget`."""
    import keras_tuner as kt

    class TimedTuner(kt.Tuner):
        def __init__(self, *args, budget: Budget, on_trial: Callable | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.budget, self.on_trial, self.seconds, self.epochs = budget, on_trial, {}, {}
            self._started = 0.0

        def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
            # KerasTuner 1.4.8 imports tensorboard here whenever the backend is TensorFlow, to patch
            # TensorBoard callbacks; we pass none, and TensorFlow 2.21 no longer installs tensorboard.
            return None

        def on_epoch_end(self, trial, model, epoch, logs=None):
            self.epochs[trial.trial_id] = epoch + 1
            super().on_epoch_end(trial, model, epoch, logs)

        def on_trial_begin(self, trial):
            self._started = time.perf_counter()
            super().on_trial_begin(trial)

        def on_trial_end(self, trial):
            self.seconds[trial.trial_id] = time.perf_counter() - self._started
            super().on_trial_end(trial)
            done, total = len(self.oracle.trials), self.oracle.max_trials
            if self.on_trial:
                top = self.oracle.get_best_trials(1)
                self.on_trial(done, total, top[0].score if top else None)
            if self.budget.over() and total and done < total:  # KerasTuner has no clock: no trial after this one
                self.budget.stopped = True
                self.oracle.max_trials = done

    return TimedTuner


def _hypermodel(build: Callable, fit_extra: Callable):
    import keras_tuner as kt

    class HyperModel(kt.HyperModel):
        def build(self, hp):
            return build(hp)

        def fit(self, hp, model, *args, **kwargs):
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), *fit_extra()]
            # data given as functions: a fresh tf.data stream per trial, so every trial sees the same order
            args = [a() if callable(a) else a for a in args]
            if callable(kwargs.get("validation_data")):
                kwargs["validation_data"] = kwargs["validation_data"]()
            return model.fit(*args, **kwargs)

    return HyperModel()


def _run(tuner, phase: str, values: Callable[[object], dict], x, y, validation_data, *, epochs: int,
         batch_size: int, class_weight: dict | None) -> list[Trial]:  # fmt: skip
    """Run ``tuner.search`` and return its trials in the order they ran. ``x`` and
    ``validation_data``: arrays (with ``y``), or functions that return a fresh ``tf.data``
    stream of (input, label) batches, already shuffled (``y`` None)."""
    if tuner.oracle.max_trials == 0:
        return []
    if callable(x):
        with warnings.catch_warnings():  # a stream's length is unknown until its first epoch ends: expected
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            tuner.search(x, validation_data=validation_data, epochs=epochs, class_weight=class_weight, shuffle=False,
                         verbose=0)  # fmt: skip
    else:
        tuner.search(x, y, validation_data=validation_data, epochs=epochs, batch_size=batch_size,
                     class_weight=class_weight, shuffle=True, verbose=0)  # fmt: skip
    out = []
    for trial_id in tuner.oracle.start_order:
        t = tuner.oracle.trials[trial_id]
        error = None
        if t.status != "COMPLETED":  # an exception, or a NaN loss: kept in the table, never the winner
            last = (t.message or "").strip().splitlines()
            error = last[-1] if last else f"the validation loss is not a number ({t.status})"
        score = t.score if error is None and t.score is not None and math.isfinite(t.score) else None
        out.append(Trial(f"{phase}-{trial_id}", phase, values(t.hyperparameters), score,
                         tuner.seconds.get(trial_id, 0.0), tuner.epochs.get(trial_id, 0), t.best_step + 1,
                         error=error))  # fmt: skip
    return out


def _validation(x_val, y_val):
    return x_val if callable(x_val) else (x_val, y_val)


#: Training data: an array (with its labels), or a function that returns a fresh ``tf.data``
#: stream of (input, label) batches, already shuffled (its labels None).
Data = np.ndarray | Callable[[], object]


def search_head(
    x_train: Data,
    y_train: np.ndarray | None,
    x_val: Data,
    y_val: np.ndarray | None,
    make_head: Callable[[float, float], object],
    *,
    defaults: dict,
    trials: int,
    epochs: int,
    batch_size: int,
    patience: int,
    class_weight: dict | None,
    seed: int,
    directory: str | Path,
    budget: Budget,
    on_trial: Callable[[int, int, float | None], None] | None = None,
) -> list[Trial]:
    """Phase A: ``trials`` head settings (``defaults``, the recipe's ``learning_rate``, ``l2``
    and ``dropout``, first; then seeded random draws), each trained for up to ``epochs`` epochs
    on the features ``x_*`` ((n, d) arrays, or functions returning fresh ``tf.data`` streams
    of (features, label) batches: see :data:`Data`) with early stopping on :data:`OBJECTIVE`.
    ``make_head(dropout, l2)`` returns an uncompiled Keras model from d features to class
    probabilities whose last layer is named ``classifier``. Returns the trials in run order,
    each with its classifier weights at its best epoch."""
    import keras
    import keras_tuner as kt

    from auditor.embed.backbones import quiet_tensorflow

    def clamp(value: float, lo: float, hi: float) -> float:
        return float(min(max(value, lo), hi))

    def build(hp):
        lr = hp.Float("learning_rate", *LEARNING_RATE, sampling="log", default=clamp(defaults["learning_rate"],
                                                                                     *LEARNING_RATE))  # fmt: skip
        l2 = hp.Float("l2", *L2, sampling="log", default=clamp(defaults["l2"], *L2))
        dropout = hp.Float("dropout", *DROPOUT, default=clamp(defaults["dropout"], *DROPOUT))
        keras.utils.set_random_seed(seed)  # each trial as if it were the first: the table does not depend on order
        return _compile(make_head(dropout, l2), lr)

    def extra():
        return [keras.callbacks.EarlyStopping(OBJECTIVE, patience=patience), budget.callback()]

    class DefaultsFirst(kt.oracles.RandomSearchOracle):
        """Random search whose first trial is the recipe's defaults (the search keeps or beats them)."""

        def populate_space(self, trial_id):
            if not self.trials:
                values = {hp.name: hp.default for hp in self.hyperparameters.space}
                return {"status": "RUNNING", "values": values}
            return super().populate_space(trial_id)

    # KerasTuner treats seed 0 as "no seed" (random): shift it
    oracle = DefaultsFirst(objective=kt.Objective(OBJECTIVE, "min"), max_trials=trials, seed=seed + 1,
                           max_consecutive_failed_trials=trials + 1)  # fmt: skip
    tuner = _tuner_class()(oracle, hypermodel=_hypermodel(build, extra), directory=str(directory),
                           project_name="head", overwrite=True, budget=budget, on_trial=on_trial)  # fmt: skip

    def values(hp) -> dict:
        return {"learning_rate": float(hp.get("learning_rate")), "l2": float(hp.get("l2")),
                "dropout": float(hp.get("dropout")), "unfreeze": 0}  # fmt: skip

    with quiet_tensorflow():
        rows = _run(tuner, "head", values, x_train, y_train, _validation(x_val, y_val), epochs=epochs,
                    batch_size=batch_size, class_weight=class_weight)  # fmt: skip
        for row, trial_id in zip(rows, tuner.oracle.start_order, strict=True):
            if row.score is not None:
                with warnings.catch_warnings():  # the checkpoint has the optimizer's state too; not needed
                    warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
                    model = tuner.load_model(tuner.oracle.trials[trial_id])  # its best epoch's weights
                row.weights = model.get_layer("classifier").get_weights()
    return rows


def search_finetune(
    heads: list[Trial],
    x_train: Data,
    y_train: np.ndarray | None,
    x_val: Data,
    y_val: np.ndarray | None,
    make_model: Callable[[dict, int, list], object],
    *,
    unfreeze: list[int],
    batch_size: int,
    class_weight: dict | None,
    seed: int,
    directory: str | Path,
    budget: Budget,
    epochs: int = FINETUNE_TRIAL_EPOCHS,
    on_trial: Callable[[int, int, float | None], None] | None = None,
) -> list[Trial]:
    """Phase B: a grid over (head in ``heads``) x (blocks unfrozen in ``unfreeze``), each a
    ``epochs``-epoch training of the whole model on the images ``x_*`` ((n, h, w, 3) arrays or
    functions returning fresh streams of (image, label) batches: see :data:`Data`) at
    :data:`FINETUNE_LR_FACTOR` times the head's learning rate. ``make_model(head
    hyperparameters, blocks, classifier weights)`` returns the uncompiled full model with
    that head and the top ``blocks`` blocks trainable. Returns the trials in run order."""
    import keras
    import keras_tuner as kt

    from auditor.embed.backbones import quiet_tensorflow

    if not heads or not unfreeze or budget.over():
        budget.stopped = budget.stopped or bool(heads and unfreeze)
        return []

    def build(hp):
        head = heads[hp.Choice("head", list(range(len(heads))))]
        blocks = hp.Choice("unfreeze", list(unfreeze))
        keras.utils.set_random_seed(seed)
        model = make_model(head.hyperparameters, blocks, head.weights)
        return _compile(model, head.hyperparameters["learning_rate"] * FINETUNE_LR_FACTOR)

    def extra():
        return [budget.callback()]

    grid = len(heads) * len(unfreeze)
    oracle = kt.oracles.GridSearchOracle(objective=kt.Objective(OBJECTIVE, "min"), max_trials=grid, seed=seed + 1,
                                         max_consecutive_failed_trials=grid + 1)  # fmt: skip
    tuner = _tuner_class()(oracle, hypermodel=_hypermodel(build, extra), directory=str(directory),
                           project_name="finetune", overwrite=True, budget=budget, on_trial=on_trial)  # fmt: skip

    def values(hp) -> dict:
        return {**heads[hp.get("head")].hyperparameters, "unfreeze": int(hp.get("unfreeze"))}

    with quiet_tensorflow():
        return _run(tuner, "finetune", values, x_train, y_train, _validation(x_val, y_val), epochs=epochs,
                    batch_size=batch_size, class_weight=class_weight)  # fmt: skip


def best(trials: list[Trial], n: int = 1) -> list[Trial]:
    """The ``n`` trials with the lowest score (ties: the earlier trial), unscored ones left out."""
    scored = [t for t in trials if t.score is not None]
    return sorted(scored, key=lambda t: t.score)[:n]


def describe(tuning: dict) -> str:
    """One line for people: trials run, the winner and its score (``tuning`` as in evaluation.json)."""
    win = tuning["winner"]
    hp = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in win["hyperparameters"].items())
    phases = [t["phase"] for t in tuning["trials"]]
    line = (f"tuning: {phases.count('head')} head + {phases.count('finetune')} fine-tuning trials in "
            f"{tuning['seconds']:.0f} s; winner {win['trial']} ({hp}), "
            f"{tuning['objective']} {win['score']:.4g} (lower is better)")  # fmt: skip
    if tuning["stopped_by_budget"]:
        line += f"; stopped by the {tuning['budget_minutes']:g}-minute budget"
    return line


__all__ = [
    "DROPOUT",
    "FINETUNE_TRIAL_EPOCHS",
    "L2",
    "LEARNING_RATE",
    "OBJECTIVE",
    "TOP_HEADS",
    "Budget",
    "Trial",
    "best",
    "describe",
    "search_finetune",
    "search_head",
]
