"""Task families (model + data + metric) and a registry by name.

``build_task("text", seed=1, model="tiny")`` builds a task from the ``[task]`` section of a config.
Every module imports only torch at import time; transformers, datasets and weights load lazily.
"""

from __future__ import annotations

import inspect
from typing import Any

from raflora.tasks.base import Task, TaskData
from raflora.tasks.reasoning import ReasoningGymTask
from raflora.tasks.synthetic import SyntheticTask
from raflora.tasks.text import BBCNewsTask, TextClassificationTask
from raflora.tasks.user_data import UserTextTask
from raflora.tasks.vision import FashionMNISTTask

TASKS: dict[str, type[Task]] = {
    "text": BBCNewsTask,
    "vision": FashionMNISTTask,
    "reasoning": ReasoningGymTask,
    "user_text": UserTextTask,
    "synthetic": SyntheticTask,
}


def task_options(cls: type) -> list[str]:
    """Keyword options accepted by a task class, following ``**options`` up its base classes."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]
        names += [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def build_task(name: str, **options: Any) -> Task:
    """The task registered as ``name``, built with ``options``; a clear ValueError for an unknown
    task or option."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    cls = TASKS[name]
    allowed = task_options(cls)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for task {name!r}; its options are {allowed}")
    return cls(**options)


__all__ = [
    "TASKS",
    "BBCNewsTask",
    "FashionMNISTTask",
    "ReasoningGymTask",
    "Task",
    "TaskData",
    "TextClassificationTask",
    "UserTextTask",
    "build_task",
    "task_options",
]
