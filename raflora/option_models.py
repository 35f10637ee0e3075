"""Typed models of the options that live in other classes: a method's (``[federation.method]``) and a
task's (``[task]``), built here from those classes so that they need not import pydantic.

A method declares its options as dataclass fields (``option(default, help=...)`` in
:mod:`raflora.aggregation`); a task as the keyword arguments of its constructor (type hints and
defaults, following ``**options`` up its base classes). :func:`method_models` and
:func:`task_models` turn every class of :data:`~raflora.aggregation.AGGREGATORS` and
:data:`~raflora.tasks.TASKS` into a pydantic model with ``name: Literal[...]``, so that
:mod:`raflora.config` reads each table as a union discriminated by ``name``: an unknown option is
refused with its key and the method or task it is not an option of.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from raflora.aggregation import AGGREGATORS
from raflora.tasks import TASKS

STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, protected_namespaces=())


class MethodOptions(BaseModel):
    """A ``[federation.method]`` table: ``name`` and the options of that method's class."""

    model_config = STRICT

    @model_validator(mode="after")
    def _method_checks(self) -> MethodOptions:
        self.method()  # the class's own range checks (check(), a ValueError naming the option)
        return self

    def method(self):
        """The :class:`~raflora.aggregation.method.Method` these options describe."""
        cls = AGGREGATORS[self.name]  # type: ignore[attr-defined]
        return cls(**{name: getattr(self, name) for name in cls.option_names()})


def _option_field(f: dataclasses.Field, hint: Any) -> tuple[Any, Any]:
    help_text = f.metadata.get("help", "")
    if f.default_factory is not dataclasses.MISSING:
        return hint, Field(default_factory=f.default_factory, description=help_text)
    return hint, Field(default=f.default, description=help_text)


def method_models() -> dict[str, type[MethodOptions]]:
    """One model per registered method, by name."""
    models = {}
    for name, cls in AGGREGATORS.items():
        hints = typing.get_type_hints(cls)
        fields = {f.name: _option_field(f, hints[f.name]) for f in cls.option_fields()}
        models[name] = create_model(
            f"method_{name}",
            __base__=MethodOptions,
            __doc__=f"[federation.method] of {name}: {(cls.__doc__ or '').splitlines()[0]}",
            name=(Literal[name], Field(description="the aggregation method")),
            **fields,
        )
    return models


def task_parameters(cls: type) -> list[inspect.Parameter]:
    """The keyword options of a task class's constructor, following ``**options`` up its bases,
    with their type hints resolved."""
    found: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        hints = typing.get_type_hints(init)
        params = list(inspect.signature(init).parameters.values())[1:]
        for p in params:
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in found:
                found[p.name] = p.replace(annotation=hints.get(p.name, Any))
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return list(found.values())


class TaskOptions(BaseModel):
    """A ``[task]`` table: ``name`` and the options of that task's constructor."""

    model_config = STRICT


def task_models() -> dict[str, type[TaskOptions]]:
    """One model per registered task, by name."""
    models = {}
    for name, cls in TASKS.items():
        fields = {
            p.name: (p.annotation, Field(default=None if p.default is p.empty else p.default))
            for p in task_parameters(cls)
        }
        models[name] = create_model(
            f"task_{name}",
            __base__=TaskOptions,
            __doc__=f"[task] of {name}: {(cls.__doc__ or '').splitlines()[0]} (see docs/tasks.md)",
            name=(Literal[name], Field(description="the task family")),
            **fields,
        )
    return models
