import pytest

from auditor.core.findings import Finding
from auditor.policy.rules import RulesError, judge, load_rules


def test_default_rules_cover_every_check():
    from auditor.checks.catalog import load_all

    rules = load_rules()
    assert set(rules.checks) == set(load_all())
    assert rules.checks["leakage"].severity == "error"


def _write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_extends_overrides_a_few_entries(tmp_path):
    p = _write(tmp_path, "extends: default\nchecks:\n  blurry:\n    severity: error\n    params: {robust_z: 2.0}\n")
    rules = load_rules(p)
    assert rules.checks["blurry"].severity == "error"
    assert rules.checks["blurry"].params["robust_z"] == 2.0
    assert rules.checks["blurry"].params["confirm_z"] == load_rules().checks["blurry"].params["confirm_z"]


@pytest.mark.parametrize(
    "text,match",
    [
        ("extends: default\nchecks:\n  blury: {severity: info}\n", r"checks\.blury: unknown check"),
        ("extends: default\nchecks:\n  blurry: {severity: fatal}\n", r"checks\.blurry\.severity: expected one of"),
        (
            "extends: default\nchecks:\n  blurry: {params: {robust_z: high}}\n",
            r"checks\.blurry\.params\.robust_z: expected",
        ),
        ("extends: default\nchecks:\n  blurry: {params: {zz: 1}}\n", r"checks\.blurry\.params\.zz: unknown parameter"),
        (
            "extends: default\nchecks:\n  dark: {gate: {max_count: many}}\n",
            r"checks\.dark\.gate\.max_count: expected an integer >= 0, got 'many'",
        ),
        # ranges and choices (the schema), not only types
        (
            "extends: default\nchecks:\n  label_issue: {params: {filter_by: bothh}}\n",
            r"checks\.label_issue\.params\.filter_by: expected one of none, both, prune_by_noise_rate, .*got 'bothh'",
        ),
        (
            "extends: default\nchecks:\n  blurry: {params: {robust_z: -1}}\n",
            r"checks\.blurry\.params\.robust_z: expected a number > 0, got -1",
        ),
        (
            "extends: default\nchecks:\n  domain_shift: {params: {alpha: 1.0}}\n",
            r"checks\.domain_shift\.params\.alpha: expected a number in \(0, 1\), got 1\.0",
        ),
        (
            "extends: default\nchecks:\n  near_duplicate: {params: {max_phash_distance: 65}}\n",
            r"checks\.near_duplicate\.params\.max_phash_distance: expected an integer in \[0, 64\], got 65",
        ),
        (
            "extends: default\nchecks:\n  label_issue: {params: {folds: 2.5}}\n",
            r"checks\.label_issue\.params\.folds: expected an integer >= 2, got 2\.5",
        ),
        (
            "extends: default\nchecks:\n  noisy: {params: {min_sigma: .nan}}\n",
            r"checks\.noisy\.params\.min_sigma: expected a number >= 0, got nan",
        ),
        (
            "extends: default\nchecks:\n  dark: {gate: {max_fraction: 1.5}}\n",
            r"max_fraction: expected a number in \[0, 1\]",
        ),
        (
            "extends: default\nsettings: {min_images_for_relative: 0}\n",
            r"settings\.min_images_for_relative: expected an",
        ),
        (
            "extends: default\nclean: {label_issue_min_score: 2}\n",
            r"clean\.label_issue_min_score: expected a number in",
        ),
        ("extends: default\nclean: {actions: {corrupt: burn}}\n", r"clean\.actions\.'corrupt': expected one of keep,"),
        ("extends: default\nbogus: 1\n", "unknown top-level key 'bogus'"),
        ("schema: auditor.rules/1\nsettings: {min_images_for_relative: 5}\nchecks: {}\n", "missing"),
        ("extends: default\nchecks: [1, 2\n", "not valid YAML"),
        ("!!python/object/apply:os.system ['echo pwned']\n", "not valid YAML"),
    ],
)
def test_invalid_rules_name_file_key_and_expectation(tmp_path, text, match):
    p = _write(tmp_path, text)
    with pytest.raises(RulesError, match=match) as exc:
        load_rules(p)
    assert str(p) in str(exc.value)


