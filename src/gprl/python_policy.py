"""A user's Python policy, named ``module:attr``, for `gprl collect --policy module:attr`.

``module`` is imported as ``python -m`` would from the current directory; ``attr`` (dotted for
nested attributes) names

- a **policy**: a callable on a batch of observations, ``policy(obs) -> actions``, obs
  (num_envs, obs_dim) float32 as gprl flattens them, actions (num_envs, action_dim) in the env's
  own units (anything array-like: numpy, JAX, lists); or an object with ``get_action(obs)`` on
  ONE observation (Meta-World's scripted experts), applied to each env in turn;
- or a **factory** of one: a class, or a callable that takes no arguments, is called once with
  none and must return a policy (``metaworld.policies:SawyerPickPlaceV3Policy`` builds the
  expert).

A policy that accepts an ``info`` keyword gets the info dicts that came with the observations
(a list of num_envs dicts; one dict for ``get_action``): OGBench's oracles read privileged state
there. One that accepts ``episode_start`` gets a (num_envs,) bool array (one bool for
``get_action``), True where the observation is the first of an episode, to reset its own state.

Actions outside the action space are clipped to it. A policy that cannot be imported, built or
called, or whose actions have the wrong shape or are not finite, is a ValueError in one line.
"""

import contextlib
import difflib
import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from gprl.envs.common import first_line

POLICY_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
EXTRA_KEYWORDS = ("info", "episode_start")
"""Keywords a policy may accept to get more than the observations."""


def is_python_policy(policy: str) -> bool:
    """Whether --policy names a Python object (module:attr) rather than a run's own policy."""
    return ":" in policy


class PythonPolicy:
    """The policy ``target`` names, built: ``policy(obs, infos, episode_start, action_dim)``
    returns its (num_envs, action_dim) float64 actions in the env's units, checked."""

    def __init__(self, target: str):
        self.target = target
        built = _build(_import_attribute(target), target)
        if callable(built):
            act, self._per_env = built, False
        elif callable(getattr(built, "get_action", None)):
            act, self._per_env = built.get_action, True
        else:
            raise ValueError(
                f"--policy {target} gave a {type(built).__name__}, which is neither callable on "
                "observations nor has get_action(obs)"
            )
        self._act = act
        self._keywords = _accepted_keywords(act)

    def __call__(
        self, obs: np.ndarray, infos: list[dict], episode_start: np.ndarray, action_dim: int
    ) -> np.ndarray:
        extras = {"info": infos, "episode_start": episode_start}
        extras = {name: extras[name] for name in self._keywords}
        try:
            if self._per_env:
                actions = [
                    self._act(single, **{k: v[i] for k, v in extras.items()})
                    for i, single in enumerate(obs)
                ]
            else:
                actions = self._act(obs, **extras)
        except Exception as exc:  # the user's code raises anything
            raise ValueError(f"--policy {self.target} failed: {first_line(exc)}") from None
        return self._checked(actions, (len(obs), action_dim))

    def _checked(self, actions: Any, expected: tuple[int, int]) -> np.ndarray:
        try:
            actions = np.asarray(actions, np.float64)
        except (TypeError, ValueError):
            raise ValueError(
                f"--policy {self.target} returned {type(actions).__name__}, not an array of actions"
            ) from None
        if actions.shape != expected:
            raise ValueError(
                f"--policy {self.target} returned actions of shape {actions.shape} for "
                f"{expected[0]} observations; expected {expected} (num_envs, action_dim)"
            )
        if not np.isfinite(actions).all():
            raise ValueError(f"--policy {self.target} returned non-finite actions (NaN or inf)")
        return actions


def _import_attribute(target: str) -> Any:
    if not POLICY_TARGET.fullmatch(target):
        raise ValueError(
            "--policy must be deterministic, stochastic (a run's policy) or module:attr (a "
            f"Python policy, e.g. my_experts:reach), got {target!r}"
        )
    module_name, _, attribute = target.partition(":")
    with _current_directory_importable():
        try:
            found = importlib.import_module(module_name)
        except Exception as exc:  # a module can fail to import with any exception
            raise ValueError(
                f"--policy {target}: cannot import {module_name}: {first_line(exc)}"
            ) from None
    for name in attribute.split("."):
        if not hasattr(found, name):
            matches = difflib.get_close_matches(name, dir(found), n=3)
            hint = f"; did you mean {', '.join(map(repr, matches))}?" if matches else ""
            raise ValueError(f"--policy {target}: {module_name} has no {attribute!r}{hint}")
        found = getattr(found, name)
    return found


@contextlib.contextmanager
def _current_directory_importable():
    # The `gprl` script's sys.path starts at its own folder, not the user's; `python -m` and
    # the user's expectation put the current directory first.
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        yield
    finally:
        if added:
            sys.path.remove(os.getcwd())


def _build(found: Any, target: str) -> Any:
    """The policy: what target names, or what it returns when it is a factory (a class, or a
    callable taking no arguments)."""
    if not callable(found) and not callable(getattr(found, "get_action", None)):
        raise ValueError(
            f"--policy {target} is a {type(found).__name__}, not a policy (callable on "
            "observations, or with get_action(obs)) or a factory of one"
        )
    if not (isinstance(found, type) or _takes_no_arguments(found)):
        return found
    try:
        return found()
    except Exception as exc:  # the user's constructor raises anything
        raise ValueError(
            f"--policy {target}: calling it with no arguments to build the policy failed: "
            f"{first_line(exc)}"
        ) from None


def _takes_no_arguments(function: Callable) -> bool:
    parameters = _parameters(function)
    return parameters is not None and all(
        p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters
    )


def _accepted_keywords(function: Callable) -> tuple[str, ...]:
    parameters = {p.name: p for p in _parameters(function) or ()}
    return tuple(
        name
        for name in EXTRA_KEYWORDS
        if name in parameters
        and parameters[name].kind
        in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    )


def _parameters(function: Callable) -> list[inspect.Parameter] | None:
    """The function's parameters, or None where Python cannot tell (some builtins)."""
    try:
        return list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return None
