"""An estimated on-board latency from an emulated instruction count.

QEMU counts instructions, not cycles: it models no pipeline, no flash wait states, no caches. The count
becomes a latency through one factor, cycles per instruction (CPI), fitted on one published on-board
measurement of a net whose instructions we count the same way (:data:`MLPERF_TINY_VWW`):

    CPI = published latency × clock / our instruction count,   latency(net) = instructions(net) × CPI / clock.

This is an estimate. The factor lumps together the core's real CPI (multi-cycle loads, multiply-
accumulates and branches), the board's
flash wait states, and the difference between the software measured on the board (TFLite Micro 2.3.1
with the CMSIS-NN of 2020) and ours (the TFLM and CMSIS-NN of the source archive, whose int8 kernels
execute fewer instructions). The last term makes the estimate pessimistic for our build; it is the same
factor for every net, so ratios between nets (cut@6 vs baseline) are the instruction counts' ratios.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Calibration:
    """A published on-board latency of one model and our emulated instruction count of the same model."""

    model: str
    board: str
    core: str
    clock_mhz: float
    published_ms: float
    runtime: str
    source: str
    instructions: int           # our count: same model, emulated core, the library of the source archive
    count_command: str

    @property
    def cycles(self) -> float:
        return self.published_ms * 1e3 * self.clock_mhz

    @property
    def cycles_per_instruction(self) -> float:
        return self.cycles / self.instructions

    def as_dict(self) -> dict[str, object]:
        return {**self.__dict__, "cycles_per_instruction": self.cycles_per_instruction}


#: MLPerf Tiny v0.5, closed division, reference submission (the TFLM + CMSIS-NN reference implementation):
#: visual wake words on an ST Nucleo-L4R5ZI, median throughput 1.665 inferences/s = 600.6 ms per inference
#: (github.com/mlcommons/tiny_results_v0.5, closed/reference/results/Nucleo-L4R5ZI/vww/performance/
#: results.txt; clock and software from closed/reference/systems/Nucleo_L4R5ZI_System_Description.json).
#: The model file is the benchmark's vww_96_int8.tflite (github.com/mlcommons/tiny,
#: benchmark/training/visual_wake_words/trained_models/, md5 f0b011416abee0343a5d130cb1f4c18f).
MLPERF_TINY_VWW = Calibration(
    model="MLPerf Tiny VWW reference: MobileNetV1-0.25, 96x96x3, int8 (vww_96_int8.tflite)",
    board="ST Nucleo-L4R5ZI (STM32L4R5ZI)",
    core="cortex-m4",
    clock_mhz=120.0,
    published_ms=1000.0 / 1.665,
    runtime="TensorFlow Lite Micro v2.3.1 with CMSIS-NN, GCC-ARM 6-2017-q2, mbed-os bare metal",
    source="MLPerf Tiny v0.5 closed division, reference submission, vww performance: 1.665 inf./s",
    instructions=23_778_306,    # CPI = 600.6 ms × 120 MHz / 23,778,306 = 3.03
    count_command="uv run experiments/firmware.py --tflite vww_96_int8.tflite --out outputs/firmware/vww "
                  "--run --arch cortex-m4",  # its synthetic test image: uniform over [0, 1], seed 0
)


def latency_ms(instructions: int, clock_mhz: float, calibration: Calibration = MLPERF_TINY_VWW) -> float:
    """Estimated latency (ms) of an inference of ``instructions`` at ``clock_mhz``, with the calibration's
    cycles per instruction."""
    if clock_mhz <= 0:
        raise ValueError(f"clock must be positive, got {clock_mhz} MHz")
    return instructions * calibration.cycles_per_instruction / (clock_mhz * 1e3)
