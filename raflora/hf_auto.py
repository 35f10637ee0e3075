"""Registers raflora's transformers model (``raflora-meanpool``) with the transformers Auto classes.

``import raflora`` calls :func:`register_when_imported`, which imports nothing: importing
transformers' model code costs seconds, and the aggregation math must stay torch-only. Both classes
are registered as soon as transformers' ``modeling_auto`` module has been imported (every
``AutoModel...`` class and PEFT's ``AutoPeftModel...`` import it), or at once if it already was.
Not earlier, on ``configuration_auto``: ``modeling_auto`` imports that module, so registering then
would import raflora's model (which imports ``AutoModel``) while ``modeling_auto`` is half imported.
After that, ``AutoConfig`` and ``AutoModelForSequenceClassification`` (hence PEFT's
``AutoPeftModelForSequenceClassification``) load the folders raflora writes.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Callable
from typing import Any

MODEL_TRIGGER = "transformers.models.auto.modeling_auto"
MODEL_MODULE = "raflora.tasks.meanpool"


def _model_module_ready() -> bool:
    importing = sys.modules.get(MODEL_MODULE)
    # the trigger fired while that module imports transformers: it registers at its end
    return importing is None or hasattr(importing, "MeanPoolForSequenceClassification")


def register() -> None:
    """Register raflora's model with the transformers Auto classes (idempotent): the registration
    lives beside the classes, in :func:`raflora.tasks.meanpool.register`, which importing that
    module runs; this module only decides when (it imports transformers' Auto modules)."""
    if not _model_module_ready():
        return
    from raflora.tasks.meanpool import register as register_meanpool

    register_meanpool()


def _or_warn(step: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            step()
        except Exception as err:  # a failed registration must never break importing transformers
            warnings.warn(f"raflora could not register its transformers classes: {err!r}", stacklevel=2)

    return run


class _CallAfterExec(importlib.abc.Loader):
    """A loader that runs the module with the real loader, then calls ``callback``."""

    def __init__(self, loader: importlib.abc.Loader, callback: Callable[[], None]):
        self.loader, self.callback = loader, callback

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        self.callback()

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... of the real loader
        return getattr(self.loader, name)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds module ``name`` the ordinary way, with a loader that calls ``callback`` once it ran."""

    def __init__(self, name: str, callback: Callable[[], None]):
        self.name, self.callback = name, callback

    def find_spec(self, fullname: str, path, target=None):
        if fullname != self.name:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _CallAfterExec(spec.loader, self.callback)
        return spec


def register_when_imported() -> None:
    """Register now what transformers has loaded, and the rest right after it loads."""
    if MODEL_TRIGGER in sys.modules:
        _or_warn(register)()
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(MODEL_TRIGGER, _or_warn(register)))
