"""Search-space files (search_spaces/*.yaml, or the user's own YAML): which techniques appear and how their
parameters are searched.

    description: text
    techniques:                       # each listed technique is optional (on/off is searched)
      prune.depth:
        blocks: {int: [0, 8]}         # narrow or widen the plugin's range (within its `limits` for the model)
      prune.width:
        heads_per_group: 0            # fix a parameter (any plain value)
      quant.dynamic_int8: {}          # the plugin's default space
    required: [quant.dynamic_int8]    # optional: techniques that are always on

Techniques that declare each other incompatible share one choice (e.g. which quantizer, or none), so every
sampled policy is valid. Order is each technique's stage, so a policy is always a valid pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from autoslm.errors import UserError
from autoslm.space import Categorical, Float, Int
from autoslm.technique import outside
from autoslm.yamlfile import read_yaml


def spaces_dir() -> Path:
    """The shipped spaces: the top-level search_spaces/ folder, installed as the package autoslm.search_spaces."""
    import importlib.util

    spec = importlib.util.find_spec("autoslm.search_spaces")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parents[2] / "search_spaces"  # a source checkout that is not installed


Dim = Float | Int | Categorical


class TechniqueSpace(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    dims: dict[str, Dim]
    fixed: dict[str, Any]


class SearchSpace(BaseModel):
    """A resolved space: per technique, searched dimensions and fixed values; groups of exclusive techniques."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str = ""
    techniques: tuple[TechniqueSpace, ...]
    required: tuple[str, ...] = ()
    groups: tuple[tuple[str, ...], ...] = ()

    def without(self, names: set[str]) -> SearchSpace:
        """This space with the techniques in `names` left out (a group that loses all its members goes too)."""
        groups = tuple(kept for g in self.groups if (kept := tuple(t for t in g if t not in names)))
        return self.model_copy(
            update={
                "techniques": tuple(t for t in self.techniques if t.name not in names),
                "required": tuple(t for t in self.required if t not in names),
                "groups": groups,
            }
        )

    def describe(self) -> list[tuple[str, str, str]]:
        from autoslm.space import describe

        rows = []
        for g in self.groups:
            label = "always" if any(t in self.required for t in g) else "optional"
            rows.append((" | ".join(g), "(choice)" if len(g) > 1 else "(on/off)", label))
            for t in self.techniques:
                if t.name in g:
                    rows += [(f"  {t.name}", p, describe(d)) for p, d in t.dims.items()]
                    rows += [(f"  {t.name}", p, f"fixed {v!r}") for p, v in t.fixed.items()]
        return rows


def find_space_file(spec: str) -> Path:
    path = Path(spec)
    if path.is_file():
        return path
    named = spaces_dir() / f"{spec}.yaml"
    if named.is_file():
        return named
    known = ", ".join(sorted(p.stem for p in spaces_dir().glob("*.yaml")))
    raise UserError(f"search space '{spec}' not found: give a YAML file or one of {known}")


def space_techniques(path: Path) -> list[str]:
    """The technique names a space file lists (a cheap check before anything is loaded); [] if unreadable (the full
    load reports why)."""
    try:
        doc = read_yaml(path, "search space")
    except UserError:
        return []
    techniques = doc.get("techniques") if isinstance(doc, dict) else None
    return [str(n) for n in techniques] if isinstance(techniques, dict) else []


def load_space(spec: str, info: dict[str, int], target: dict[str, Any] | None = None) -> SearchSpace:
    """Read a space file and merge it with each plugin's own space() for this model."""
    from autoslm.plugins import get_registry

    path = find_space_file(spec)
    doc = read_yaml(path, "search space")
    if not isinstance(doc, dict) or not isinstance(doc.get("techniques"), dict) or not doc["techniques"]:
        raise UserError(f"search space {path}: needs a 'techniques:' mapping of technique name -> parameters")
    unknown_keys = set(doc) - {"description", "techniques", "required"}
    if unknown_keys:
        raise UserError(f"search space {path}: unknown key(s) {sorted(unknown_keys)}; allowed: techniques, required")
    registry = get_registry()
    techniques = []
    for name, overrides in doc["techniques"].items():
        if name not in registry.techniques:
            known = ", ".join(sorted(registry.techniques))
            note = registry.failed_note()
            raise UserError(
                f"search space {path}: techniques.{name} is not installed (installed: {known})"
                + (f"; {note}" if note else "")
            )
        overrides = overrides or {}
        if not isinstance(overrides, dict):
            raise UserError(f"search space {path}: techniques.{name} must be a mapping of parameter -> range/value")
        cls = registry.techniques[name].cls
        dims: dict[str, Dim] = dict(cls.space(info, target))
        limits = cls.limits(info)
        fixed: dict[str, Any] = {}
        fields = cls.Config.model_fields
        for param, value in overrides.items():
            where = f"search space {path}: techniques.{name}.{param}"
            if param not in fields:
                raise UserError(f"{where} is not a parameter of {name} (parameters: {', '.join(fields)})")
            dim = _parse_dim(value, where)
            if dim is None:
                _check_fixed(limits.get(param), value, where)
                dims.pop(param, None)
                fixed[param] = value
            else:
                dims[param] = _clamp(dim, limits.get(param))
        base = {p: _first(d) for p, d in dims.items()}
        # every value a sampler may propose must validate: each choice, each end of a range (one at a time)
        for param, value in [(None, None), *((p, v) for p, d in dims.items() for v in _values(d))]:
            try:
                cls.Config.model_validate({**base, **({param: decode_choice(value)} if param else {}), **fixed})
            except ValidationError as exc:
                err = exc.errors(include_url=False)[0]
                shown = f" (value {value!r})" if param else ""
                raise UserError(
                    f"search space {path}: techniques.{name}.{'.'.join(map(str, err['loc']))}{shown}: {err['msg']}"
                ) from exc
        techniques.append(TechniqueSpace(name=name, dims=dims, fixed=fixed))
    required_doc = doc.get("required") or []
    if not isinstance(required_doc, list) or not all(isinstance(r, str) for r in required_doc):
        raise UserError(f"search space {path}: 'required' must be a list of technique names, e.g. [quant.gguf]")
    required = tuple(required_doc)
    for r in required:
        if r not in doc["techniques"]:
            raise UserError(f"search space {path}: required lists '{r}', which is not under techniques")
    if len(set(required)) != len(required):
        raise UserError(f"search space {path}: required lists a technique twice ({', '.join(required)})")
    techniques.sort(key=lambda t: (registry.techniques[t.name].cls.stage, t.name))
    groups = _exclusive_groups([t.name for t in techniques])
    for group in groups:  # required techniques that cannot run together: "always" would mean "one of them"
        clash = [t for t in group if t in required]
        if len(clash) > 1:
            raise UserError(
                f"search space {path}: required lists {' and '.join(clash)}, which cannot be in one policy "
                "(incompatible): require at most one of them, or none and let the search choose"
            )
    return SearchSpace(
        name=path.stem,
        description=str(doc.get("description", "")),
        techniques=tuple(techniques),
        required=required,
        groups=groups,
    )