def test_every_check_parameter_declares_its_range_or_choices():
    """The schema: no bare types; every default value lies inside its own constraint."""
    from auditor.checks.catalog import load_all
    from auditor.core.constraints import Boolean, Interval, Options

    rules = load_rules()
    for name, spec in load_all().items():
        for param, constraint in spec.params.items():
            assert isinstance(constraint, (Interval, Options, Boolean)), (name, param)
            assert constraint.problem(rules.checks[name].params[param]) is None, (name, param)


def test_a_check_without_a_constraint_cannot_register():
    from auditor.checks.registry import register

    with pytest.raises(TypeError, match="needs a constraint"):
        register("loose_check_for_test", "quality", {"threshold": float})(lambda ctx, params: [])


def test_an_out_of_range_rule_is_exit_2_naming_file_and_key(tmp_path):
    from typer.testing import CliRunner

    from auditor.cli.app import app
    from auditor.demo import synth

    data = tmp_path / "ds"
    for i in range(3):
        synth.write(data / "train" / "a" / f"{i}.png", synth.png_bytes(synth.load_photo("camera")[:32, :32]))
    p = _write(tmp_path, "extends: default\nchecks:\n  outlier: {params: {robust_z: 0}}\n")
    result = CliRunner().invoke(app, ["scan", str(data), "--no-embed", "--rules", str(p), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "checks.outlier.params.robust_z: expected a number > 0, got 0" in result.output
    assert str(p) in result.output.replace("\n", "")


def test_missing_param_is_reported(tmp_path):
    import yaml

    from auditor.policy.rules import preset_path

    data = yaml.safe_load(preset_path("default").read_text())
    del data["checks"]["noisy"]["params"]["min_sigma"]
    p = _write(tmp_path, yaml.safe_dump(data))
    with pytest.raises(RulesError, match=r"checks\.noisy\.params\.min_sigma: missing"):
        load_rules(p)


def test_gate_fails_only_on_error_rules():
    rules = load_rules()
    leak = Finding("leakage", ["train/a.jpg", "val/a.jpg"], 1.0, "leak")
    blur = Finding("blurry", ["train/b.jpg"], 0.9, "blur")
    gate = judge([blur], rules, 100)
    assert gate["passed"]
    gate = judge([leak, blur], rules, 100)
    assert not gate["passed"]
    assert gate["rules"][0]["rule"] == "leakage" and gate["rules"][0]["status"] == "fail"
    # a warning rule over its fraction is "warn", never "fail"
    many = [Finding("blurry", [f"{i}.jpg"], 0.9, "b") for i in range(10)]
    entry = {e["rule"]: e for e in judge(many, rules, 100)["rules"]}["blurry"]
    assert entry["status"] == "warn" and entry["fraction"] == 0.1


@pytest.mark.parametrize("preset", ["default", "strict", "lenient"])
def test_presets_load(preset):
    rules = load_rules(preset)
    assert rules.checks["leakage"].severity == "error"
    errors = {n for n, r in rules.checks.items() if r.severity == "error"}
    if preset == "lenient":
        assert errors == {"leakage", "corrupt"} and rules.checks["corrupt"].max_fraction == 0.5
    if preset == "strict":
        assert "corrupt" in errors


def test_integers_accepted_for_numbers_and_limits_range_checked(tmp_path):
    ok = tmp_path / "ok.yaml"
    ok.write_text("schema: auditor.rules/1\nextends: default\nchecks:\n  outlier: {severity: warning, "
                  "params: {neighbours: 5, robust_z: 4, min_distance_ratio: 2}}\n")  # fmt: skip
    assert load_rules(ok).checks["outlier"].params["robust_z"] == 4
    for gate, match in (("{max_count: -5}", "max_count: expected an integer >= 0"),
                        ("{max_fraction: 7}", r"max_fraction: expected a number in \[0, 1\]")):  # fmt: skip
        bad = tmp_path / "bad.yaml"
        head = "schema: auditor.rules/1\nextends: default\nchecks:\n"
        bad.write_text(head + f"  dark: {{severity: warning, gate: {gate}}}\n")
        with pytest.raises(RulesError, match=match):
            load_rules(bad)
    missing = tmp_path / "child.yaml"
    missing.write_text("schema: auditor.rules/1\nextends: nosuch\nchecks: {}\n")
    with pytest.raises(RulesError, match="child.yaml: extends: 'nosuch' is neither a preset"):
        load_rules(missing)
