"""Extraction sizes chosen from the data when the fields are empty (issue 14: defaults that work on any session)."""

from __future__ import annotations

import pytest

from tomoguide.compute.ctf import electron_wavelength_A
from tomoguide.steps.extract import ExtractFineParams, ExtractParams, _even_at_least, extraction_sizes


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
        if not fine:
            assert box * voxel >= 150.0 + 2 * deloc - 1e-6
        else:  # the box 4/3 of the crop (the tutorial's 2×: time and memory grow with the box's square)
            assert box == _even_at_least(crop * 4 / 3)
        assert box >= crop * 4 / 3 - 1e-9 and crop * voxel >= 150.0
        assert box % 2 == 0 and crop % 2 == 0 and _smooth(box) and _smooth(crop)


def test_typed_values_win() -> None:
    p = ExtractParams(binning=5.0, box_px=70, crop_px=50)
    assert extraction_sizes(p, pixel_size_A=2.0, max_defocus_A=40000.0, voltage_kV=300.0, fine=False) == (5.0, 70, 50)


def test_fine_extraction_is_never_coarser_than_the_first() -> None:
    b, _, _ = extraction_sizes(ExtractFineParams(), pixel_size_A=9.0, max_defocus_A=30000.0, voltage_kV=300.0,
                               fine=True, coarse_binning=1.0)
    assert b == 1.0


@pytest.mark.parametrize(("pixel_A", "binning"), [(0.8, 3.0), (1.0, 3.0), (1.35, 2.0), (2.0, 1.0), (2.4, 1.0),
                                                  (2.7, 1.0)])
def test_fine_binning_keeps_voxels_near_the_tutorials(pixel_A: float, binning: float) -> None:
    """The finer extraction's binning gives the voxels nearest 2.7 Å (the tutorial's bin 2 on its 1.35 Å data):
    small pixels (0.8 Å: bin 2 would give 1.6 Å voxels and 500-px boxes) get bin 3; from 2 Å pixels up, bin 1
    (the refinement at full sampling, issue 19)."""
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


def test_fine_sizes_fit_the_memory() -> None:
    """The small demo (300 particles, 41 views, 2 Å pixels) on a machine allowing 11.5 GB: bin 1 with the 192 Å crop
    (96 px, box 128: about 8.5 GB; the 256 Å crop would take 27 GB); 1200 particles (the full preset): bin 2 with
    the 192 Å crop (the 256 Å one: 11.7 GB); a tiny budget: the first extraction's binning at the least."""
    from tomoguide.steps.extract import refine_memory_bytes

    kw = dict(pixel_size_A=2.0, max_defocus_A=45000.0, voltage_kV=300.0, fine=True, coarse_binning=4.0, n_views=41,
              memory_bytes=11_500_000_000)
    assert extraction_sizes(ExtractFineParams(), n_particles=300, **kw) == (1.0, 128, 96)
    assert refine_memory_bytes(300, 41, 128, 96) < 11.5e9 < refine_memory_bytes(300, 41, 180, 128)
    assert extraction_sizes(ExtractFineParams(), n_particles=1200, **kw) == (2.0, 64, 48)
    assert extraction_sizes(ExtractFineParams(), n_particles=300, **{**kw, "memory_bytes": 1000})[0] == 4.0
    # without the particles' count: the sizes for the pixel size alone; typed values are never changed
    assert extraction_sizes(ExtractFineParams(), pixel_size_A=2.0, max_defocus_A=45000.0, voltage_kV=300.0,
                            fine=True, coarse_binning=4.0) == (1.0, 180, 128)
    assert extraction_sizes(ExtractFineParams(binning=1.0, crop_px=128), n_particles=300, **kw)[::2] == (1.0, 128)
