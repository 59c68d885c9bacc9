"""A recorded Imagenette sweep of MobileNetV1 (10 classes): cut → params, MACs, accuracy of the auxiliary head."""

from __future__ import annotations

from lightning_modules.reporting.sweep import Baseline, CutPoint

# Imagenette sweep of MobileNetV1 (10 classes): cut → params, MACs, accuracy of the auxiliary head.
SWEEP = [
    CutPoint(cut=11, params=1_654_794, macs=41_300_000, acc=0.7797),
    CutPoint(cut=9, params=1_117_000, macs=35_100_000, acc=0.8097),
    CutPoint(cut=6, params=310_794, macs=22_800_000, acc=0.8115),
    CutPoint(cut=5, params=157_000, macs=15_900_000, acc=0.7917),
    CutPoint(cut=3, params=43_500, macs=9_800_000, acc=0.8092),
    CutPoint(cut=1, params=11_500, macs=4_100_000, acc=0.7623),
]


BASELINE = Baseline(params=3_217_226, macs=567_700_000, acc=0.7650)
