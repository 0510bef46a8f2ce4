"""Readers, cleaning and splits on the real shared data (gaps, missing and zero capacities)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from device_agent.health.capacity_cleaning import causal_clean, clean_series
from device_agent.health.fade_law import CapacityPoint
from device_agent.health.model_files import CleaningSpec
from ml.data import (
    CellFileError,
    read_bms_log,
    read_cell_csv,
    read_cells_dir,
    scorability,
    unscorable_cells,
)
from ml.offline_cleaning import clean_cell
from ml.splitting import Split, fingerprint, split_cells
from tests.ml.ml_support import CELLS, need_cells
from tests.support import IN_CI, NASA_LOGS


@pytest.fixture(autouse=True)
def _data() -> None:
    need_cells()


def test_reads_nasa_cell_with_zero_capacities():
    cell = read_cell_csv(CELLS / "nasa" / "B0045.csv")
    assert (cell.dataset, cell.cell, len(cell)) == ("nasa", "B0045", 72)
    assert int((cell.capacity_ah == 0).sum()) == 2  # two failed runs read exactly 0 Ah
    assert int(cell.valid.sum()) == 70
    assert cell.temperature_c is not None and set(np.unique(cell.temperature_c)) == {4.0}
    assert cell.elapsed_h is not None and np.all(np.diff(cell.elapsed_h) > 0)
    pts = cell.points()
    assert len(pts) == 70 and all(p.capacity_ah > 0 for p in pts)
    assert [p.cycle for p in pts] == sorted(p.cycle for p in pts)


def test_reads_missing_capacities_as_nan():
    cell = read_cell_csv(CELLS / "nasa" / "B0052.csv")
    assert int(np.isnan(cell.capacity_ah).sum()) == 21
    assert int(cell.valid.sum()) == 4
    assert cell.c0() == pytest.approx(float(np.median(cell.capacity_ah[cell.valid][:5])))


def test_cycle_gaps_are_kept(tmp_path):
    src = (CELLS / "xjtu" / "XJTU_2C_battery-1.csv").read_text().splitlines()
    kept = [src[0]] + [line for i, line in enumerate(src[1:]) if i % 7 in (0, 3)]  # every 7th cycle twice
    p = tmp_path / "gappy.csv"
    p.write_text("\n".join(kept) + "\n")
    cell = read_cell_csv(p)
    gaps = np.diff(cell.cycles)
    assert set(np.unique(gaps)) == {3.0, 4.0}
    assert cell.nominal_ah == 2.0
    assert [q.cycle for q in cell.points()] == cell.cycles.tolist()


def _write(tmp_path: Path, text: str, name: str = "c.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("cycle,capacity\n1,1.0\n", "missing required column"),
        ("cycle,capacity_ah\n1,1.0\n1,0.9\n", "does not increase"),
        ("cycle,capacity_ah\n1,1.0\n2.5,0.9\n", "not an integer"),
        ("cycle,capacity_ah\n1,1.0\n2,abc\n", "not a number"),
        ("", "empty file"),
        ("cycle,capacity_ah\n", "no data rows"),
    ],
)
def test_contract_violations_are_typed_errors(tmp_path, text, match):
    with pytest.raises(CellFileError, match=match):
        read_cell_csv(_write(tmp_path, text))


def test_empty_and_na_tokens_are_missing(tmp_path):
    cell = read_cell_csv(_write(tmp_path, "cycle,capacity_ah,extra\n1,1.0,x\n2,,y\n3,NaN,z\n5,0,\n6,0.9,w\n"))
    assert cell.cycles.tolist() == [1, 2, 3, 5, 6]
    assert np.isnan(cell.capacity_ah[1]) and np.isnan(cell.capacity_ah[2])
    assert cell.valid.tolist() == [True, False, False, False, True]


def test_folder_errors(tmp_path):
    with pytest.raises(CellFileError, match="no such directory"):
        read_cells_dir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CellFileError, match=r"no \*\.csv"):
        read_cells_dir(tmp_path / "empty")


def test_bms_log_through_the_device_tracker_matches_the_lab():
    if not NASA_LOGS.is_dir():
        if IN_CI:
            pytest.fail(f"raw NASA logs missing at {NASA_LOGS}", pytrace=False)
        pytest.skip("raw NASA logs not present")
    lab = read_cell_csv(CELLS / "nasa" / "B0025.csv")
    dev = read_bms_log(NASA_LOGS / "B0025.csv.gz")
    assert dev.cell == "B0025"
    lab_by_cycle = dict(zip(lab.cycles.tolist(), lab.capacity_ah.tolist(), strict=True))
    rel = [
        abs(c - lab_by_cycle[cy]) / lab_by_cycle[cy]
        for cy, c in zip(dev.cycles, dev.capacity_ah, strict=True)
        if math.isfinite(c) and cy in lab_by_cycle
    ]
    assert len(rel) >= 25
    assert float(np.median(rel)) < 2.5e-5  # README: a median error under 0.0025 % per cell
    assert dev.temperature_c is not None and np.nanmin(dev.temperature_c) > 15  # cell temperatures, measured


def test_cleaning_labels_real_failures():
    b42 = clean_cell(read_cell_csv(CELLS / "nasa" / "B0042.csv"))
    counts = b42.counts()
    # the zero-capacity run is not a valid row; the block of 4 °C high-current runs (~0.07 Ah, 46+ runs)
    # is an excursion the cell returns from
    assert len(b42.cycles) == 111
    assert counts["excursion"] >= 40
    assert np.all(b42.capacity_ah[b42.ok] > 1.0)
    b41 = clean_cell(read_cell_csv(CELLS / "nasa" / "B0041.csv"))
    assert b41.counts()["low_regime"] == 42  # it starts in a low regime and leaves it for good
    clean = clean_cell(read_cell_csv(CELLS / "nasa" / "B0025.csv"))
    assert clean.ok.mean() > 0.9


def test_causal_cleaning_rules():
    rules = CleaningSpec()
    # one failed run is dropped; three in a row are a level shift; back up = return from the excursion
    caps = [2.0, 1.99, 1.98, 0.1, 1.97, 1.96, 0.1, 0.11, 0.1, 0.1, 1.9, 1.89]
    st = clean_series(caps, rules)
    assert st.label[3] == "failed"
    assert st.label[6:10] == ["excursion"] * 4
    assert st.kept == [0, 1, 2, 4, 5, 10, 11]
    # during the excursion the device sees the low level (a sustained drop is reported, not hidden)
    mid = clean_series(caps[:9], rules)
    assert mid.kept == [6, 7, 8]
    pts = [CapacityPoint(float(i + 1), c) for i, c in enumerate(caps)]
    assert [p.capacity_ah for p in causal_clean(pts, rules)] == [2.0, 1.99, 1.98, 1.97, 1.96, 1.9, 1.89]
    # a drop from a start-up regime is not a return: a cell that starts low and rises stays up
    up = clean_series([1.0, 1.8, 1.8, 1.79, 1.78, 0.5], rules)
    assert up.kept == [1, 2, 3, 4] and up.label[0] == "ok" and up.label[5] == "failed"
    # invalid points never reach the cleaner
    bad = [
        CapacityPoint(1, 2.0),
        CapacityPoint(2, math.nan),
        CapacityPoint(3, 0.0),
        CapacityPoint(3, 1.9),
        CapacityPoint(2, 1.9),
        CapacityPoint(4, 1.95),
    ]
    assert [p.cycle for p in causal_clean(bad, rules)] == [1, 3, 4]


def test_a_dip_in_a_history_is_left_out_once_later_capacities_show_it():
    """A capacity recorded at a fraction of the cell's (between ``low_frac`` and 1 − ``dip_frac``, which the
    failed-run rule keeps) is left out once the capacities after it are back; the newest one is not judged, and
    stays once the next one confirms a lower level; a 5 % dip and a regeneration jump stay; ``dip_frac`` None
    turns the rule off."""
    rules = CleaningSpec()
    assert rules.dip_frac == 0.1
    caps = [2.0, 1.99, 1.98, 1.97, 1.4, 1.96, 1.95, 2.05, 1.94, 1.85, 1.93, 1.5]
    pts = [CapacityPoint(float(i + 1), c) for i, c in enumerate(caps)]
    kept = [p.capacity_ah for p in causal_clean(pts, rules)]
    # 1.4 (70 %) goes; 1.85 (5 % low) and 2.05 (a jump up) stay; the newest, 1.5, has nothing after it yet
    assert kept == [2.0, 1.99, 1.98, 1.97, 1.96, 1.95, 2.05, 1.94, 1.85, 1.93, 1.5]
    # the next capacity is as low: 1.5 was a lower level, not a dip, and stays
    lower = [*pts, CapacityPoint(13.0, 1.52)]
    assert [p.capacity_ah for p in causal_clean(lower, rules)][-2:] == [1.5, 1.52]
    # back up instead: 1.5 was a dip
    back = [*pts, CapacityPoint(13.0, 1.93)]
    assert [p.capacity_ah for p in causal_clean(back, rules)][-2:] == [1.93, 1.93]
    assert 1.4 in [p.capacity_ah for p in causal_clean(pts, rules.model_copy(update={"dip_frac": None}))]
    # two failed readings in a row are both dips (the medians of five on each side do not follow them)
    two = [2.0, 1.99, 1.98, 1.97, 1.96, 1.2, 1.3, 1.95, 1.94, 1.93, 1.92, 1.91]
    assert [
        p.capacity_ah for p in causal_clean([CapacityPoint(float(i + 1), c) for i, c in enumerate(two)], rules)
    ] == [c for c in two if c > 1.5]


def test_split_is_by_whole_cells_and_seeded():
    cells = read_cells_dir(CELLS / "nasa") + read_cells_dir(CELLS / "xjtu")
    sp = split_cells(cells, 0.25, 0.15, seed=0)
    for ds in ("nasa", "xjtu"):
        tr, va, te = set(sp.train[ds]), set(sp.val[ds]), set(sp.test[ds])
        assert not (tr & va) and not (tr & te) and not (va & te)
        assert tr | va | te == {c.cell for c in cells if c.dataset == ds}
        assert tr and te
    assert split_cells(cells, 0.25, 0.15, seed=0) == sp
    assert split_cells(cells, 0.25, 0.15, seed=1).test != sp.test
    assert len(sp.test["nasa"]) == 5  # one from each block of 4 of NASA's 20 scorable cells (sorted by name)
    unscorable = set(unscorable_cells(cells)["nasa"])
    for seed in range(5):  # whatever the seed, an unscorable cell only ever trains
        s = split_cells(cells, 0.25, 0.15, seed=seed, test_frac_by_dataset={"nasa": 0.5})
        assert len(s.test["nasa"]) == 10 and len(s.test["xjtu"]) == len(sp.test["xjtu"])
        assert not unscorable & (set(s.test["nasa"]) | set(s.val["nasa"]))
        assert unscorable <= set(s.train["nasa"])
    with pytest.raises(ValueError, match="test_frac_by_dataset"):
        split_cells(cells, 0.25, 0.15, seed=0, test_frac_by_dataset={"nasa": 1.0})


def test_scorability_names_the_nasa_cells_whose_contract_soh_is_no_state_of_health():
    cells = read_cells_dir(CELLS / "nasa")
    verdict = {c.cell: scorability(c) for c in cells}
    bad = sorted(n for n, v in verdict.items() if not v.ok)
    # C0 from runs under other conditions (B0033, B0038-41), blocks of cold high-current runs at ~0.07 Ah
    # (B0042-44), failed runs (B0050), 4 valid rows (B0052)
    assert bad == ["B0033", "B0038", "B0039", "B0040", "B0041", "B0042", "B0043", "B0044", "B0050", "B0052"]
    assert "valid rows (< 20)" in verdict["B0052"].reason
    assert "outside [0.5, 1.2]" in verdict["B0039"].reason and verdict["B0039"].frac_outside > 0.5
    assert verdict["B0055"].ok and verdict["B0055"].reason == "ok"
    # the other datasets' cells are all scorable (checked on a sample of each)
    for ds in ("tju", "hust", "mit", "xjtu"):
        assert all(scorability(c).ok for c in read_cells_dir(CELLS / ds, limit=15))


def test_scorability_is_decided_by_the_data_alone(tmp_path):
    d = tmp_path / "lab"
    d.mkdir()
    fade = "\n".join(f"{i},{2.0 - 0.002 * i:.4f}" for i in range(1, 41))
    (d / "good.csv").write_text("cycle,capacity_ah\n" + fade + "\n")
    # the first five rows were measured under other conditions: C0 = 0.5 Ah, later rows read "SoH" 3.9
    odd = "\n".join(f"{i},{0.5 if i <= 5 else 1.95:.4f}" for i in range(1, 41))
    (d / "odd.csv").write_text("cycle,capacity_ah\n" + odd + "\n")
    cells = {c.cell: c for c in read_cells_dir(d)}
    assert scorability(cells["good"]).ok
    s = scorability(cells["odd"])
    assert not s.ok and s.frac_outside == pytest.approx(35 / 40)


def test_fingerprint_is_content_based(tmp_path):
    src = CELLS / "nasa"
    a = tmp_path / "a" / "nasa"
    a.mkdir(parents=True)
    for n in ("B0025", "B0026", "B0027", "B0028"):
        shutil.copyfile(src / f"{n}.csv", a / f"{n}.csv")
    cells = read_cells_dir(a)
    sp = split_cells(cells, 0.25, 0.0, seed=0)
    fp = fingerprint(cells, sp)
    b = tmp_path / "elsewhere" / "nasa"
    shutil.copytree(a, b)
    assert fingerprint(read_cells_dir(b), sp) == fp  # paths do not matter
    text = (b / "B0026.csv").read_text().replace("1.81", "1.82", 1)
    (b / "B0026.csv").write_text(text)
    assert fingerprint(read_cells_dir(b), sp) != fp  # contents do
    other = Split(train={"nasa": ["B0025", "B0026", "B0027"]}, val={"nasa": []}, test={"nasa": ["B0028"]})
    assert other != sp
    assert fingerprint(cells, other) != fp  # and the cell lists
