"""How many clients a round samples: ``federation.sample_count``, else ``sample_fraction`` of them."""

from __future__ import annotations

from raflora.config import Config


def sample_size(config: Config) -> int:
    f = config.federation
    if f.sample_count > 0:
        return f.sample_count
    return max(1, int(round(f.sample_fraction * f.num_clients)))
