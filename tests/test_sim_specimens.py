"""Specimen builders: composition, field coverage, seeded randomness, vacancies, nanotube sizes."""

from __future__ import annotations

import numpy as np
import pytest

from sim_microscope.specimens import (
    SpecimenConfig,
    build_specimen,
    double_walled_nanotube,
    nanotube_diameter_angstrom,
    tmd_monolayer,
)


@pytest.mark.parametrize(
    ("formula", "metal", "chalcogen"), [("MoS2", "Mo", "S"), ("MoSe2", "Mo", "Se"), ("WS2", "W", "S"), ("WSe2", "W", "Se")]
)
def test_monolayer_stoichiometry_and_density(formula, metal, chalcogen):
    atoms = tmd_monolayer(formula, (3.0, 2.0), seed=0)
    symbols = np.array(atoms.get_chemical_symbols())
    n_metal, n_chalc = (symbols == metal).sum(), (symbols == chalcogen).sum()
    assert abs(n_chalc / n_metal - 2.0) < 0.1
    # one formula unit per sqrt(3)/2 a^2
    a = {"MoS2": 3.18, "MoSe2": 3.32, "WS2": 3.18, "WSe2": 3.28}[formula]
    expected = 30.0 * 20.0 / (np.sqrt(3) / 2 * a * a)
    assert n_metal == pytest.approx(expected, rel=0.05)
    xy = atoms.positions[:, :2]
    assert xy.min() >= 0 and xy[:, 0].max() < 30.0 and xy[:, 1].max() < 20.0
    assert atoms.cell[0, 0] == pytest.approx(30.0) and atoms.cell[1, 1] == pytest.approx(20.0)


def test_seeded_and_random():
    a = tmd_monolayer("MoS2", (2.0, 2.0), seed=5, chalcogen_vacancy_fraction=0.05)
    b = tmd_monolayer("MoS2", (2.0, 2.0), seed=5, chalcogen_vacancy_fraction=0.05)
    c = tmd_monolayer("MoS2", (2.0, 2.0), seed=6, chalcogen_vacancy_fraction=0.05)
    np.testing.assert_array_equal(a.positions, b.positions)
    assert len(a) != len(c) or not np.allclose(a.positions, c.positions)


def test_vacancy_fractions():
    full = tmd_monolayer("MoS2", (4.0, 4.0), seed=1, rotation_deg=10.0)
    holes = tmd_monolayer(
        "MoS2", (4.0, 4.0), seed=1, rotation_deg=10.0, chalcogen_vacancy_fraction=0.1, metal_vacancy_fraction=0.05
    )
    count = lambda atoms, s: int((np.array(atoms.get_chemical_symbols()) == s).sum())  # noqa: E731
    assert count(holes, "S") == round(0.9 * count(full, "S"))
    assert count(holes, "Mo") == round(0.95 * count(full, "Mo"))


def test_unknown_monolayer():
    with pytest.raises(ValueError, match="unknown monolayer"):
        tmd_monolayer("NbTe3")


def test_nanotube_diameters_match_paper():
    assert nanotube_diameter_angstrom(10, 4) == pytest.approx(9.78, abs=0.01)
    assert nanotube_diameter_angstrom(15, 9) == pytest.approx(16.44, abs=0.01)


def test_nanotube_lies_in_plane_across_field():
    tube = double_walled_nanotube(size_nm=(4.0, 4.0), rotation_deg=0.0, offset_nm=0.0, seed=0)
    z = tube.positions[:, 2]
    assert z.max() - z.min() == pytest.approx(16.44, abs=0.5)  # outer diameter, beam along z
    x = tube.positions[:, 0]
    assert x.min() < 1.0 and x.max() > 39.0  # spans the field along its axis
    y = tube.positions[:, 1]
    assert abs(y.mean() - 20.0) < 0.5 and y.max() - y.min() < 17.0


def test_build_specimen_dispatch():
    assert set(build_specimen(SpecimenConfig(kind="ws2", size_nm=(1.5, 1.5)), seed=0).get_chemical_symbols()) == {"W", "S"}
    assert set(build_specimen(SpecimenConfig(kind="dwcnt", size_nm=(2.0, 2.0)), seed=0).get_chemical_symbols()) == {"C"}
