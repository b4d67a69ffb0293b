"""What a node reports of itself for OpenJD's hostRequirements, and how it is matched."""

from __future__ import annotations

import platform

import pytest

from scheduler.core.placement import (
    Capabilities,
    HostRequirements,
    NodeView,
    Placement,
    Requirements,
    Room,
)
from workers.node import NodeConfig, detect_capabilities, operator_capabilities, with_capabilities


def test_a_node_detects_its_os_family_and_cpu_architecture_in_openjds_words() -> None:
    amounts, attributes = detect_capabilities(gpus=0)
    assert amounts == {}  # no GPU: no GPU memory to report
    assert attributes["attr.worker.os.family"] == ["linux"]  # these machines run Linux
    expected = {"x86_64": "x86_64", "aarch64": "arm64"}[platform.machine()]
    assert attributes["attr.worker.cpu.arch"] == [expected]


@pytest.mark.parametrize(
    ("attrs", "amounts", "expected"),
    [
        ([], [], ({}, {})),
        (
            ["attr.studio.software=houdini", "attr.studio.software=nuke"],
            ["amount.studio.licences=2"],
            (
                {"amount.studio.licences": 2.0},
                {"attr.studio.software": ["houdini", "nuke"]},
            ),
        ),
        (
            ["studio.site=chengdu"],
            ["studio.tokens=0.5"],
            ({"amount.studio.tokens": 0.5}, {"attr.studio.site": ["chengdu"]}),
        ),
    ],
)
def test_an_operator_names_capabilities_with_or_without_their_prefix(
    attrs: list[str], amounts: list[str], expected: tuple[dict[str, float], dict[str, list[str]]]
) -> None:
    assert operator_capabilities(attrs, amounts) == expected


@pytest.mark.parametrize(
    ("attrs", "amounts", "words"),
    [
        (["software"], [], "NAME=VALUE"),
        (["attr.studio.software="], [], "give a value"),
        (["attr.bad name=x"], [], "NAME=VALUE"),
        ([], ["amount.studio.licences=many"], "not a number"),
        ([], ["amount.studio.licences=-1"], ">= 0"),
        ([], ["amount.studio.licences=inf"], ">= 0"),
        (
            ["amount.studio.x=1"],
            [],
            "give it with --amount",
        ),  # an amount's name given as an attribute
    ],
)
def test_capabilities_that_do_not_read_are_refused_saying_which(
    attrs: list[str], amounts: list[str], words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        operator_capabilities(attrs, amounts)


def test_what_the_operator_gives_wins_over_what_was_detected() -> None:
    node = NodeConfig(name="n", pool="cpu", slots=1)
    given = with_capabilities(node, {}, {"attr.worker.os.family": ["windows"]})
    assert given.attributes["attr.worker.os.family"] == ["windows"]
    assert "attr.worker.cpu.arch" in given.attributes
    report = given.report(running=0)
    assert report.capabilities["attributes"]["attr.worker.os.family"] == ["windows"]


def test_the_standard_amounts_come_from_the_hardware_unless_reported() -> None:
    found = Capabilities.of(16, 64 * 2**30, 1, {"amounts": {"amount.worker.gpu.memory": 24576}})
    amounts = dict(found.amounts)
    assert amounts["amount.worker.vcpu"] == 16
    assert amounts["amount.worker.memory"] == 65536
    assert amounts["amount.worker.gpu"] == 1
    assert amounts["amount.worker.gpu.memory"] == 24576
    overridden = Capabilities.of(16, 0, 0, {"amounts": {"amount.worker.vcpu": 4, "x": True}})
    assert dict(overridden.amounts)["amount.worker.vcpu"] == 4
    assert "x" not in dict(overridden.amounts)  # true is not an amount


def test_placement_puts_a_step_only_on_nodes_that_meet_its_host_requirements() -> None:
    gpu_memory = HostRequirements(amounts={"amount.worker.gpu.memory": (16000.0, None)})
    small = Capabilities.of(8, 2**34, 1, {"amounts": {"amount.worker.gpu.memory": 8192}})
    large = Capabilities.of(8, 2**34, 1, {"amounts": {"amount.worker.gpu.memory": 24576}})
    nodes = [
        NodeView("small", "gpu", free=4, gpus=1, capabilities=small),
        NodeView("large", "gpu", free=1, gpus=1, capabilities=large),
    ]
    needs = Requirements(gpus=1, host=gpu_memory)
    assert Room.of(nodes).can_ever_run("gpu", needs)
    placement = Placement(Room.of(nodes))
    assert placement.place("gpu", needs) == "large"
    assert placement.place("gpu", needs) is None  # the small one has room, but not enough
    assert placement.place("gpu", Requirements(gpus=1)) == "small"
    assert "amount.worker.gpu.memory 16000+" in needs.describe()
