"""``import raflora`` registers its transformers classes whichever transformers module loads first."""

from __future__ import annotations

import subprocess
import sys

import pytest

ORDERS = {
    "config module first": "import transformers.models.auto.configuration_auto",
    "AutoModel first": "from transformers import AutoModel",
    "PEFT first": "from peft import AutoPeftModelForSequenceClassification",
}


@pytest.mark.parametrize("first", list(ORDERS))
def test_registration_in_any_import_order(first):
    code = (
        f"import raflora\n{ORDERS[first]}\n"
        "from transformers import AutoModelForSequenceClassification\n"
        "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
        "from raflora.tasks.meanpool import MeanPoolConfig\n"
        "assert 'raflora-meanpool' in CONFIG_MAPPING\n"
        "assert MeanPoolConfig in AutoModelForSequenceClassification._model_mapping\n"
    )
    done = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
