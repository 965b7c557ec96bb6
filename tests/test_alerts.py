"""deploy/prometheus/alerts.yml: every expression parses with a real PromQL parser, and every metric it
names is exported by a running server."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import promql_parser
import pytest
import yaml

from lfsb.server.main import Server
from tests.litefs import LiteFSEmulator
from tests.test_verify import compacted_history, metric_lines

ALERTS = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "alerts.yml"
EXPECTED = {
    "LfsbBackupsStale",
    "LfsbHwmLagHigh",
    "LfsbCompactionFailing",
    "LfsbStorageErrors",
    "LfsbStorageDown",
    "LfsbRestoreCheckFailed",
    "LfsbRestoreCheckOverdue",
    "LfsbCorruptionFound",
}


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects."""
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        elif isinstance(node, promql_parser.MatrixSelector):
            names.add(node.vector_selector.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def test_every_rule_parses_and_has_what_it_needs() -> None:
    """Each rule parses, names lfsb metrics only, and has a summary and a severity."""
    found = rules()
    assert {r["alert"] for r in found} == EXPECTED
    for rule in found:
        names = metric_names(rule["expr"])
        assert names and all(n.startswith("lfsb_") for n in names), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]


def test_a_bad_expression_is_refused() -> None:
    """The parser is real: it refuses what Prometheus refuses."""
    with pytest.raises(ValueError):
        promql_parser.parse("2 * on (instance) lfsb_storage_up")
    with pytest.raises(ValueError):
        promql_parser.parse("rate(lfsb_storage_errors_total)")


@pytest.mark.parametrize("storage_env", ["local"], indirect=True)
async def test_every_metric_is_exported(start_server: Callable, tmp_path: Path) -> None:
    """Every metric the rules name is on /metrics of a running server (with a database backed up and
    checked, so that the per-database series exist)."""
    server: Server = await start_server()
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        await compacted_history(server, node)
        await server.verifier.check(await server.store.database("test", "db"))
    lines = await metric_lines(server)
    exported = {
        m.group(1) for line in lines if (m := re.match(r"(?:# HELP )?([a-zA-Z_:][a-zA-Z0-9_:]*)[ {]", line))
    }
    wanted = set().union(*(metric_names(r["expr"]) for r in rules()))
    assert wanted - exported == set()
