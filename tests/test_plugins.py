from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from conftest import run_cli

import autoslm
from autoslm.errors import UserError
from autoslm.plugins import Registry


def _fake_distribution(site: Path) -> None:
    """A pip-installed-like distribution: one plugin fails to import, one raises in its hook, one registers a name
    that is already taken, and one works."""
    info = site / "fakeplug-1.2.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text(
        "[autoslm]\n" + "".join(f"{n} = fakeplug_{n}\n" for n in ("broken", "good", "raising", "dup"))
    )
    (site / "fakeplug_broken.py").write_text("raise ImportError('this plugin is deliberately broken')\n")
    (site / "fakeplug_raising.py").write_text(
        "import autoslm\n\n@autoslm.hookimpl\ndef register_techniques(register):\n"
        "    raise RuntimeError('hook exploded')\n"
    )
    (site / "fakeplug_dup.py").write_text(
        "import autoslm\n\nclass D(autoslm.Technique):\n    name = 'prune.depth'\n    stage = autoslm.Stage.PRUNE\n\n"
        "@autoslm.hookimpl\ndef register_techniques(register):\n    register(D)\n"
    )
    (site / "fakeplug_good.py").write_text(
        textwrap.dedent(
            """
            import autoslm

            class Noop(autoslm.Technique):
                name = "test.noop"
                stage = autoslm.Stage.PRUNE

                def apply(self, model, config, ctx):
                    return model

            @autoslm.hookimpl
            def register_techniques(register):
                register(Noop)
            """
        )
    )


