"""Extraction sizes chosen from the data when the fields are empty (issue 14: defaults that work on any session)."""

from __future__ import annotations

import pytest

from tomoguide.compute.ctf import electron_wavelength_A
from tomoguide.steps.extract import ExtractFineParams, ExtractParams, extraction_sizes


def _smooth(n: int) -> bool:
    for f in (2, 3, 5):
        while n % f == 0:
            n //= f
    return n == 1


def test_tutorial_data_gets_the_tutorial_binnings() -> None:
    """The tutorial's data (1.35 Å pixels): bin 6 (8.1 Å voxels) first, then bin 2, as its text says."""
    b1, box1, crop1 = extraction_sizes(ExtractParams(), pixel_size_A=1.35, max_defocus_A=40000.0, voltage_kV=300.0,
                                       fine=False)
    b2, box2, crop2 = extraction_sizes(ExtractFineParams(), pixel_size_A=1.35, max_defocus_A=40000.0,
                                       voltage_kV=300.0, fine=True, coarse_binning=b1)
    assert (b1, b2) == (6.0, 2.0)
    assert crop1 * b1 * 1.35 == pytest.approx(288.0, rel=0.08)
    assert crop2 * b2 * 1.35 == pytest.approx(256.0, rel=0.08)


@pytest.mark.parametrize("pixel_A", [1.0, 1.35, 1.7, 2.0, 2.4, 3.1])
@pytest.mark.parametrize("defocus_A", [15000.0, 40000.0, 60000.0])
def test_boxes_hold_the_particle_and_the_ctf_delocalisation(pixel_A: float, defocus_A: float) -> None:
    for fine, P in ((False, ExtractParams), (True, ExtractFineParams)):
        binning, box, crop = extraction_sizes(P(), pixel_size_A=pixel_A, max_defocus_A=defocus_A, voltage_kV=300.0,
                                              fine=fine, coarse_binning=6.0 if fine else None)
        voxel = pixel_A * binning
        if not fine:
            assert abs(voxel - 8.1) <= pixel_A / 2 + 1e-9 or binning == 1.0  # the closest binning to 8.1 Å
        deloc = electron_wavelength_A(300.0) * defocus_A / (2 * voxel)  # λ Δf k at Nyquist
        assert box * voxel >= 150.0 + 2 * deloc - 1e-6
        assert box >= crop * 4 / 3 - 1e-9 and crop * voxel >= 150.0
        assert box % 2 == 0 and crop % 2 == 0 and _smooth(box) and _smooth(crop)


def test_typed_values_win() -> None:
    p = ExtractParams(binning=5.0, box_px=70, crop_px=50)
    assert extraction_sizes(p, pixel_size_A=2.0, max_defocus_A=40000.0, voltage_kV=300.0, fine=False) == (5.0, 70, 50)


def test_fine_extraction_is_never_coarser_than_the_first() -> None:
    b, _, _ = extraction_sizes(ExtractFineParams(), pixel_size_A=9.0, max_defocus_A=30000.0, voltage_kV=300.0,
                               fine=True, coarse_binning=1.0)
    assert b == 1.0


@pytest.mark.parametrize(("pixel_A", "binning"), [(0.8, 3.0), (1.0, 3.0), (1.35, 2.0), (2.0, 2.0), (2.4, 2.0),
                                                  (2.7, 1.0)])
def test_fine_binning_keeps_voxels_near_the_tutorials(pixel_A: float, binning: float) -> None:
    """The finer extraction's bin 2 (2.7 Å voxels on the tutorial's 1.35 Å data) where it gives 2.4-5 Å voxels;
    small pixels (0.8 Å: bin 2 would give 1.6 Å voxels and 500-px boxes) and large ones (2.7 Å: bin 2 = 5.4 Å,
    hardly finer than the first extraction) get the binning nearest 2.7 Å."""
    coarse, _, _ = extraction_sizes(ExtractParams(), pixel_size_A=pixel_A, max_defocus_A=40000.0, voltage_kV=300.0,
                                    fine=False)
    b, box, _ = extraction_sizes(ExtractFineParams(), pixel_size_A=pixel_A, max_defocus_A=40000.0,
                                 voltage_kV=300.0, fine=True, coarse_binning=coarse)
    assert b == binning and 2.0 <= b * pixel_A <= 5.0 and box <= 256


def test_a_typed_box_smaller_than_the_automatic_crop_is_not_cropped() -> None:
    """Box 32 typed, crop empty (automatic 36 at 8.1 Å voxels): the crop follows the box, no refusal at run."""
    b, box, crop = extraction_sizes(ExtractParams(box_px=32), pixel_size_A=2.0, max_defocus_A=40000.0,
                                    voltage_kV=300.0, fine=False)
    assert (box, crop) == (32, 32)
