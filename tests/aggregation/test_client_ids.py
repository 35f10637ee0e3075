"""Client ids in aggregate: a non-empty string or an integer (the runtimes' client index); anything
else (NaN, which equals nothing and so passed the duplicate check, None, a float, a tuple, an empty
string) is refused with one line, and the round goes on with the others."""

from __future__ import annotations

import math

import pytest
import torch

from raflora import ClientUpdate, LoRAFactors, aggregate
from raflora.aggregation.validate import NoValidUpdates


def update(cid, seed: int) -> ClientUpdate:
    g = torch.Generator().manual_seed(seed)
    return ClientUpdate(
        cid, {"w": LoRAFactors(A=torch.randn(2, 6, generator=g), B=torch.randn(5, 2, generator=g), scale=1.0)}, 10
    )


@pytest.mark.parametrize("bad", [float("nan"), None, 1.5, ("a", 1), "", "   ", True])
def test_an_id_that_is_not_a_string_or_an_integer_is_refused(bad):
    result = aggregate("raflora", [update("ana", 0), update(bad, 1), update(bad, 2), update(7, 3)])
    assert set(result.weights) == {"ana", 7}
    assert [r[2] for r in result.rejected] == [
        f"client {bad!r}: client_id must be a non-empty string or an integer"
    ] * 2
    # the accepted clients' update is the dense float64 sum of theirs, by their shares of the examples
    dense = sum(
        0.5 * (f.B.double() @ f.A.double()) for u in (update("ana", 0), update(7, 3)) for f in u.factors.values()
    )
    assert torch.allclose(result.delta("w").double(), dense, atol=1e-5)


def test_two_nan_ids_are_not_two_clients():
    with pytest.raises(NoValidUpdates, match="client_id must be a non-empty string or an integer"):
        aggregate("raflora", [update(math.nan, 0), update(math.nan, 1)])
