"""audit finetune --tune: the KerasTuner search on a tiny real-image dataset (40 crops of two
scikit-image photos, trained at 64 px): its trial table, the winner and the model trained with
it, determinism, the budget, where it writes, and the CLI options of finetune and run."""

from __future__ import annotations

import json
import math
import tempfile

import pytest
from conftest import tree_digest

HP = ("learning_rate", "l2", "dropout", "unfreeze")
# keras_tuner 1.4.8's oracle calls threading.currentThread().getName() (deprecated in Python 3.10)
pytestmark = pytest.mark.filterwarnings("ignore:currentThread:DeprecationWarning", "ignore:getName:DeprecationWarning")


def _options(**kw):
    from auditor.pipeline.finetune import FinetuneOptions

    base = {"epochs": 2, "image_size": 64, "batch_size": 8, "augment": (), "tune": True}
    return FinetuneOptions(**{**base, **kw})


def _table(tuning: dict) -> list[tuple]:
    """The trial table without the timings (which vary from run to run)."""
    return [(t["trial"], t["phase"], t["hyperparameters"], t["score"], t["epochs"]) for t in tuning["trials"]]


def test_search_writes_the_trial_table_and_trains_the_winner(tiny, tmp_path, monkeypatch):
    import keras

    from auditor.pipeline import tune
    from auditor.pipeline.finetune import build, finetune, unfreeze_top

    scratch, cwd = tmp_path / "scratch", tmp_path / "cwd"
    scratch.mkdir()
    cwd.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # anything KerasTuner put in "tmp" would land here
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.chdir(cwd)
    before = tree_digest(tiny)
    calls = []
    opts = _options(unfreeze=1, trials=1)
    result = finetune(tiny, tmp_path / "model", opts, progress=lambda *a: calls.append(a))

    ev = json.loads((tmp_path / "model" / "evaluation.json").read_text())
    t = ev["tuning"]
    assert t == result.evaluation["tuning"]
    assert t["objective"] == "val_crossentropy" and t["stopped_by_budget"] is False and t["budget_minutes"] is None
    heads = [r for r in t["trials"] if r["phase"] == "head"]
    fine = [r for r in t["trials"] if r["phase"] == "finetune"]
    assert len(heads) == 1 and len(fine) == 2  # the best (only) head x unfreeze 1 and 2
    assert len({r["trial"] for r in t["trials"]}) == len(t["trials"])
    for r in t["trials"]:
        assert tuple(r["hyperparameters"]) == HP and math.isfinite(r["score"]) and r["seconds"] > 0
        assert 1 <= r["best_epoch"] <= r["epochs"] <= 2
        hp = r["hyperparameters"]
        assert tune.LEARNING_RATE[0] <= hp["learning_rate"] <= tune.LEARNING_RATE[1]
        assert tune.L2[0] <= hp["l2"] <= tune.L2[1] and tune.DROPOUT[0] <= hp["dropout"] <= tune.DROPOUT[1]
    assert heads[0]["hyperparameters"] == {"learning_rate": 1e-3, "l2": 1e-4, "dropout": 0.2, "unfreeze": 0}
    assert [r["hyperparameters"]["unfreeze"] for r in fine] == [1, 2] and t["space"]["unfreeze"] == [0, 1, 2]
    assert all({**r["hyperparameters"], "unfreeze": 0} == heads[0]["hyperparameters"] for r in fine)

    # the winner is the trial with the lowest score, and the final model is trained with it
    win = t["winner"]
    row = next(r for r in t["trials"] if r["trial"] == win["trial"])
    assert row["phase"] == win["phase"] and row["hyperparameters"] == win["hyperparameters"]
    assert win["score"] == row["score"] == min(r["score"] for r in t["trials"])
    for k in HP:
        assert ev["options"][k] == win["hyperparameters"][k]
    model = keras.saving.load_model(result.model_path, safe_mode=True)
    assert model.get_layer("dropout").rate == pytest.approx(win["hyperparameters"]["dropout"])
    assert model.get_layer("classifier").kernel_regularizer.l2 == pytest.approx(win["hyperparameters"]["l2"])
    blocks = win["hyperparameters"]["unfreeze"]
    assert ("fine_tune" in result.history) == (blocks > 0)
    _, backbone = build(2, _options())
    unfreeze_top(backbone, blocks)
    expected = sum(int(w.numpy().size) for w in backbone.trainable_weights) if blocks else 0
    trained = model.get_layer(backbone.name)
    assert sum(int(w.numpy().size) for w in trained.trainable_weights) == expected

    # progress: one step per trial, per phase
    assert ("search: head", 1, 1) in [c[:3] for c in calls] and ("search: fine-tune", 2, 2) in [c[:3] for c in calls]
    # KerasTuner wrote only inside the model folder, and removed its folder
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["evaluation.json", "history.json", "model.keras",
                                                                      "predictions.csv"]  # fmt: skip
    assert tree_digest(tiny) == before
    assert list(scratch.iterdir()) == [] and list(cwd.iterdir()) == []


