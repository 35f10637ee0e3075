"""Which config keys are a method's own options (florist's tau, raflora's rank_levels, fedsa's
sfed_alpha), the one place ``sweep`` and the report's pairing ask it.

A sweep sets a method option only for the methods that have it (tau goes to florist, not to
flexlora), and the report pairs florist at any tau with the reference method's runs. Method
options are spelled ``federation.method.KEY``; until the config redesign lands they are flat
``federation.KEY`` fields, and the aggregator's option list says which of those are a method's.
"""

from __future__ import annotations

METHOD_PREFIX = "federation.method."
# Flat federation fields an aggregator reads that belong to the whole federation, not to a method
# (fedsa's scale needs the number of clients; it is no fedsa option to sweep).
SHARED_FIELDS = ("num_clients",)


def option_name(key: str) -> str | None:
    """``federation.method.tau`` or today's ``federation.tau`` -> ``tau``; None for a key that is no
    method's option (``train.lr``, ``federation.num_clients``)."""
    from raflora.aggregation import AGGREGATORS

    if key.startswith(METHOD_PREFIX):
        return key[len(METHOD_PREFIX):]
    section, _, name = key.partition(".")
    if section != "federation" or name in SHARED_FIELDS:
        return None
    return name if any(name in spec.options for spec in AGGREGATORS.values()) else None


def is_method_option(key: str) -> bool:
    return option_name(key) is not None


def method_has_option(method: str, key: str) -> bool:
    """Whether ``key`` applies to ``method``: every key that is no method option applies to every
    method; a method option only to the methods that list it."""
    from raflora.aggregation import AGGREGATORS

    name = option_name(key)
    return name is None or name in AGGREGATORS[method].options
