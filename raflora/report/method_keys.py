"""Which config keys are a method's own options (florist's ``tau``, raflora's ``rank_levels``, fedsa's
``sfed_alpha``), the one place ``sweep`` and the report's pairing ask it.

A sweep sets a method option only for the methods that have it (tau goes to florist, not to
flexlora), and the report pairs florist at any tau with the reference method's runs. Method
options are spelled ``federation.method.KEY``; the method's class lists them
(:meth:`raflora.aggregation.method.Method.option_names`).
"""

from __future__ import annotations

METHOD_PREFIX = "federation.method."
# Keys of older run folders whose resolved value followed the method (federation.empty_partition,
# each method's rule for an unreached rank partition, now raflora's option): runs that differ only
# there are one setting.
FOLLOWS_METHOD = ("federation.empty_partition",)


def option_name(key: str) -> str | None:
    """``federation.method.tau`` -> ``tau``; None for a key that is no method's option (``train.lr``,
    ``federation.num_clients``)."""
    if key.startswith(METHOD_PREFIX):
        return key[len(METHOD_PREFIX) :]
    return None


def is_method_option(key: str) -> bool:
    return option_name(key) is not None


def method_has_option(method: str, key: str) -> bool:
    """Whether ``key`` applies to ``method``: every key that is no method option applies to every
    method; a method option only to the methods whose class has it."""
    from raflora.aggregation import AGGREGATORS

    name = option_name(key)
    return name is None or name in AGGREGATORS[method].option_names()


def follows_method(key: str) -> bool:
    """Whether ``key`` is the method's own or resolved from it: pairing runs of different methods
    ignores it."""
    return key == "federation.method" or is_method_option(key) or key in FOLLOWS_METHOD