def test_same_seed_same_winner_and_the_final_model_is_an_untuned_run_with_it(tiny, tmp_path):
    """Head-only search (--unfreeze 0): twice with the same seed -> the same table and winner;
    the final model equals a plain (untuned) run with the winner's values."""
    import dataclasses

    import keras
    import numpy as np

    from auditor.pipeline.finetune import finetune

    first = finetune(tiny, tmp_path / "a", _options(unfreeze=0, trials=3)).evaluation["tuning"]
    second = finetune(tiny, tmp_path / "b", _options(unfreeze=0, trials=3)).evaluation["tuning"]
    assert _table(first) == _table(second) and first["winner"] == second["winner"]
    assert len(first["trials"]) == 3 and {r["phase"] for r in first["trials"]} == {"head"}
    assert len({r["score"] for r in first["trials"]}) == 3  # the settings matter
    hps = [r["hyperparameters"] for r in first["trials"]]  # the recipe's defaults first, then seeded draws
    assert hps[0] == {"learning_rate": 1e-3, "l2": 1e-4, "dropout": 0.2, "unfreeze": 0} and hps[1] != hps[2]

    hp = first["winner"]["hyperparameters"]
    plain = dataclasses.replace(_options(), tune=False, **hp)
    finetune(tiny, tmp_path / "plain", plain)

    def classifier(folder):
        return keras.saving.load_model(folder / "model.keras", safe_mode=True).get_layer("classifier").get_weights()

    for got, want in zip(classifier(tmp_path / "a"), classifier(tmp_path / "plain"), strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_best_heads_are_fine_tuned_in_score_order():
    from auditor.pipeline.tune import Trial, best

    rows = [Trial(f"head-{i}", "head", {"dropout": i / 10}, score, 1.0, 2, 1)
            for i, score in enumerate([0.5, None, 0.2, 0.5, 0.9])]  # fmt: skip
    assert [t.trial for t in best(rows, 2)] == ["head-2", "head-0"]  # ties: the earlier trial
    assert [t.trial for t in best(rows, 9)] == ["head-2", "head-0", "head-3", "head-4"]  # unscored: never picked


def test_head_search_on_digits_keeps_failed_trials_out_of_the_running(tmp_path):
    """Phase A alone, on scikit-learn's digits (8x8 pixels as features): a trial whose model
    cannot be built is a row with its error and no score, never the winner."""
    import keras
    from sklearn.datasets import load_digits

    from auditor.pipeline.tune import Budget, best, search_head

    x, y = load_digits(return_X_y=True)
    x = (x[:300] / 16.0).astype("float32")
    y = y[:300]

    def make_head(dropout: float, l2: float):
        if dropout > 0.3:
            raise ValueError(f"dropout {dropout:.2f} refused")
        return keras.Sequential([keras.Input((64,)), keras.layers.Dropout(dropout, name="dropout"),
                                 keras.layers.Dense(10, activation="softmax", name="classifier",
                                                    kernel_regularizer=keras.regularizers.l2(l2))])  # fmt: skip

    rows = search_head(x[:200], y[:200], x[200:], y[200:], make_head, defaults={"learning_rate": 1e-3, "l2": 1e-4,
                       "dropout": 0.2}, trials=4, epochs=2, batch_size=32, patience=2, class_weight=None, seed=3,
                       directory=tmp_path / "kt", budget=Budget(None))  # fmt: skip
    # seed 3: dropout 0.2 (the default), then 0.397, 0.232, 0.237
    failed = [r for r in rows if r.error]
    assert len(failed) == 1 and all(r.score is None and "refused" in r.error for r in failed)
    assert all(r.hyperparameters["dropout"] > 0.3 for r in failed)
    ok = [r for r in rows if not r.error]
    assert ok and all(r.score is not None and len(r.weights) == 2 for r in ok)
    assert best(rows)[0] in ok and best(rows)[0].score == min(r.score for r in ok)


def test_cli_tune_options(tiny, tmp_path):
    import typer.main
    from typer.testing import CliRunner

    from auditor.cli.app import app

    runner = CliRunner()
    out = tmp_path / "m"
    args = ["finetune", str(tiny), "--out", str(out), "--epochs", "2", "--unfreeze", "0", "--image-size", "64",
            "--batch-size", "8", "--no-augment"]  # fmt: skip
    # --budget stops the search: 6 ms are spent before the first trial's first epoch ends, so that trial
    # stops after it, no other starts (nor the fine-tuning trials), and the model is trained in full
    res = runner.invoke(app, [*args, "--epochs", "4", "--unfreeze", "1", "--tune", "--trials", "6",
                              "--budget", "0.0001"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "tuning: 1 head + 0 fine-tuning trials" in res.output and "stopped by the 0.0001-minute budget" in res.output
    ev = json.loads((out / "evaluation.json").read_text())
    t = ev["tuning"]
    assert t["stopped_by_budget"] is True and t["budget_minutes"] == 1e-4
    assert [r["trial"] for r in t["trials"]] == ["head-0"] and t["trials"][0]["epochs"] == 1
    assert t["winner"]["trial"] == "head-0" and ev["options"]["unfreeze"] == 0
    assert list(json.loads((out / "history.json").read_text())) == ["head"]
    assert len(json.loads((out / "history.json").read_text())["head"]) == 4  # the final model: all its epochs
    for bad, word in ((["--tune", "--trials", "0"], "--trials"), (["--tune", "--budget", "0"], "--budget"),
                      (["--tune", "--budget", "-2"], "--budget"), (["--tune", "--budget", "nan"], "--budget"),
                      (["--trials", "3"], "add --tune"), (["--budget", "1"], "add --tune")):  # fmt: skip
        res = runner.invoke(app, [*args[:3], str(tmp_path / "n"), *bad])
        assert res.exit_code == 2 and word in res.output, (bad, res.output)
    res = runner.invoke(app, ["run", str(tiny), "--out", str(tmp_path / "r"), "--budget", "1"])
    assert res.exit_code == 2 and "add --tune" in res.output
    assert not (tmp_path / "n").exists() and not (tmp_path / "r").exists()
    # audit run: the search runs inside its fine-tuning stage, and report.json's finetune section has the table
    res = runner.invoke(app, ["run", str(tiny), "--out", str(tmp_path / "r"), "--epochs", "1", "--unfreeze", "0",
                              "--image-size", "64", "--batch-size", "8", "--no-augment", "--no-projection", "--tune",
                              "--trials", "1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "tuning: 1 head + 0 fine-tuning trials" in res.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    tuning = report["finetune"]["evaluation"]["tuning"]
    assert [r["trial"] for r in tuning["trials"]] == ["head-0"] and tuning["winner"]["trial"] == "head-0"
    written = sorted(p.name for p in (tmp_path / "r" / "model").iterdir())
    assert written == ["evaluation.json", "history.json", "model.keras", "predictions.csv"]

    group = typer.main.get_command(app)

    def described(command: str) -> dict:
        # (the lower bound: typer >= 0.29 keeps it on the option, earlier ones on its click type)
        return {p.opts[0]: (tuple(p.opts), tuple(p.secondary_opts), p.help, p.default,
                            getattr(p, "min", getattr(p.type, "min", None)), p.is_flag)
                for p in group.commands[command].params if p.param_type_name == "option"}  # fmt: skip

    finetune_opts, run_opts = described("finetune"), described("run")
    for flag in ("--tune", "--trials", "--budget"):
        assert flag in finetune_opts and finetune_opts[flag] == run_opts[flag], flag