def _plugins_json(env: dict[str, str]) -> dict[str, dict]:
    proc = run_cli("plugins", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return {p["name"]: p for p in json.loads(proc.stdout)}


def test_builtin_plugins_load_through_entry_points() -> None:
    reg = Registry().load()
    entry = reg.technique("prune.depth")
    assert entry.dist == "autoslm" and entry.plugin == "prune_depth"
    assert reg.plugins["prune_depth"].status == "loaded"


def test_broken_entry_point_is_reported_and_others_load(tmp_path: Path) -> None:
    _fake_distribution(tmp_path)
    plugins = _plugins_json({"PYTHONPATH": str(tmp_path)})
    assert plugins["broken"]["status"] == "failed"
    assert "deliberately broken" in plugins["broken"]["error"]
    assert plugins["broken"]["dist"] == "fakeplug"
    assert (
        plugins["raising"]["status"] == "failed"
        and "register_techniques raised RuntimeError: hook exploded" in (plugins["raising"]["error"])
    )
    assert plugins["dup"]["status"] == "failed" and plugins["dup"]["dist"] == "fakeplug"
    assert "technique 'prune.depth' is already registered by autoslm" in plugins["dup"]["error"]
    assert plugins["good"]["status"] == "loaded" and plugins["good"]["techniques"] == ["test.noop"]
    assert plugins["prune_depth"]["status"] == "loaded" and plugins["prune_depth"]["techniques"] == ["prune.depth"]
    table = run_cli("plugins", env={"PYTHONPATH": str(tmp_path), "COLUMNS": "250"})
    assert "fakeplug" in table.stdout and "failed" in table.stdout and "hook exploded" in table.stdout


def test_allowlist_and_strict_mode(tmp_path: Path) -> None:
    _fake_distribution(tmp_path)
    env = {"PYTHONPATH": str(tmp_path), "AUTOSLM_PLUGINS": "prune_depth,good"}
    plugins = _plugins_json(env)
    assert plugins["broken"]["status"] == "disabled"
    assert plugins["good"]["status"] == "loaded"
    strict = run_cli("plugins", env={"PYTHONPATH": str(tmp_path), "AUTOSLM_PLUGINS_STRICT": "1"})
    assert strict.returncode == 2
    assert "error: plugin 'broken' from fakeplug" in strict.stderr
    assert "Traceback" not in strict.stderr


class _Dup(autoslm.Technique):
    name = "prune.depth"
    stage = autoslm.Stage.PRUNE


class _DupPlugin:
    @autoslm.hookimpl
    def register_techniques(self, register):
        register(_Dup)


class _RaisingPlugin:
    @autoslm.hookimpl
    def register_techniques(self, register):
        raise RuntimeError("hook exploded")


class _NotATechnique:
    @autoslm.hookimpl
    def register_techniques(self, register):
        register(dict)


def test_duplicate_raising_and_invalid_registrations_are_isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Registry().load()
    dup = reg.add(_DupPlugin(), "dup", dist="dupdist")
    assert dup.status == "failed" and "already registered by autoslm" in (dup.error or "")
    assert reg.technique("prune.depth").dist == "autoslm"  # the first registration wins
    raising = reg.add(_RaisingPlugin(), "raising")
    assert raising.status == "failed" and "hook exploded" in (raising.error or "")
    invalid = reg.add(_NotATechnique(), "invalid")
    assert invalid.status == "failed" and "not a subclass" in (invalid.error or "")
    reg.remove("dup")
    assert "dup" not in reg.plugins
    monkeypatch.setenv("AUTOSLM_PLUGINS_STRICT", "1")
    with pytest.raises(UserError, match="hook exploded"):
        Registry().load().add(_RaisingPlugin(), "raising2")


def test_unknown_technique_lists_installed_ones() -> None:
    with pytest.raises(UserError, match=r"unknown technique 'quant\.magic'.*prune\.depth"):
        Registry().load().technique("quant.magic")


def test_invalid_config_is_a_clear_error() -> None:
    cls = Registry().load().technique("prune.depth").cls
    with pytest.raises(UserError, match=r"technique 'prune.depth': blocks: .*greater than or equal to 0"):
        cls.make_config({"blocks": -1})
    with pytest.raises(UserError, match="blockz"):
        cls.make_config({"blockz": 2})


def test_a_plugin_that_failed_to_import_is_named_as_the_cause(tmp_path: Path) -> None:
    """search (a space naming its technique), apply (a recipe step from its distribution) and the kit's lookup all
    say the plugin is installed but failed to load, and why -- not "not installed"."""
    import subprocess
    import sys

    from conftest import REPO

    site = tmp_path / "site"
    _fake_distribution(site)
    env = {"PYTHONPATH": str(site)}
    cause = "plugin broken (distribution fakeplug) is installed but failed to load: import failed: ImportError"
    space = tmp_path / "space.yaml"
    space.write_text("techniques:\n  fake.broken: {}\n")
    search = run_cli("search", "--model", "tiny-llama", "--space", str(space), "--budget", "memory_mb<=3x",
                     "--out", str(tmp_path / "run"), env=env)  # fmt: skip
    assert search.returncode == 2 and cause in search.stderr and "Traceback" not in search.stderr, search.stderr
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "schema_version: 1\nbase_model: {name: tiny-llama, fingerprint: abc}\ncalibration: {}\nseed: 0\n"
        "steps:\n- {technique: fake.broken, plugin: fakeplug, version: '1.2', params: {}}\n"
    )
    applied = run_cli("apply", str(recipe), "--out", str(tmp_path / "o"), env=env)
    assert applied.returncode == 2 and cause in applied.stderr and "pip install" not in applied.stderr
    kit = subprocess.run([sys.executable, "-c", "from autoslm.plugins import Registry\n"
                          "try:\n    Registry().load().technique('fake.broken')\nexcept Exception as e:\n    print(e)"],
                         capture_output=True, text=True, env={**__import__("os").environ, **env}, cwd=REPO)  # fmt: skip
    assert cause in kit.stdout, kit.stdout + kit.stderr
    listed = run_cli("plugins", env=env)  # to a pipe: no terminal width to squeeze the reason into
    assert "ImportError: this plugin is deliberately broken" in listed.stdout, listed.stdout


def test_a_missing_codec_names_the_distribution_the_checkpoint_recorded(tmp_path: Path) -> None:
    from autoslm import checkpoint
    from autoslm.models import load_model
    from autoslm.pipeline import Step, apply_planned, plan
    from autoslm.technique import ApplyContext

    lm = load_model("tiny-llama")
    model = apply_planned(lm.model, plan([Step(technique="quant.dynamic_int8", params={})]),
                          ApplyContext(tokenizer=lm.tokenizer, seed=0))  # fmt: skip
    ck = checkpoint.save_dir(model, lm.tokenizer, tmp_path / "ck")
    manifest = json.loads((ck / checkpoint.MANIFEST).read_text())
    coded = manifest["modules"]["coded"]
    assert all(m["dist"] == "autoslm" and m["version"] == autoslm.__version__ for m in coded.values())
    for m in coded.values():  # as if made by a plugin that is not installed here
        m.update(codec="fake.int8", dist="autoslm-fake-int8", version="2.0.1")
    (ck / checkpoint.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"autoslm-fake-int8 2\.0\.1 .*pip install 'autoslm-fake-int8==2\.0\.1'"):
        checkpoint.load_model(ck)
    for m in coded.values():  # a hostile manifest: nothing of it is echoed into a command
        m.update(dist="x; rm -rf ~")
    (ck / checkpoint.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="no installed plugin provides") as caught:
        checkpoint.load_model(ck)
    assert "rm -rf" not in str(caught.value)
