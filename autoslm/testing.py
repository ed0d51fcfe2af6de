"""Conformance kit for technique plugins: subclass `TechniqueConformance` in your plugin's tests.

    from autoslm.testing import TechniqueConformance

    class TestMySparsity(TechniqueConformance):
        technique = "sparse.magnitude"                      # the name your plugin registers
        example_params = [{"sparsity": 0.5}]                # valid configs worth applying (defaults are added)
        invalid_params = [{"sparsity": 1.5}]                # configs that must be rejected
        fast_params = {"calibration_samples": 2}            # merged into every config tested: keeps tests quick

pytest then runs every check below against the installed plugin, on a tiny random Llama (3.3M parameters, built
locally in about a second, no download). To learn whether it supports Gemma-3 too, run the same checks on a tiny
random Gemma-3 (x*(1+w) norms, q/k norms, sliding-window layers, one key/value head):

    class TestMySparsityOnGemma3(TestMySparsity):
        model = "tiny-gemma3"

  registered          the technique is found through the `autoslm` entry points, with its distribution and version
  config round trip   Config -> JSON -> Config is the same, every parameter explicit, unknown keys rejected
  invalid configs     each of `invalid_params` raises a UserError naming the technique
  space               every dimension of `space()` names a Config field, and its corner values validate
  apply + forward     each example and each corner of the space applies and the model still runs: logits of the
                      right shape, finite
  params              parameters + buffers do not grow, and neither does the saved checkpoint (set
                      `may_grow_params = True` if yours legitimately does)
  determinism         the same config and seed applied to two fresh copies give identical weights
  checkpoint          the result saves with `autoslm.checkpoint` and loads in this process with bit-identical logits
                      (a technique that creates new module types must register a Codec for them; the test model
                      has a tied embedding, so a technique that replaces it must keep the tie or store both)

Every check that applies the technique runs for the defaults, each example and both corners of `space()`.
  recipe              a recipe step built from it names the plugin's distribution and version

Built-in techniques pass it too (tests/plugins/test_conformance.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import pytest

from autoslm.errors import UserError
from autoslm.space import Categorical, Dimension, Float, Int

TINY = "tiny-llama"
_IDS = [[5, 6, 7, 8, 9, 10, 11, 12]]


def _corner_params(space: dict[str, Dimension]) -> list[dict[str, Any]]:
    """The low and the high corner of a space (each dimension at its first / last value)."""
    low: dict[str, Any] = {}
    high: dict[str, Any] = {}
    for name, dim in space.items():
        if isinstance(dim, Categorical):
            low[name], high[name] = dim.choices[0], dim.choices[-1]
        elif isinstance(dim, Int | Float):
            low[name], high[name] = dim.low, dim.high
    return [low, high] if space else []


class TechniqueConformance:
    """Base class of a plugin's conformance tests. Set `technique`; optionally the other class attributes."""

    technique: ClassVar[str] = ""
    example_params: ClassVar[list[dict[str, Any]]] = []
    invalid_params: ClassVar[list[dict[str, Any]]] = []
    fast_params: ClassVar[dict[str, Any]] = {}
    may_grow_params: ClassVar[bool] = False
    model: ClassVar[str] = TINY
    seed: ClassVar[int] = 0

    # --- helpers (override to adapt) --------------------------------------------------------------------------

    @pytest.fixture(scope="class")
    @classmethod
    def entry(cls) -> Any:
        from autoslm.plugins import get_registry

        if not cls.technique:
            pytest.fail(f"{cls.__name__}: set the class attribute `technique` to your technique's name")
        return get_registry().technique(cls.technique)

    @pytest.fixture(scope="class")
    @classmethod
    def info(cls) -> dict[str, int]:
        from autoslm.models import load_model, model_info

        return model_info(load_model(cls.model).model)

    @pytest.fixture(scope="class")
    @classmethod
    def original_size(cls, tmp_path_factory: pytest.TempPathFactory) -> int:
        """Bytes of the untouched test model saved as a checkpoint."""
        from autoslm import checkpoint
        from autoslm.models import load_model

        lm = load_model(cls.model)
        directory = checkpoint.save_dir(lm.model, None, tmp_path_factory.mktemp("original"))
        return checkpoint.weights_file(directory).stat().st_size

    def fresh(self) -> Any:
        """A private copy of the test model (a technique may modify it in place)."""
        from autoslm.models import load_model

        return load_model(self.model)

    def context(self, lm: Any) -> Any:
        from autoslm.technique import ApplyContext

        return ApplyContext(
            tokenizer=lm.tokenizer,
            seed=self.seed,
            calibration_samples=4,
            calibration_seq_len=32,
            teacher_factory=lambda: self.fresh().model,
        )

    def all_params(self, entry: Any, info: dict[str, int]) -> list[dict[str, Any]]:
        """Defaults, the examples, and the corners of the space (each with `fast_params`), without duplicates."""
        out: list[dict[str, Any]] = []
        for p in [{}, *self.example_params, *_corner_params(entry.cls.space(info))]:
            merged = {**self.fast_params, **p}
            if merged not in out:
                out.append(merged)
        return out

    def example(self) -> dict[str, Any]:
        return {**self.fast_params, **(self.example_params or [{}])[0]}

    def apply(self, entry: Any, params: dict[str, Any]) -> tuple[Any, Any, int]:
        """Apply to a fresh model; returns (compressed model, loaded original, original parameter + buffer count).
        A technique that raises fails the check naming itself, the configuration and which of the tested ones it
        is (defaults, an example, a corner of the space)."""
        lm = self.fresh()
        before = _numel(lm.model)
        config = entry.cls.make_config(params)
        try:
            model = entry.cls().apply(lm.model, config, self.context(lm))
        except Exception as exc:
            pytest.fail(
                f"{self.technique} raised {type(exc).__name__} ({str(exc)[:300]}) applied with {params} "
                f"({self.which(entry, params)}) on {self.model}"
            )
        assert model is not None, f"{self.technique}: apply() must return the model"
        return model, lm, before

    def which(self, entry: Any, params: dict[str, Any]) -> str:
        """Which configuration `params` is: the defaults, example N, or the low / high corner of `space()`."""
        from autoslm.models import load_model, model_info

        if params == {**self.fast_params}:
            return "the defaults"
        for i, example in enumerate(self.example_params):
            if params == {**self.fast_params, **example}:
                return f"example_params[{i}]"
        try:
            corners = _corner_params(entry.cls.space(model_info(load_model(self.model).model)))
        except Exception:  # the space itself is broken: its own check says so
            corners = []
        for label, corner in zip(("the low corner of space()", "the high corner of space()"), corners, strict=False):
            if params == {**self.fast_params, **corner}:
                return label
        return "a configuration under test"

    @staticmethod
    def logits(model: Any) -> Any:
        import torch

        with torch.inference_mode():
            return model(torch.tensor(_IDS)).logits.float()

    # --- the checks -------------------------------------------------------------------------------------------

    def test_registered_with_distribution(self, entry: Any) -> None:
        assert entry.cls.name == self.technique
        assert entry.dist and entry.dist != "unknown", "the plugin must be installed (pip) so its entry point is seen"
        assert entry.version and entry.version != "?"

    def test_config_round_trip(self, entry: Any, info: dict[str, int]) -> None:
        for params in self.all_params(entry, info):
            config = entry.cls.make_config(params)
            dumped = config.model_dump(mode="json")
            assert set(dumped) == set(entry.cls.Config.model_fields), "every parameter must be explicit in the dump"
            again = entry.cls.make_config(json.loads(json.dumps(dumped)))
            assert again == config
        with pytest.raises(UserError, match=self.technique.replace(".", r"\.")):
            entry.cls.make_config({"no_such_parameter_xyz": 1})

    def test_invalid_configs_rejected(self, entry: Any) -> None:
        for params in self.invalid_params:
            with pytest.raises(UserError, match=self.technique.replace(".", r"\.")):
                entry.cls.make_config(params)

    def test_space_names_config_fields(self, entry: Any, info: dict[str, int]) -> None:
        space = entry.cls.space(info)
        fields = set(entry.cls.Config.model_fields)
        for name, dim in space.items():
            assert name in fields, f"space() dimension '{name}' is not a field of {entry.cls.Config.__name__}"
            kinds = (Int, Float, Categorical)
            assert isinstance(dim, kinds), f"space()['{name}'] must be an autoslm Int, Float or Categorical"
        for corner in _corner_params(space):
            entry.cls.make_config(corner)

    def test_apply_keeps_a_working_model(self, entry: Any, info: dict[str, int]) -> None:
        for params in self.all_params(entry, info):
            model, _, before = self.apply(entry, params)
            logits = self.logits(model)
            assert logits.shape == (1, len(_IDS[0]), info["vocab_size"]), f"logits shape changed with {params}"
            assert bool(logits.isfinite().all()), f"non-finite logits with {params}"
            after = _numel(model)
            if not self.may_grow_params:
                assert after <= before, f"{params}: parameters + buffers grew from {before} to {after}"

    def test_deterministic_for_a_seed(self, entry: Any, info: dict[str, int]) -> None:
        from autoslm.models import fingerprint

        for params in self.all_params(entry, info):
            a = fingerprint(self.apply(entry, params)[0])
            b = fingerprint(self.apply(entry, params)[0])
            assert a == b, (
                f"two applies of {params} with seed {self.seed} differ: draw randomness from a generator seeded "
                "with ctx.seed (torch.Generator().manual_seed(ctx.seed)), never from the global RNG"
            )

    def test_checkpoint_round_trip(self, entry: Any, info: dict[str, int], original_size: int, tmp_path: Path) -> None:
        import torch

        from autoslm import checkpoint

        for i, params in enumerate(self.all_params(entry, info)):
            model, lm, _ = self.apply(entry, params)
            expected = self.logits(model)
            steps = [{"technique": self.technique, "params": params}]
            try:
                directory = checkpoint.save_dir(model, lm.tokenizer, tmp_path / f"ckpt{i}", steps=steps)
            except Exception as exc:
                pytest.fail(
                    f"{params}: the result does not save ({type(exc).__name__}: {exc}). Tensors that share memory "
                    "(a tied embedding replaced by a new module) need the tie kept (model.tie_weights()) or a codec "
                    "that stores the shared module once"
                )
            coded = json.loads((directory / checkpoint.MANIFEST).read_text()).get("modules", {}).get("coded", {})
            _tied_twice(model, coded, directory, params)
            try:
                loaded = checkpoint.load_model(directory)
            except Exception as exc:
                hint = (
                    "the technique left tensors (a buffer?) that the architecture does not have: remove them before "
                    "returning the model"
                    if "does not use" in str(exc)
                    else "A codec's decode() must rebuild the module from exactly what its encode() wrote (tensors "
                    "and every metadata field)"
                )
                pytest.fail(f"{params}: the checkpoint does not load ({type(exc).__name__}: {exc}). {hint}")
            _same_module_fields(model, loaded, coded, params)
            try:
                got = self.logits(loaded)
            except Exception as exc:
                codecs = ", ".join(sorted({f"{e['codec']} ({n})" for n, e in coded.items()})) or "none"
                pytest.fail(
                    f"{params}: the reloaded model fails to run ({type(exc).__name__}: {str(exc)[:200]}); codecs "
                    f"involved: {codecs}: each decode() must rebuild its module exactly as encode() described it"
                )
            assert torch.equal(got, expected), (
                f"{params}: logits differ after save/load (max abs difference "
                f"{float((got - expected).abs().max()):.3g}): the codec must store the module exactly"
            )
            assert not math.isnan(float(got.abs().max()))
            size = checkpoint.weights_file(directory).stat().st_size
            if not self.may_grow_params:
                assert size <= original_size, (
                    f"{params}: the checkpoint ({size:,} bytes) is larger than the original model's "
                    f"({original_size:,}): store what the technique removed or compressed, not extra copies"
                )

    def test_recipe_step_names_the_plugin(self, entry: Any) -> None:
        from autoslm.recipe import build_steps

        step = build_steps([{"technique": self.technique, "params": self.example()}])[0]
        assert step.technique == self.technique
        assert step.plugin == entry.dist and step.version == entry.version
        assert set(step.params) == set(entry.cls.Config.model_fields)


