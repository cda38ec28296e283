"""Server optimizers: how the averaged client update moves the global model, in one registry.

A server optimizer turns ``delta`` (the example-weighted mean of the decoded
client updates, client minus global) into a step on the global weights. Each
one is a subclass of :class:`ServerOptimizer` registered under a name with
:func:`register_server_optimizer`; the ``server-optimizer`` run-config key
names it, and :class:`fedsqueeze.config.RunConfig` validates that key against
this registry when a config is parsed (a name registered at run time is
accepted). The built-ins are registered through the same call:

* ``fedavg`` (McMahan et al. 2017, with a server learning rate): ``w += lr * d``;
* ``fedavgm`` (Hsu et al. 2019): ``m = momentum * m + d; w += lr * m``;
* ``fedadam`` (Reddi et al. 2021, Alg. 2, no bias correction):
  ``m = b1 m + (1 - b1) d; v = b2 v + (1 - b2) d^2; w += lr * m / (sqrt(v) + tau)``.

Hyper-parameters are run-config keys (``server-lr``, ``server-momentum``,
``server-beta1``, ``server-beta2``, ``server-tau``): their defaults and
ranges live in :class:`~fedsqueeze.config.RunConfig` only; a registration
names the keys its optimizer reads, and :func:`server_optimizer_from_config`
passes their values as keyword arguments (``server-beta1`` -> ``beta1``).

The update rules are pure functions of explicit state (:attr:`ServerOptimizer.state`),
so a checkpoint saves and restores an optimizer exactly. Flower's own
``FedAvgM``/``FedAdam`` keep their moments in private attributes and aggregate
whole models, not compressed deltas, hence this module.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["RESERVED_KEYS", "SERVER_OPTIMIZERS", "FedAdam", "FedAvg", "FedAvgM", "ServerOptimizer",
           "ServerOptimizerEntry", "build_server_optimizer", "register_server_optimizer", "server_optimizer_from_config",
           "server_optimizer_names", "hyperparameter_argument"]

Tensors = dict[str, torch.Tensor]

#: ``server-*`` run-config keys that are not hyper-parameters: the optimizer's name and the learning
#: rate every optimizer gets. Any other ``server-*`` key of :class:`~fedsqueeze.config.RunConfig` is
#: one (today ``server-momentum``, ``server-beta1``, ``server-beta2``, ``server-tau``); the config
#: declares them, this module does not (it must not import the config, which imports it).
RESERVED_KEYS = ("server-optimizer", "server-lr")
_KEY = re.compile(r"server-[a-z0-9]+(-[a-z0-9]+)*")


def hyperparameter_argument(key: str) -> str:
    """The keyword argument a hyper-parameter key is passed as: ``server-beta1`` -> ``beta1``."""
    return key.removeprefix("server-").replace("-", "_")


class ServerOptimizer(abc.ABC):
    """Base class of a server optimizer: ``w_new = w + lr * direction(delta)``.

    Subclasses implement :meth:`direction` and keep every tensor they carry
    from round to round in :attr:`state`, which the server checkpoints (one
    ``.npz`` per entry) and restores by assignment before the next step.

    Parameters
    ----------
    lr : float
        The server learning rate (run-config key ``server-lr``).
    state : dict[str, dict[str, torch.Tensor]], optional
        Restored moments, e.g. from a checkpoint: ``{moment name: {parameter name: tensor}}``.

    Notes
    -----
    ``delta`` is float32 on the CPU, keyed like the global weights; :meth:`direction`
    must not modify it, and its result must have the same keys and shapes.
    The server applies ``lr`` itself (see :meth:`step`), so every optimizer
    honours ``server-lr`` the same way.
    """

    def __init__(self, lr: float, state: dict[str, Tensors] | None = None) -> None:
        self.lr = lr
        self.state: dict[str, Tensors] = {} if state is None else state

    @abc.abstractmethod
    def direction(self, delta: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """The step direction for the averaged update ``delta``; may update :attr:`state` in place."""

    def moment(self, name: str, like: Mapping[str, torch.Tensor]) -> Tensors:
        """``state[name]``, created as zeros shaped like ``like`` on first use."""
        return self.state.setdefault(name, {k: torch.zeros_like(v) for k, v in like.items()})

    def step(self, weights: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor]) -> Tensors:
        """Return the new global weights ``w + lr * direction(delta)``; updates :attr:`state` in place.

        ``weights`` is not modified.
        """
        direction = self.direction(delta)
        return {k: weights[k] + self.lr * direction[k] for k in weights}


class FedAvg(ServerOptimizer):
    """FedAvg with a server learning rate: the direction is the averaged update itself."""

    def direction(self, delta: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        return dict(delta)


class FedAvgM(ServerOptimizer):
    """FedAvgM (Hsu et al. 2019): heavy-ball momentum ``m = momentum * m + d`` (state ``m``)."""

    def __init__(self, lr: float, momentum: float, state: dict[str, Tensors] | None = None) -> None:
        super().__init__(lr, state)
        self.momentum = momentum

    def direction(self, delta: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        m = self.moment("m", delta)
        for k, d in delta.items():
            m[k].mul_(self.momentum).add_(d)
        return m


class FedAdam(ServerOptimizer):
    """FedAdam (Reddi et al. 2021, Alg. 2, no bias correction): moments ``m`` and ``v`` in the state."""

    def __init__(self, lr: float, beta1: float, beta2: float, tau: float,
                 state: dict[str, Tensors] | None = None) -> None:
        super().__init__(lr, state)
        self.beta1, self.beta2, self.tau = beta1, beta2, tau

    def direction(self, delta: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        m, v = self.moment("m", delta), self.moment("v", delta)
        out = {}
        for k, d in delta.items():
            m[k].mul_(self.beta1).add_(d, alpha=1 - self.beta1)
            v[k].mul_(self.beta2).addcmul_(d, d, value=1 - self.beta2)
            out[k] = m[k] / (v[k].sqrt() + self.tau)
        return out


@dataclass(frozen=True)
class ServerOptimizerEntry:
    """One registered server optimizer: its factory and the run-config keys it reads."""

    name: str
    factory: Callable[..., ServerOptimizer]
    keys: tuple[str, ...]


#: name -> entry; read live by config validation and :func:`build_server_optimizer`.
SERVER_OPTIMIZERS: dict[str, ServerOptimizerEntry] = {}


def register_server_optimizer(name: str, factory: Callable[..., ServerOptimizer], keys: tuple[str, ...] = (), *,
                              replace: bool = False) -> ServerOptimizerEntry:
    """Register a server optimizer under ``name`` (the value of the ``server-optimizer`` key).

    Parameters
    ----------
    name : str
        Non-empty, without whitespace or commas.
    factory : callable
        A :class:`ServerOptimizer` subclass or a function returning an instance; called as
        ``factory(lr=..., state=..., **{kwarg: value for each key})``.
    keys : tuple of str
        The hyper-parameter run-config keys the optimizer reads: ``server-*`` keys
        other than :data:`RESERVED_KEYS`, each passed as :func:`hyperparameter_argument`
        (``"server-momentum"`` as ``momentum=``). ``server-lr`` is always passed as ``lr``.
        That they exist in :class:`~fedsqueeze.config.RunConfig` is checked when a config
        naming the optimizer is validated.
    replace : bool
        Allow re-registering an existing name (otherwise an error, so two plugins
        cannot silently shadow each other or a built-in).

    Returns
    -------
    ServerOptimizerEntry
        What was registered.

    Raises
    ------
    ValueError
        Bad name, a name already taken (without ``replace``) or an unknown key.
    TypeError
        ``factory`` is not callable.
    """
    if not isinstance(name, str) or not name or any(c.isspace() or c == "," for c in name):
        raise ValueError(f"server optimizer name must be a non-empty string without spaces or commas, got {name!r}")
    if name in SERVER_OPTIMIZERS and not replace:
        raise ValueError(f"server optimizer {name!r} is already registered (pass replace=True to override it)")
    if not callable(factory):
        raise TypeError(f"server optimizer {name!r}: factory must be callable, got {type(factory).__name__}")
    bad = [k for k in keys if not isinstance(k, str) or not _KEY.fullmatch(k) or k in RESERVED_KEYS]
    if bad:
        raise ValueError(f"server optimizer {name!r}: hyper-parameter key(s) {bad} are not server-* run-config "
                         f"keys other than {', '.join(RESERVED_KEYS)} (e.g. 'server-momentum')")
    entry = ServerOptimizerEntry(name, factory, tuple(keys))
    SERVER_OPTIMIZERS[name] = entry
    return entry


def server_optimizer_names() -> list[str]:
    """The registered names, sorted."""
    return sorted(SERVER_OPTIMIZERS)


def build_server_optimizer(name: str, lr: float, state: dict[str, Tensors] | None = None,
                           **hyperparameters: Any) -> ServerOptimizer:
    """Instantiate the optimizer registered as ``name``.

    Parameters
    ----------
    name : str
        A registered name.
    lr : float
        Server learning rate.
    state : dict, optional
        Restored moments.
    **hyperparameters
        Values by keyword (``momentum=0.9``); exactly the keyword arguments of the
        entry's keys are passed on, the rest are ignored, so callers may give all of them.

    Raises
    ------
    ValueError
        ``name`` is not registered, or a key it reads is not given.
    TypeError
        The factory returned something other than a :class:`ServerOptimizer`.
    """
    entry = SERVER_OPTIMIZERS.get(name)
    if entry is None:
        raise ValueError(f"unknown server optimizer {name!r}; registered: {', '.join(server_optimizer_names())}")
    kwargs = {}
    for key in entry.keys:
        arg = hyperparameter_argument(key)
        if arg not in hyperparameters:
            raise ValueError(f"server optimizer {name!r} needs {arg}= (run-config key {key!r})")
        kwargs[arg] = hyperparameters[arg]
    opt = entry.factory(lr=lr, state=state, **kwargs)
    if not isinstance(opt, ServerOptimizer):
        raise TypeError(f"server optimizer {name!r}: factory returned {type(opt).__name__}, "
                         "not a fedsqueeze.optimizers.ServerOptimizer")
    return opt


def server_optimizer_from_config(cfg: Any, state: dict[str, Tensors] | None = None) -> ServerOptimizer:
    """The optimizer a :class:`~fedsqueeze.config.RunConfig` names, given its hyper-parameter keys' values.

    Raises
    ------
    ValueError
        The optimizer is not registered, or reads a key the config does not have.
    """
    entry = SERVER_OPTIMIZERS.get(cfg.server_optimizer)
    keys = entry.keys if entry is not None else ()
    missing = [k for k in keys if not hasattr(cfg, k.replace("-", "_"))]
    if missing:
        raise ValueError(f"server optimizer {cfg.server_optimizer!r} reads run-config key(s) {missing}, "
                         "which the config does not have")
    values = {hyperparameter_argument(k): getattr(cfg, k.replace("-", "_")) for k in keys}
    return build_server_optimizer(cfg.server_optimizer, cfg.server_lr, state, **values)


register_server_optimizer("fedavg", FedAvg)
register_server_optimizer("fedavgm", FedAvgM, ("server-momentum",))
register_server_optimizer("fedadam", FedAdam, ("server-beta1", "server-beta2", "server-tau"))
