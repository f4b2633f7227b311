"""report.html is rendered from code compiled ahead of time (auditor/report/_report_html.py)
while that code matches the template and Jinja, and from the template itself otherwise: the same
bytes either way (issue 17 part 4: ~0.15 s of a scan whose cache folder is new)."""

from auditor.demo import synth
from auditor.pipeline import api
from auditor.report import precompile


def test_the_shipped_compiled_template_matches_the_template():
    import importlib

    import jinja2

    env = precompile._env(None)
    shipped = importlib.import_module(precompile.MODULE)
    assert precompile.source_key(env) == shipped.SOURCE_KEY, (
        "templates/report.html changed: run `python -m auditor.report.precompile`"
    )
    if jinja2.__version__ == shipped.JINJA:
        assert precompile.TARGET.read_text(encoding="utf-8") == precompile.generate(env)
        assert precompile.load(env) is not None
    else:  # compiled by another Jinja: never used, the template is compiled instead
        assert precompile.load(env) is None


def test_precompiled_and_compiled_templates_render_the_same_bytes(tmp_path, tiles, monkeypatch):
    root = tmp_path / "data"
    for i, (_name, rgb) in enumerate(tiles[:8]):
        synth.write(root / "train" / ("a" if i % 2 else "b") / f"{i}.png", synth.png_bytes(rgb))
    synth.write(root / "val" / "a" / "copy.png", synth.png_bytes(tiles[1][1]))  # leakage: evidence, thumbnails
    cache = tmp_path / "cache"
    shipped = api.scan(root, tmp_path / "o1", embed=False, cache_dir=cache, workers=1)
    assert shipped.report["findings"]
    assert not (cache / "templates").exists() or not any((cache / "templates").iterdir())  # nothing compiled

    # a stale module (an edited template, another Jinja) is not used: the template is compiled
    monkeypatch.setattr(precompile, "key", lambda env: "another template")
    assert precompile.load(precompile._env(None)) is None
    api.scan(root, tmp_path / "o2", embed=False, cache_dir=cache, workers=1)
    assert any((cache / "templates").iterdir())  # compiled, and cached as before
    assert (tmp_path / "o1" / "report.html").read_bytes() == (tmp_path / "o2" / "report.html").read_bytes()