def _plain_fields(module: Any) -> dict[str, Any]:
    """A module's own plain attributes (sizes, flags, modes): what a codec's metadata must carry."""
    plain = (int, float, str, bool, tuple, type(None))
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training" and isinstance(v, plain)}


def _same_module_fields(model: Any, loaded: Any, coded: dict[str, Any], params: dict[str, Any]) -> None:
    """Every coded module comes back with the plain attributes it had: a field its codec's encode() dropped (and
    decode() then guessed) is named with the codec, not left to fail as an IndexError in the forward pass."""
    for name, entry in coded.items():
        before, after = _plain_fields(model.get_submodule(name)), _plain_fields(loaded.get_submodule(name))
        changed = sorted(k for k in before if before[k] != after.get(k, object()))
        if changed:
            k = changed[0]
            pytest.fail(
                f"{params}: codec {entry['codec']} rebuilt module '{name}' with {k}={after.get(k, '(missing)')!r} "
                f"where it was {before[k]!r} (metadata written: {sorted(entry.get('meta') or {})}): its encode() "
                f"must write every field its decode() needs ({', '.join(changed)})"
            )


def _tied_twice(model: Any, coded: dict[str, Any], directory: Path, params: dict[str, Any]) -> None:
    """A tied embedding stored twice: the model ties its input and output embeddings, both are coded modules, and
    the two decode to equal tensors (a 16-cluster k-means of each copy is still smaller than the original: the
    size check alone lets it pass)."""
    from safetensors.torch import load_file

    if not getattr(model.config, "tie_word_embeddings", False):
        return
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    names = {m: n for n, m in model.named_modules() if m is embed or m is head}
    pair = [names.get(embed), names.get(head)]
    if None in pair or not all(n in coded for n in pair) or embed is head:
        return
    tensors = load_file(str(directory / "model.safetensors"))
    own = [{k: tensors[f"{n}.{k}"] for k in coded[n]["tensors"] if f"{n}.{k}" in tensors} for n in pair]
    if own[0] and own[0].keys() == own[1].keys() and all(own[0][k].equal(own[1][k]) for k in own[0]):
        pytest.fail(
            f"{params}: the tied embedding is stored twice ({pair[0]} and {pair[1]} hold equal tensors): keep one "
            "module object for both, or share its tensors, so the checkpoint stores it once"
        )


def _numel(model: Any) -> int:
    """Parameters and buffers, each stored tensor once (a tied embedding counts once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.device.type != "meta" else (id(t), 0)
        if key not in seen:
            seen.add(key)
            total += t.numel()
    return total


__all__ = ["TechniqueConformance"]
