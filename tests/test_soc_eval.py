"""The two evaluations of battwin's own SoC published in docs/soc.md (devkit.soc_eval computes them; the
figures come from the same functions).

(a) simulated: a current-sensor offset of 1 % of 1C, partial cycles that never reach full, 30 simulated days:
    battwin stays within 3 pp of the simulator's true SoC while a plain coulomb counter drifts.
(b) real NASA logs replayed with ``battwin replay --telemetry``: during discharges, battwin's SoC against
    100 × (1 − Ah since the discharge began / that discharge's Ah to the cut-off)."""

from __future__ import annotations

import pytest

from devkit.soc_eval import NASA_EVAL_LOGS, evaluate_nasa_logs, pooled_rmse, simulate_partial_cycles
from tests.support import need_shared_data


@pytest.mark.slow
@pytest.mark.parametrize("offset_a", [0.02, -0.02], ids=["reads-high", "reads-low"])
def test_simulated_offset_and_partial_cycles_battwin_stays_within_3_pp_while_a_plain_count_drifts(
    offset_a: float,
) -> None:
    run = simulate_partial_cycles(offset_a, days=30.0)
    assert run.hours[-1] > 29.9 * 24
    assert run.max_true_pct < 90.0  # never full after the first hours: no full-charge anchor to lean on
    assert run.full_anchors == 0 and run.rest_corrections > 400
    assert run.unpublished_after(1.0) == 0  # published throughout
    battwin, plain = run.max_error()
    assert battwin <= 3.0, battwin
    assert plain > 15.0, plain  # the plain counter drifts (docs/soc.md: 21 and 41 pp)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 30 real logs replayed (~4.5 CPU-minutes here): a hang guard, not a time limit
def test_nasa_discharges_battwin_soc_rmse_figures():
    """docs/soc.md, evaluation (b): the 2 pp target is met on 16 of the 30 logs but not pooled (4.33 pp); this
    asserts the published figures with a margin, and that the target holds where the note says it does."""
    need_shared_data()
    results = {r.log: r for r in evaluate_nasa_logs(NASA_EVAL_LOGS)}
    assert sorted(results) == sorted(NASA_EVAL_LOGS)
    assert all(r.discharges for r in results.values())
    discharges = [d for r in results.values() for d in r.discharges]
    assert len(discharges) > 1900
    assert pooled_rmse(list(results.values())) <= 5.0  # published: 4.33 pp (target 2 pp: not met pooled)
    assert sum(1 for d in discharges if d.rmse_pct <= 2.0) >= 1500  # published: 1,553 of 1,948
    within = {name for name, r in results.items() if r.rmse_pct <= 2.0}
    assert len(within) >= 15, sorted(within)  # published: 16 of 30
    # the room-temperature groups with steady loads (B0025-B0032) are within the target but for B0026 (2.4 pp)
    assert {"B0025", "B0027", "B0028", "B0029", "B0030", "B0031", "B0032"} <= within