def _clamp(dim: Dim, bounds: tuple[float, float] | None) -> Dim:
    """A numeric range of the space file, kept inside what the technique can do to this model (its `limits`):
    `prune.depth` `blocks: {int: [0, 8]}` on a 4-block model searches 0..3."""
    if bounds is None:
        return dim
    lo, hi = bounds
    if isinstance(dim, Categorical):
        numeric = [c for c in dim.choices if isinstance(c, int | float) and not isinstance(c, bool)]
        kept = tuple(c for c in dim.choices if c not in numeric or lo <= c <= hi)
        return dim.model_copy(update={"choices": kept or (min(max(numeric[0], lo), hi),)})
    low = min(max(dim.low, lo), hi)
    high = max(min(dim.high, hi), low)
    if isinstance(dim, Int):
        low, high = int(low), int(high)
        high = low + (high - low) // dim.step * dim.step  # the last value the step reaches
    return dim.model_copy(update={"low": low, "high": high})


def _check_fixed(bounds: tuple[float, float] | None, value: Any, where: str) -> None:
    """A fixed number outside what the technique can do to this model fails here, not in every trial."""
    if bounds is not None and outside(bounds, value):
        raise UserError(f"{where}: {value} is outside what this model allows ({bounds[0]}..{bounds[1]})")


def _parse_dim(value: Any, where: str) -> Dim | None:
    if not isinstance(value, dict):
        return None  # a fixed value
    keys = set(value) - {"log", "step"}
    try:
        if keys == {"int"}:
            lo, hi, *step = value["int"]
            return Int(low=lo, high=hi, step=step[0] if step else value.get("step", 1))
        if keys == {"float"}:
            lo, hi = value["float"]
            return Float(low=lo, high=hi, log=bool(value.get("log", False)))
        if keys == {"choices"}:
            return Categorical(choices=tuple(tuple(c) if isinstance(c, list) else c for c in value["choices"]))
    except (ValueError, TypeError, ValidationError) as exc:
        msg = exc.errors(include_url=False)[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        raise UserError(
            f"{where}: {msg}; write {{int: [LOW, HIGH]}}, {{float: [LOW, HIGH]}} or {{choices: [...]}}"
        ) from exc
    raise UserError(
        f"{where}: unknown range {value!r}; write {{int: [LOW, HIGH]}}, {{float: [LOW, HIGH]}}, "
        "{choices: [...]} or a plain value to fix it"
    )


def _first(dim: Dim) -> Any:
    return decode_choice(dim.choices[0]) if isinstance(dim, Categorical) else dim.low


def _values(dim: Dim) -> list[Any]:
    """What to validate of a dimension: every choice, or both ends of a range."""
    return list(dim.choices) if isinstance(dim, Categorical) else [dim.low, dim.high]


def _exclusive_groups(names: list[str]) -> tuple[tuple[str, ...], ...]:
    """Connected components of the incompatibility graph: each becomes one choice."""
    from autoslm.plugins import get_registry

    reg = get_registry()
    parent = {n: n for n in names}

    def root(n: str) -> str:
        while parent[n] != n:
            n = parent[n]
        return n

    for a in names:
        for b in names:
            if a != b and (
                b in reg.techniques[a].cls.incompatible_with or a in reg.techniques[b].cls.incompatible_with
            ):
                parent[root(a)] = root(b)
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(root(n), []).append(n)
    return tuple(tuple(g) for g in groups.values())


def encode_choice(value: Any) -> Any:
    """Optuna categorical choices must be plain scalars: tuples travel as JSON strings."""
    return json.dumps(list(value)) if isinstance(value, tuple | list) else value


def decode_choice(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("["):
        return json.loads(value)
    return value
