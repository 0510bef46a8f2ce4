"""battwin's own state of charge, computed independently of the BMS (``Sample.soc_est_pct``).

One job per module: :mod:`.ocv` the open-circuit-voltage tables of each chemistry, :mod:`.kalman` the scalar
blend of coulomb counting and corrections, :mod:`.estimator` the per-sample logic (rests, full charge, gaps,
the capacity used). The method and its evaluations: docs/soc.md.
"""

from device_agent.soc.estimator import SocEstimator, latest_capacity
from device_agent.soc.kalman import SocFilter
from device_agent.soc.ocv import OCV_TABLES, OcvTable

__all__ = ["OCV_TABLES", "OcvTable", "SocEstimator", "SocFilter", "latest_capacity"]
