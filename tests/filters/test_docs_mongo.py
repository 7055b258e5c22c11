"""Every YAML example in docs/mongo.md is a configuration meshproxy accepts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from meshproxy.config import config_from_dict

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "mongo.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)


def test_the_guide_has_yaml_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("block", BLOCKS)
def test_each_yaml_example_validates(block: str) -> None:
    data = yaml.safe_load(block)
    if isinstance(data, dict) and "listeners" in data:
        config_from_dict(data, source="docs/mongo.md")
        return
    filters = data if isinstance(data, list) else [data]
    config_from_dict(
        {
            "listeners": [{"name": "doc", "address": "127.0.0.1:0", "cluster": "c", "filters": filters}],
            "clusters": [{"name": "c", "hosts": ["127.0.0.1:27017"]}],
        },
        source="docs/mongo.md",
    )
