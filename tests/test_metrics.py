import math

import numpy as np
import pytest

from cmbench import metrics

# T = 3; rows t = 0..3, columns = tasks in arrival order.
R = [
    [0.2, 0.3, 0.4],  # θ0
    [0.9, 0.5, 0.4],
    [0.7, 0.8, 0.6],
    [0.6, 0.7, 0.9],
]
E = [1.0, 0.875, 0.9]


def test_hand_computed():
    assert metrics.acc(R) == pytest.approx((0.6 + 0.7 + 0.9) / 3)
    # AIA: t=1: 0.9; t=2: (0.7+0.8)/2 = 0.75; t=3: 0.7333…
    assert metrics.aia(R) == pytest.approx((0.9 + 0.75 + 2.2 / 3) / 3)
    # BWT: j=1: 0.6−0.9; j=2: 0.7−0.8
    assert metrics.bwt(R) == pytest.approx(((0.6 - 0.9) + (0.7 - 0.8)) / 2)
    # FGT: j=1: max(R[1,1],R[2,1]) − R[3,1] = 0.9−0.6; j=2: max(R[2,2]) − R[3,2] = 0.8−0.7
    assert metrics.fgt(R) == pytest.approx((0.3 + 0.1) / 2)
    # FWT: j=2: R[1,2]−R[0,2] = 0.5−0.3; j=3: R[2,3]−R[0,3] = 0.6−0.4
    assert metrics.fwt(R) == pytest.approx((0.2 + 0.2) / 2)
    assert metrics.nacc(R, E) == pytest.approx((0.6 / 1.0 + 0.7 / 0.875 + 0.9 / 0.9) / 3)


def test_fgt_uses_max_over_past_rows_not_diagonal():
    R2 = [[0.0, 0.0], [0.5, 0.1], [0.4, 0.9]]
    # only j=1: max over t=1..1 = 0.5 → 0.5 − 0.4
    assert metrics.fgt(R2) == pytest.approx(0.1)
    R3 = [[0, 0, 0], [0.5, 0, 0], [0.8, 0.7, 0], [0.6, 0.7, 0.9]]
    # j=1: max(0.5, 0.8) − 0.6 = 0.2 (not 0.5 − 0.6); j=2: 0.7 − 0.7 = 0
    assert metrics.fgt(R3) == pytest.approx(0.1)
    assert metrics.bwt(R3) == pytest.approx(((0.6 - 0.5) + 0.0) / 2)


def test_nan_cells_skipped():
    nan = float("nan")
    Rn = [
        [nan, nan, nan],
        [0.9, nan, nan],
        [0.8, 0.7, nan],
        [0.6, 0.5, 0.9],
    ]
    assert metrics.acc(Rn) == pytest.approx((0.6 + 0.5 + 0.9) / 3)
    assert metrics.aia(Rn) == pytest.approx((0.9 + 0.75 + 2.0 / 3) / 3)
    assert metrics.bwt(Rn) == pytest.approx(((0.6 - 0.9) + (0.5 - 0.7)) / 2)
    assert math.isnan(metrics.fwt(Rn))  # every FWT cell is undefined
    # None (JSON null) is the same as NaN
    Rnone = [[None if isinstance(v, float) and math.isnan(v) else v for v in row] for row in Rn]
    assert metrics.all_metrics(Rnone) == pytest.approx(metrics.all_metrics(Rn), nan_ok=True)


def test_single_task_has_no_transfer_metrics():
    m = metrics.all_metrics([[0.1], [0.9]], [0.9])
    assert m["ACC"] == pytest.approx(0.9) and m["NACC"] == pytest.approx(1.0)
    assert all(math.isnan(m[k]) for k in ("BWT", "FGT", "FWT"))


def test_shape_checked():
    with pytest.raises(ValueError):
        metrics.acc(np.zeros((3, 3)))


def test_step_average():
    assert metrics.step_average(R) == pytest.approx([0.9, 0.75, 2.2 / 3])
