"""Energy meters of a render node: each reads the node's IT energy so far, in joules.

- ``RaplMeter``: the package zones of ``/sys/class/powercap/intel-rapl:*`` (Intel, and
  AMD on recent kernels), each counter's wraparound at ``max_energy_range_uj`` handled.
  Patched kernels make ``energy_uj`` root-only: then it is unavailable, not zero.
- ``NvmlMeter``: the node's GPUs through nvidia-ml-py, by
  ``nvmlDeviceGetTotalEnergyConsumption`` or, where a GPU does not support the
  counter, power times time between readings.
- ``ModelMeter``: P = P_idle + (P_max - P_idle) x CPU utilisation of the whole node,
  integrated between readings. This is what runs on virtual machines.

``choose_meter`` takes the measured ones the node has (RAPL for the CPUs, NVML for
the GPUs) and falls back on the model for the CPUs; the meter's ``method`` says which
(``rapl``, ``model``, ``rapl+nvml``, ``model+nvml``).

A meter is read from one thread (the node's energy ledger); readings only go up.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psutil

from scheduler.core.energy import counter_delta, model_watts

log = logging.getLogger(__name__)

POWERCAP_ROOT = Path("/sys/class/powercap")
_PACKAGE_ZONE = re.compile(r"^intel-rapl:\d+$")  # not the sub-zones intel-rapl:0:0 (core, dram)

# Defaults of the power model, per logical CPU, when the worker is not told its node's
# figures: a two-socket server of 64 threads idles near 150 W and peaks near 500 W
# under full load (the range of recent SPECpower_ssj2008 results), about 2.3 and
# 7.8 W per thread. Override with `renderfarm worker --idle-watts --max-watts`.
IDLE_WATTS_PER_CPU = 2.3
MAX_WATTS_PER_CPU = 7.8


def node_power_figures(
    idle_watts: float | None, max_watts: float | None, cpus: int | None = None
) -> tuple[float, float]:
    """(idle, full-load) watts of this host: the figures given, else the defaults per CPU."""
    cpus = cpus or psutil.cpu_count() or 1
    idle = idle_watts if idle_watts is not None else IDLE_WATTS_PER_CPU * cpus
    peak = max_watts if max_watts is not None else MAX_WATTS_PER_CPU * cpus
    return idle, max(idle, peak)


class MeterUnavailable(Exception):
    """This node has no such meter, or it cannot be read."""


class Meter(Protocol):
    method: str

    def read(self) -> float:
        """IT energy in joules since the meter was made; never decreases."""
        ...


@dataclass
class _Zone:
    energy: Path
    wraps_at: int
    last: int


class RaplMeter:
    method = "rapl"

    def __init__(self, root: Path = POWERCAP_ROOT) -> None:
        self.zones: list[_Zone] = []
        for zone in sorted(root.glob("intel-rapl:*")) if root.is_dir() else []:
            if not _PACKAGE_ZONE.match(zone.name):
                continue
            try:
                wraps_at = int((zone / "max_energy_range_uj").read_text())
                last = int((zone / "energy_uj").read_text())
            except (OSError, ValueError) as error:
                raise MeterUnavailable(f"cannot read RAPL zone {zone}: {error}") from None
            self.zones.append(_Zone(zone / "energy_uj", wraps_at, last))
        if not self.zones:
            raise MeterUnavailable(f"no RAPL package zones under {root}")
        self._joules = 0.0

    def read(self) -> float:
        for zone in self.zones:
            now = int(zone.energy.read_text())
            self._joules += counter_delta(zone.last, now, zone.wraps_at) / 1e6
            zone.last = now
        return self._joules


class NvmlMeter:
    method = "nvml"

    def __init__(
        self, nvml: Any | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if nvml is None:
            try:
                import pynvml  # nvidia-ml-py
            except ImportError:
                raise MeterUnavailable("nvidia-ml-py is not installed") from None
            nvml = pynvml
        self.nvml: Any = nvml
        self.clock = clock
        try:
            self.nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
            self.devices = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception as error:  # NVMLError and its many subclasses: no usable driver
            raise MeterUnavailable(f"NVML: {error}") from None
        if not self.devices:
            raise MeterUnavailable("NVML found no GPU")
        self._last_mj: list[int | None] = []
        for device in self.devices:
            try:
                self._last_mj.append(int(nvml.nvmlDeviceGetTotalEnergyConsumption(device)))
            except Exception:  # not supported on this GPU: integrate power instead
                self._last_mj.append(None)
        self._last_at = clock()
        self._joules = 0.0

    @property
    def gpus(self) -> int:
        return len(self.devices)

    def read(self) -> float:
        now = self.clock()
        elapsed = now - self._last_at
        self._last_at = now
        for index, device in enumerate(self.devices):
            last = self._last_mj[index]
            if last is not None:
                total = int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(device))
                self._joules += max(0, total - last) / 1000.0
                self._last_mj[index] = total
            else:
                self._joules += self.nvml.nvmlDeviceGetPowerUsage(device) / 1000.0 * elapsed
        return self._joules


CpuTimes = Callable[[], Any]  # psutil.cpu_times()-like: fields user, system, idle, ...


class ModelMeter:
    method = "model"

    def __init__(
        self,
        idle_watts: float,
        max_watts: float,
        cpu_times: CpuTimes = psutil.cpu_times,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= idle_watts <= max_watts:
            raise ValueError(f"need 0 <= idle watts <= max watts, got {idle_watts}, {max_watts}")
        self.idle_watts = idle_watts
        self.max_watts = max_watts
        self.cpu_times = cpu_times
        self.clock = clock
        self._last_busy, self._last_total = _busy_and_total(cpu_times())
        self._last_at = clock()
        self._joules = 0.0

    def read(self) -> float:
        now = self.clock()
        busy, total = _busy_and_total(self.cpu_times())
        elapsed_cpu = total - self._last_total
        utilisation = (busy - self._last_busy) / elapsed_cpu if elapsed_cpu > 0 else 0.0
        self._joules += model_watts(self.idle_watts, self.max_watts, utilisation) * max(
            0.0, now - self._last_at
        )
        self._last_busy, self._last_total, self._last_at = busy, total, now
        return self._joules


def _busy_and_total(times: Any) -> tuple[float, float]:
    fields = times._asdict()
    total = sum(fields.values()) - fields.get("guest", 0.0) - fields.get("guest_nice", 0.0)
    idle = fields.get("idle", 0.0) + fields.get("iowait", 0.0)
    return total - idle, total


def count_gpus(nvml: Any | None = None) -> int:
    """NVIDIA GPUs this host has, by NVML; 0 without a driver or nvidia-ml-py."""
    try:
        return NvmlMeter(nvml).gpus
    except MeterUnavailable:
        return 0


def gpu_memory_mib(nvml: Any | None = None) -> int:
    """The memory of this host's smallest GPU, in MiB (OpenJD's ``amount.worker.gpu.memory``:
    what each GPU has at least); 0 without a GPU that NVML can read."""
    try:
        meter = NvmlMeter(nvml)
        return min(int(meter.nvml.nvmlDeviceGetMemoryInfo(d).total) for d in meter.devices) // 2**20
    except MeterUnavailable:
        return 0
    except Exception:  # NVMLError: the memory of a GPU could not be read
        return 0


class SumMeter:
    """The sum of several meters (the CPUs' and the GPUs'), named by their methods."""

    def __init__(self, meters: Sequence[Meter]) -> None:
        self.meters = list(meters)
        self.method = "+".join(m.method for m in self.meters)

    def read(self) -> float:
        return sum(m.read() for m in self.meters)


def choose_meter(
    idle_watts: float,
    max_watts: float,
    method: str = "auto",
    powercap: Path = POWERCAP_ROOT,
    nvml: Any | None = None,
) -> Meter:
    """The best meter this node has, or the one asked for (``rapl``, ``model``; ``auto``)."""
    if method not in ("auto", "rapl", "model"):
        raise ValueError(f"unknown energy meter {method!r}: choose auto, rapl or model")
    cpu: Meter
    if method == "model":
        cpu = ModelMeter(idle_watts, max_watts)
    else:
        try:
            cpu = RaplMeter(powercap)
        except MeterUnavailable as why:
            if method == "rapl":
                raise
            log.info("energy: %s; using the power model", why)
            cpu = ModelMeter(idle_watts, max_watts)
    try:
        gpus = NvmlMeter(nvml)
    except MeterUnavailable as why:
        log.debug("energy: no GPU meter: %s", why)
        return cpu
    return SumMeter([cpu, gpus])
