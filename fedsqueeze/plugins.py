"""User plugins: modules named by the ``plugins`` run-config key, imported before anything is parsed.

A plugin is an ordinary Python module that registers what it adds when it
is imported, e.g. a compression stage with :func:`compression.register_stage`
(see ``docs/extending.md``).  The ServerApp imports the plugins while it
validates the run config (:meth:`fedsqueeze.config.RunConfig.validate`), so
a pipeline naming a plugin stage parses; every ClientApp imports them at the
start of each message it handles (from its run config and from the server's
announcement in the train instruction), so the stage also encodes on the
clients, in the simulation and on the Deployment Engine alike.

The module must be importable in every process: shipped inside the FAB
(``fab-include`` in ``pyproject.toml``, as ``examples/**`` is), installed in
the environment of the SuperLink and SuperNodes, or on their ``PYTHONPATH``.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Iterable
from types import ModuleType

__all__ = ["PluginError", "parse_plugins", "load_plugins"]

log = logging.getLogger("fedsqueeze.plugins")

_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class PluginError(ImportError):
    """A plugin module is malformed, cannot be found or fails while it registers (names the plugin).

    :meth:`fedsqueeze.config.RunConfig.validate` reports it as a
    ``ConfigError`` for the key ``plugins`` (this error is its ``__cause__``).
    """


def parse_plugins(text: str | Iterable[str]) -> tuple[str, ...]:
    """The module names of a ``plugins`` value: a comma list (or an iterable), blanks and repeats dropped.

    Raises
    ------
    PluginError
        A name that is not a dotted Python module name.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    names: list[str] = []
    for item in items:
        name = str(item).strip()
        if not name:
            continue
        if not _MODULE_RE.match(name):
            raise PluginError(f"plugin {name!r}: not a Python module name (expected e.g. 'mypackage.mymodule')")
        if name not in names:
            names.append(name)
    return tuple(names)


def load_plugins(text: str | Iterable[str]) -> list[ModuleType]:
    """Import every plugin module named in ``text`` (in order); importing registers what it adds.

    Importing twice is free (Python caches modules), so callers simply call
    this before they parse anything.

    Returns
    -------
    list of module

    Raises
    ------
    PluginError
        Naming the plugin: not a module name, module not found (with the
        places it would have to be), or an exception raised while importing
        it, e.g. a :class:`compression.RegistrationError`.
    """
    modules = []
    for name in parse_plugins(text):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
                raise PluginError(
                    f"plugin {name!r}: module not found. It must be importable in the ServerApp and every "
                    "ClientApp process: ship it in the FAB (fab-include in pyproject.toml), install it in "
                    "their environment, or put its directory on their PYTHONPATH (docs/extending.md)") from exc
            raise PluginError(f"plugin {name!r} failed to import: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - whatever a plugin raises while registering is reported as its failure
            raise PluginError(f"plugin {name!r} failed to import: {type(exc).__name__}: {exc}") from exc
        modules.append(module)
    if modules:
        log.debug("plugins loaded: %s", ", ".join(m.__name__ for m in modules))
    return modules
