"""Every metric the product exports is documented, the same way, in its module's docstring and
in the README: a metric added, renamed or changed in one place only fails here."""

from __future__ import annotations

import pathlib
import re
from types import ModuleType

import prometheus_client
import pytest
from prometheus_client import core

from ovnk_secondary import ipam
from ovnk_secondary.agent import metrics as agent_metrics
from ovnk_secondary.controller import metrics as controller_metrics

README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
# "- `name` type {label, label} (unit): meaning", the meaning continued on indented lines
ENTRY = re.compile(r"^- `(?P<name>\w+)` (?P<type>\w+) \{(?P<labels>[^}]*)\} "
                   r"\((?P<unit>[^)]*)\): (?P<meaning>.*)$")
# "| `name` | type | `label`, `label` | unit | meaning |"
ROW = re.compile(r"^\| `(?P<name>\w+)` \| (?P<type>\w+) \| (?P<labels>[^|]*) \| "
                 r"(?P<unit>[^|]*) \| (?P<meaning>.*) \|$")
Documented = dict[str, tuple[str, frozenset[str], str, str]]  # name -> type, labels, unit, text


def _entry(match: re.Match[str], labels: frozenset[str]) -> tuple[str, frozenset[str], str, str]:
    return match["type"], labels, match["unit"].strip(), " ".join(match["meaning"].split())


def in_docstring(module: ModuleType) -> Documented:
    found: Documented = {}
    name = None
    for line in (module.__doc__ or "").splitlines():
        match = ENTRY.match(line)
        if match:
            name = match["name"]
            found[name] = _entry(match, frozenset(
                label.strip() for label in match["labels"].split(",") if label.strip()))
        elif name is not None and line.startswith("  "):
            kind, labels, unit, meaning = found[name]
            found[name] = (kind, labels, unit, f"{meaning} {line.strip()}")
        else:
            name = None
    return found


def in_readme(title: str) -> Documented:
    section = README.split(f"\n### {title}\n", 1)[1].split("\n#", 1)[0]
    return {match["name"]: _entry(match, frozenset(re.findall(r"`(\w+)`", match["labels"])))
            for match in map(ROW.match, section.splitlines()) if match}


def exported(module: ModuleType, state: list[core.Metric]) -> dict[str, tuple[str, frozenset[str]]]:
    """Name (as scraped: counters with `_total`) -> type and label names of every metric of
    the component: its registry's and its state's (from a snapshot with data)."""
    found: dict[str, tuple[str, set[str]]] = {}
    for family in [*module.REGISTRY.collect(), *state]:
        labels = {label for sample in family.samples for label in sample.labels} - {"le"}
        suffix = "_total" if family.type == "counter" else ""
        found[family.name + suffix] = (family.type, labels)
    for wrapper in vars(module).values():  # label names of metrics not observed yet
        if isinstance(wrapper, prometheus_client.metrics.MetricWrapperBase):
            suffix = "_total" if wrapper._type == "counter" else ""
            found[wrapper._name + suffix][1].update(wrapper._labelnames)
    return {name: (kind, frozenset(labels)) for name, (kind, labels) in found.items()}


CONTROLLER_STATE = controller_metrics.families(controller_metrics.Snapshot(
    accepted_nads=1, refused_nads=1, networks={"net": "layer2"},
    pools={"net": [ipam.SubnetUsage(subnet="10.0.0.0/24", size=253, used=1)]},
    waiting={"net": 0}))
AGENT_STATE = agent_metrics.families(agent_metrics.Snapshot(
    attachments={"ns/nad": 1}, bridge_mappings_applied=True))


@pytest.mark.parametrize(("module", "title", "state"), [
    (controller_metrics, "Controller metrics", CONTROLLER_STATE),
    (agent_metrics, "Node agent metrics", AGENT_STATE),
], ids=["controller", "agent"])
def test_every_metric_is_documented_alike_in_its_module_and_the_readme(
        module: ModuleType, title: str, state: list[core.Metric]) -> None:
    documented = in_docstring(module)
    assert len(documented) >= 5, "the docstring's list of metrics was not understood"
    assert in_readme(title) == documented
    assert exported(module, state) == {
        name: (kind, labels) for name, (kind, labels, _, _) in documented.items()}


def test_the_state_has_no_samples_until_there_is_a_state() -> None:
    """Before the controller's first full sync (and on a standby) its state gauges are empty:
    a sum over replicas is the leader's."""
    assert all(not family.samples for family in controller_metrics.families(None))
    assert all(family.samples for family in CONTROLLER_STATE)
