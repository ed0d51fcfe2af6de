"""The plugin manager: entry points of group `autoslm`, loaded one at a time, failures reported, not fatal.

Built-in techniques (package `autoslm_plugins`, folder plugins/) are declared as entry points in autoslm's own
pyproject.toml, exactly like a third-party package's, so the engine imports none of them. The engine's own targets,
runtimes, search backends and samplers come from `autoslm.builtins`, registered first through the same hooks and
never disabled by the allowlist (a search cannot run without them).

Tables (each filled by one hook; see `hookspecs.py`):
  techniques  name -> TechniqueEntry        codecs    name -> CodecEntry
  targets     scheme -> Entry (Target)      runtimes  name -> Entry (Runtime)
  backends    name -> Entry (SearchBackend) samplers  name -> Entry (factory(seed) -> Optuna sampler)
  metrics     autoslm.metrics (one table for every figure)

Environment:
  AUTOSLM_PLUGINS          comma-separated allowlist of entry-point or distribution names (unset: load all)
  AUTOSLM_PLUGINS_STRICT   "1": a plugin that fails to import, raises in a hook or duplicates a name is an error
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from autoslm import hookspecs
from autoslm.codec import Codec
from autoslm.errors import UserError
from autoslm.technique import Technique, check_technique_class

GROUP = "autoslm"


DIST_NAME = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,98}[A-Za-z0-9])?$"  # a distribution name pip accepts (PEP 508)
VERSION = r"^[A-Za-z0-9][A-Za-z0-9.+!_-]{0,63}$"  # a distribution version, as recipes and manifests record it


@dataclass
class PluginInfo:
    """One plugin as `autoslm plugins` shows it."""

    name: str
    dist: str
    version: str
    status: str = "loaded"  # loaded | failed | disabled
    error: str | None = None
    techniques: list[str] = field(default_factory=list)
    provides: list[str] = field(default_factory=list)  # targets, runtimes, backends, samplers it registered


@dataclass
class TechniqueEntry:
    cls: type[Technique]
    plugin: str
    dist: str
    version: str


@dataclass
class CodecEntry:
    codec: Codec
    plugin: str
    dist: str
    version: str


@dataclass
class Entry:
    """A target, runtime, search backend or sampler, and the plugin that registered it."""

    obj: Any
    plugin: str
    dist: str
    version: str


def _named(kind: str, base: str, key: str = "name") -> Any:
    """A check for `register(obj)`: obj must be a subclass of `base` (module:Class) with a non-empty `key`."""

    def check(obj: Any) -> list[str]:
        import importlib

        module, cls_name = base.split(":")
        cls = getattr(importlib.import_module(module), cls_name)
        if not (isinstance(obj, type) and issubclass(obj, cls)):
            raise ValueError(f"{obj!r} is not a subclass of {module}.{cls_name}")
        value = getattr(obj, key, None)
        names = [value] if isinstance(value, str) else list(value or ())
        if not names or not all(isinstance(n, str) and n.strip() == n and n for n in names):
            raise ValueError(f"{kind} {obj.__name__} has no valid `{key}`")
        return names

    return check


# hook -> (table attribute, what is registered, check returning the names it is registered under)
TABLES: dict[str, tuple[str, str, Any]] = {
    "register_targets": ("targets", "target", _named("target", "autoslm.targets:Target", "schemes")),
    "register_runtimes": ("runtimes", "runtime", _named("runtime", "autoslm.runtimes:Runtime")),
    "register_search_backends": (
        "backends",
        "search backend",
        _named("search backend", "autoslm.searching.backends:SearchBackend"),
    ),
}


class Registry:
    """The loaded plugins and what they registered."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.techniques: dict[str, TechniqueEntry] = {}
        self.codecs: dict[str, CodecEntry] = {}
        self.targets: dict[str, Entry] = {}
        self.runtimes: dict[str, Entry] = {}
        self.backends: dict[str, Entry] = {}
        self.samplers: dict[str, Entry] = {}
        self._loaded = False

    # --- loading -------------------------------------------------------------------------------------------

    def load(self) -> Registry:
        """Load every allowed entry point once (idempotent), then collect what each registers."""
        if self._loaded:
            return self
        self._loaded = True
        import autoslm
        from autoslm import builtins

        self.add(builtins, name="autoslm", dist="autoslm", version=autoslm.__version__)
        allow = _allowlist()
        # built-ins first, then third parties by name: a third-party plugin cannot shadow a built-in technique
        eps = sorted(entry_points(group=GROUP), key=lambda e: (_dist_of(e)[0] != "autoslm", e.name))
        for ep in eps:
            dist, version = _dist_of(ep)
            info = PluginInfo(name=ep.name, dist=dist, version=version)
            self.plugins[ep.name] = info
            if allow is not None and ep.name not in allow and dist not in allow:
                info.status = "disabled"
                continue
            try:
                self.pm.register(ep.load(), name=ep.name)
            except Exception as exc:
                self._fail(info, f"import failed: {type(exc).__name__}: {exc}")
                continue
            self._collect(info)
        unmatched = sorted((allow or set()) - {ep.name for ep in eps} - {_dist_of(ep)[0] for ep in eps})
        if unmatched:
            names = ", ".join(sorted({ep.name for ep in eps} | {_dist_of(ep)[0] for ep in eps}))
            message = (f"AUTOSLM_PLUGINS names {', '.join(map(repr, unmatched))}, which matched no installed plugin "
                       f"(plugins and distributions: {names})")  # fmt: skip
            if _strict():
                raise UserError(message + " (AUTOSLM_PLUGINS_STRICT is set)")
            import sys

            sys.stderr.write(f"warning: {message}\n")
        return self

    def add(self, plugin: object, name: str, dist: str = "local", version: str = "0") -> PluginInfo:
        """Register a plugin object directly (tests, notebooks). Undo with `remove(name)`."""
        info = PluginInfo(name=name, dist=dist, version=version)
        self.plugins[name] = info
        self.pm.register(plugin, name=name)
        self._collect(info)
        return info

    def remove(self, name: str) -> None:
        from autoslm import metrics

        metrics.forget(name)
        if self.pm.get_plugin(name) is not None:
            self.pm.unregister(name=name)
        self.plugins.pop(name, None)
        for table in ("techniques", "codecs", "targets", "runtimes", "backends", "samplers"):
            setattr(self, table, {k: v for k, v in getattr(self, table).items() if v.plugin != name})

    def _collect(self, info: PluginInfo) -> None:
        """Call this plugin's hook implementations alone, so its failures are attributed to it."""
        from autoslm import metrics

        found: list[type[Technique]] = []
        codecs: list[Codec] = []
        others: list[tuple[str, str, str, Any]] = []  # (table, kind, name, object)

        def register(cls: Any) -> None:
            check_technique_class(cls)
            found.append(cls)

        def register_codec(codec: Any) -> None:
            if not isinstance(codec, Codec) or not getattr(codec, "name", None):
                raise ValueError(f"{codec!r} is not an autoslm.Codec instance with a name")
            codecs.append(codec)

        def register_sampler(name: Any, factory: Any = None) -> None:
            if not isinstance(name, str) or not name.isidentifier() or not callable(factory):
                raise ValueError(f"register_samplers: give register(name, factory) (got {name!r}, {factory!r})")
            others.append(("samplers", "sampler", name, factory))

        def table_callback(table: str, kind: str, check: Any) -> Any:
            def callback(obj: Any) -> None:
                others.extend((table, kind, n, obj) for n in check(obj))

            return callback

        callbacks: list[tuple[str, Any]] = [
            ("register_techniques", register),
            ("register_codecs", register_codec),
            ("register_samplers", register_sampler),
            ("register_metrics", lambda metric: metrics.register(metric, plugin=info.name)),
            *((hook, table_callback(*spec)) for hook, spec in TABLES.items()),
        ]
        for hook, callback in callbacks:
            for impl in getattr(self.pm.hook, hook).get_hookimpls():
                if impl.plugin_name != info.name:
                    continue
                try:
                    impl.function(register=callback)
                except Exception as exc:
                    self._fail(info, f"{hook} raised {type(exc).__name__}: {exc}")
                    return
        for codec in codecs:
            if codec.name in self.codecs:
                self._fail(info, f"codec '{codec.name}' is already registered by {self.codecs[codec.name].dist}")
                continue
            self.codecs[codec.name] = CodecEntry(codec, info.name, info.dist, info.version)
        for cls in found:
            if cls.name in self.techniques:
                other = self.techniques[cls.name]
                self._fail(info, f"technique '{cls.name}' is already registered by {other.dist} ({other.plugin})")
                continue
            self.techniques[cls.name] = TechniqueEntry(cls, info.name, info.dist, info.version)
            info.techniques.append(cls.name)
        for table, kind, name, obj in others:
            entries: dict[str, Entry] = getattr(self, table)
            if name in entries:
                self._fail(info, f"{kind} '{name}' is already registered by {entries[name].dist}")
                continue
            entries[name] = Entry(obj, info.name, info.dist, info.version)
            info.provides.append(f"{kind} {name}")

    def _fail(self, info: PluginInfo, message: str) -> None:
        info.status, info.error = "failed", message
        if _strict():
            raise UserError(f"plugin '{info.name}' from {info.dist}: {message} (AUTOSLM_PLUGINS_STRICT is set)")

    # --- lookup ----------------------------------------------------------------------------------------------

    def technique(self, name: str) -> TechniqueEntry:
        self.load()
        if name not in self.techniques:
            known = ", ".join(sorted(self.techniques)) or "none"
            hint = "(a third-party technique needs its plugin package installed; see `autoslm plugins`)"
            why = self.failed_note() or hint
            raise UserError(f"unknown technique '{name}': installed techniques are {known}; {why}")
        return self.techniques[name]

    def failed_note(self, dist: str | None = None) -> str:
        """'plugin P (distribution D) is installed but failed to load: REASON' for each plugin that failed (of
        distribution `dist` only, when given); '' when none did. The real cause behind a missing technique."""
        self.load()
        failed = [p for p in self.plugins.values() if p.status == "failed" and (dist is None or p.dist == dist)]
        return "; ".join(f"plugin {p.name} (distribution {p.dist}) is installed but failed to load: {p.error}"
                         for p in failed)  # fmt: skip

    def lookup(self, table: str, name: str, flag: str) -> Any:
        """The object registered under `name` in a table (targets, runtimes, backends, samplers), or a UserError
        for `flag` that lists what is installed."""
        self.load()
        entries: dict[str, Entry] = getattr(self, table)
        if name not in entries:
            known = ", ".join(sorted(entries)) or "none"
            raise UserError(
                f"{flag} '{name}' is not known: use one of {known} (plugins add more; see `autoslm plugins`)"
            )
        return entries[name].obj

    def codec(self, name: str, dist: str | None = None, version: str | None = None) -> Codec:
        """The codec registered as `name`; else a UserError naming the distribution that provides it (`dist` and
        `version` as the checkpoint recorded them) and, when that plugin is installed but broken, why."""
        self.load()
        if name not in self.codecs:
            import re

            note = self.failed_note(dist) if dist else ""
            if note:
                raise UserError(f"checkpoint needs codec '{name}': {note}")
            if dist and re.match(DIST_NAME, dist) and version and re.match(VERSION, version):
                raise UserError(
                    f"checkpoint needs codec '{name}' from the plugin distribution {dist} {version} (recorded in the "
                    f"checkpoint's manifest), which is not installed: pip install '{dist}=={version}'"
                )
            raise UserError(
                f"checkpoint needs codec '{name}', which no installed plugin provides: install the plugin that "
                "made the checkpoint (its recipe names the distribution), then retry"
            )
        return self.codecs[name].codec

    def codec_entry(self, codec: Codec) -> CodecEntry:
        self.load()
        return self.codecs[codec.name]

    def codec_for(self, module: Any) -> Codec | None:
        self.load()
        for entry in self.codecs.values():
            if type(module) is entry.codec.module_type:
                return entry.codec
        return None


def _allowlist() -> set[str] | None:
    raw = os.environ.get("AUTOSLM_PLUGINS")
    if raw is None:
        return None
    return {x.strip() for x in raw.split(",") if x.strip()}


def _strict() -> bool:
    return os.environ.get("AUTOSLM_PLUGINS_STRICT", "").lower() in ("1", "true", "yes")


def _dist_of(ep: EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown", "?"
    return dist.metadata["Name"], dist.version


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
    return _REGISTRY.load()


def reset_registry() -> None:
    """Forget loaded plugins (tests, or after changing AUTOSLM_PLUGINS)."""
    global _REGISTRY
    _REGISTRY = None
