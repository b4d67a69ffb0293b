"""Node energy meters on fake hardware: a sysfs tree, a clock, an NVML stand-in."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest

from workers.meters import (
    MeterUnavailable,
    ModelMeter,
    NvmlMeter,
    RaplMeter,
    SumMeter,
    choose_meter,
    count_gpus,
)


def make_zone(root: Path, name: str, energy_uj: int, wraps_at: int) -> Path:
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{wraps_at}\n")
    return zone


def test_rapl_sums_package_zones_and_survives_wraparound(tmp_path: Path) -> None:
    package0 = make_zone(tmp_path, "intel-rapl:0", 999_000_000, 1_000_000_000)
    package1 = make_zone(tmp_path, "intel-rapl:1", 5_000_000, 1_000_000_000)
    make_zone(tmp_path, "intel-rapl:0:0", 0, 1_000_000_000)  # the core sub-zone: inside package 0
    meter = RaplMeter(tmp_path)
    assert meter.method == "rapl" and len(meter.zones) == 2
    assert meter.read() == 0.0

    (package0 / "energy_uj").write_text("1000000\n")  # wrapped: 1 J to the top, 1 J after
    (package1 / "energy_uj").write_text("8000000\n")  # 3 J
    assert meter.read() == pytest.approx(5.0)
    (package0 / "energy_uj").write_text("3000000\n")  # 2 J more
    assert meter.read() == pytest.approx(7.0)


def test_rapl_is_unavailable_without_readable_zones(tmp_path: Path) -> None:
    with pytest.raises(MeterUnavailable, match="no RAPL package zones"):
        RaplMeter(tmp_path / "missing")
    zone = make_zone(tmp_path, "intel-rapl:0", 1, 10)
    (zone / "energy_uj").write_text("")  # what a root-only file reads as, after the fact
    with pytest.raises(MeterUnavailable, match="cannot read RAPL zone"):
        RaplMeter(tmp_path)


def test_rapl_unreadable_as_on_patched_kernels(tmp_path: Path) -> None:
    zone = make_zone(tmp_path, "intel-rapl:0", 1, 10)
    (zone / "energy_uj").unlink()
    (zone / "energy_uj").mkdir()  # reading a directory fails like a permission error
    with pytest.raises(MeterUnavailable):
        RaplMeter(tmp_path)


CpuTimes = namedtuple("CpuTimes", "user nice system idle iowait irq softirq steal guest guest_nice")


class FakeHost:
    def __init__(self) -> None:
        self.now = 0.0
        self.busy = 0.0
        self.idle = 0.0

    def clock(self) -> float:
        return self.now

    def cpu_times(self) -> CpuTimes:
        return CpuTimes(self.busy, 0, 0, self.idle, 0, 0, 0, 0, 0, 0)

    def run(self, seconds: float, cpus: int, utilisation: float) -> None:
        self.now += seconds
        self.busy += seconds * cpus * utilisation
        self.idle += seconds * cpus * (1 - utilisation)


def test_power_model_integrates_utilisation_over_time() -> None:
    host = FakeHost()
    meter = ModelMeter(100.0, 300.0, host.cpu_times, host.clock)
    host.run(10, cpus=4, utilisation=0.0)
    assert meter.read() == pytest.approx(1000.0)  # idle: 100 W x 10 s
    host.run(2, cpus=4, utilisation=0.5)
    assert meter.read() == pytest.approx(1000.0 + 200.0 * 2)
    host.run(1, cpus=4, utilisation=1.0)
    assert meter.read() == pytest.approx(1400.0 + 300.0)
    assert meter.read() == pytest.approx(1700.0)  # no time passed: nothing more


def test_power_model_refuses_impossible_figures() -> None:
    with pytest.raises(ValueError, match="idle watts <= max watts"):
        ModelMeter(300.0, 100.0)


class FakeNvml:
    """nvidia-ml-py's surface: two GPUs, the second without an energy counter."""

    def __init__(self) -> None:
        self.energy_mj = [10_000, 0]
        self.power_mw = [0, 150_000]

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        if handle == 1:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return self.energy_mj[handle]

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self.power_mw[handle]


def test_nvml_reads_the_energy_counter_or_integrates_power() -> None:
    nvml, host = FakeNvml(), FakeHost()
    meter = NvmlMeter(nvml, host.clock)
    assert meter.gpus == 2 and meter.method == "nvml"
    nvml.energy_mj[0] += 250_000  # 250 J on the GPU with a counter
    host.now += 2.0  # 150 W x 2 s on the other
    assert meter.read() == pytest.approx(250.0 + 300.0)


def test_nvml_unavailable_without_a_driver() -> None:
    class NoDriver(FakeNvml):
        def nvmlInit(self) -> None:
            raise RuntimeError("NVML Shared Library Not Found")

    with pytest.raises(MeterUnavailable, match="NVML"):
        NvmlMeter(NoDriver())


def test_choose_meter_falls_back_on_the_model_and_adds_gpus(tmp_path: Path) -> None:
    no_gpu: Any = type("NoGpu", (FakeNvml,), {"nvmlDeviceGetCount": lambda self: 0})()
    assert choose_meter(50, 200, powercap=tmp_path, nvml=no_gpu).method == "model"
    make_zone(tmp_path, "intel-rapl:0", 0, 100)
    assert choose_meter(50, 200, powercap=tmp_path, nvml=no_gpu).method == "rapl"
    both = choose_meter(50, 200, powercap=tmp_path, nvml=FakeNvml())
    assert isinstance(both, SumMeter) and both.method == "rapl+nvml"
    assert choose_meter(50, 200, "model", powercap=tmp_path, nvml=no_gpu).method == "model"
    with pytest.raises(MeterUnavailable):
        choose_meter(50, 200, "rapl", powercap=tmp_path / "none", nvml=no_gpu)
    with pytest.raises(ValueError, match="unknown energy meter"):
        choose_meter(50, 200, "guess")


def test_gpus_are_counted_by_nvml() -> None:
    assert count_gpus(FakeNvml()) == 2
    assert count_gpus(type("NoGpu", (FakeNvml,), {"nvmlDeviceGetCount": lambda self: 0})()) == 0
