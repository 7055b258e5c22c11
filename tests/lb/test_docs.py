"""docs/clusters.md's load-balancer section names every balancer and its example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import meshproxy.lb

SECTION = (Path(__file__).parents[2] / "docs" / "clusters.md").read_text().split("## Load balancers", 1)[1]


def test_every_exported_balancer_is_documented() -> None:
    balancers = [name for name in meshproxy.lb.__all__ if name.endswith("Balancer") and name != "Balancer"]
    assert balancers
    for name in balancers:
        assert f"`{name}" in SECTION


def test_the_python_example_runs() -> None:
    for block in re.findall(r"```python\n(.*?)```", SECTION, re.S):
        exec(compile(block, "docs/clusters.md", "exec"), {"__name__": "__main__"})
