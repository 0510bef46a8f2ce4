"""What the dashboard's pages show, assembled from the API (and nothing else).

:class:`DashboardData` reads ``/devices``, ``/devices/{thing}`` and ``/devices/{thing}/history`` and keeps,
per thing, the cycle, health and alarm records it has already read, so each poll only asks the API for
the newest records (``history?kind=…&from=<ts of the 50th-newest one>``). Derived values are computed here,
in one place, and documented where the UI shows them:

* measured SoH of a discharge = its capacity / C0 (C0 = ``initial_capacity_ah`` of the newest Health);
* an **anomaly** is a complete discharge whose capacity lies more than 4 robust standard deviations
  (1.4826 × MAD of all residuals, at least 1 % of C0) from the median of its 4 neighbours on each side
  (so a discharge is judged once 4 more have followed it);
* the temperature distribution groups the discharges into at most 12 consecutive bins and gives, per
  bin, the five-number summary of the cycles' mean temperature and the highest peak temperature.
"""

from __future__ import annotations

import logging
import math
import statistics
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cloud.dashboard.api_client import ApiClient, ApiClientError, device_path, get_json
from cloud.dashboard.fleet_view import MAX_OVERVIEW_BYTES, overview
from schema.messages import ANOMALY_CODES

log = logging.getLogger("battwin.dashboard.views")

TELEMETRY_MESSAGES = 12  # newest telemetry messages read per poll of a battery page
LIVE_SAMPLES = 480  # at most this many samples in the live chart
MAX_PAGES = 50  # pages of one history read per poll (1000 items each)
MAX_RECORDS = 20_000  # records kept per thing and kind
REREAD_RECORDS = 50  # each poll reads again from the 50th-newest record of a kind
TEMPERATURE_BINS = 12
ANOMALY_WINDOW = 4
ANOMALY_SIGMAS = 4.0
FORECAST_SPAN = 4.0


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass
class _KindCache:
    items: dict[str, dict[str, Any]] = field(default_factory=dict)  # id → history item, in arrival order

    def add(self, batch: Iterable[dict[str, Any]]) -> int:
        added = 0
        for item in batch:
            key = str(item.get("id"))
            if key in self.items:
                continue
            self.items[key] = item
            added += 1
        while len(self.items) > MAX_RECORDS:
            del self.items[next(iter(self.items))]
        return added

    def since(self) -> float:
        """Where the next read starts: a few records back, so one stored late (concurrent ingest) is not missed."""
        if len(self.items) <= REREAD_RECORDS:
            return 0.0
        stamps = sorted((_num(it.get("ts")) or 0.0) for it in self.items.values())
        return stamps[-REREAD_RECORDS]

    def sorted(self) -> list[dict[str, Any]]:
        return sorted(self.items.values(), key=lambda it: (_num(it.get("ts")) or 0.0, str(it.get("id"))))


@dataclass
class _ThingCache:
    first_seen: Any = None
    kinds: dict[str, _KindCache] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class DashboardData:
    def __init__(self, api: ApiClient) -> None:
        self.api = api
        self._things: dict[str, _ThingCache] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dashboard-api")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- fleet ------------------------------------------------------------------------------------
    def _summaries(self) -> list[dict[str, Any]]:
        summaries: list[dict[str, Any]] = []
        token: str | None = None
        for _ in range(MAX_PAGES):
            query = {"limit": "1000", **({"next": token} if token else {})}
            page = get_json(self.api, "/devices", query)
            summaries.extend(page.get("items") or [])
            token = page.get("next")
            if not token:
                break
        return summaries

    def fleet(self) -> dict[str, Any]:
        summaries = self._summaries()
        details = list(self._pool.map(self._detail_or_none, [s["thing"] for s in summaries]))
        rows = [fleet_row(s, d) for s, d in zip(summaries, details, strict=True)]
        return {"items": rows, "generated_at": time.time(), "api": self.api.description}

    def _detail_or_none(self, thing: str) -> dict[str, Any] | None:
        try:
            return get_json(self.api, device_path(thing))
        except ApiClientError as exc:
            log.info("device detail unavailable", extra={"thing": thing, "status": exc.status})
            return None

    # -- one battery ------------------------------------------------------------------------------
    def thing(self, thing: str) -> dict[str, Any]:
        detail = get_json(self.api, device_path(thing))
        cycles, health, alarms = self._records(thing, detail, ("cycles", "health", "alarms"))
        telemetry = get_json(
            self.api,
            device_path(thing, "history"),
            {"kind": "telemetry", "order": "desc", "limit": str(TELEMETRY_MESSAGES)},
        )
        return battery_view(detail, telemetry.get("items") or [], cycles, health, alarms)

    def _records(self, thing: str, detail: dict[str, Any], kinds: tuple[str, ...]) -> list[list[dict[str, Any]]]:
        """The thing's records of each kind (oldest first), read incrementally into the cache."""
        with self._lock:
            cache = self._things.setdefault(thing, _ThingCache())
        with cache.lock:
            if cache.first_seen != detail.get("first_seen"):  # a new device under this name: start afresh
                cache.first_seen = detail.get("first_seen")
                cache.kinds = {}
            out = []
            for kind in kinds:
                kc = cache.kinds.setdefault(kind, _KindCache())
                kc.add(self._history_since(thing, kind, kc.since()))
                out.append([_record(it) for it in kc.sorted()])
        return out

    # -- the fleet's overview ------------------------------------------------------------------------
    def fleet_overview(self, max_bytes: int = MAX_OVERVIEW_BYTES) -> dict[str, Any]:
        """The fleet view's charts: SoH histogram, batteries ranked by RUL, every fade curve, alarms over time."""
        summaries = self._summaries()
        things = [str(s["thing"]) for s in summaries]
        details = list(self._pool.map(self._detail_or_none, things))
        records = list(self._pool.map(self._fade_and_alarms, things, details))
        return {**overview(summaries, details, records, max_bytes), "api": self.api.description}

    def _fade_and_alarms(
        self, thing: str, detail: dict[str, Any] | None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        if detail is None:
            return [], []
        try:
            cycles, alarms = self._records(thing, detail, ("cycles", "alarms"))
        except ApiClientError as exc:
            log.info("history unavailable", extra={"thing": thing, "status": exc.status})
            return [], []
        return cycles, alarms

    def _history_since(self, thing: str, kind: str, since: float) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        token: str | None = None
        query = {"kind": kind, "order": "asc", "limit": "1000", "from": repr(since)}
        for _ in range(MAX_PAGES):
            page = get_json(self.api, device_path(thing, "history"), {**query, **({"next": token} if token else {})})
            out.extend(page.get("items") or [])
            token = page.get("next")
            if not token:
                break
        return out


def _body(item: dict[str, Any]) -> dict[str, Any]:
    body = item.get("body")
    return body if isinstance(body, dict) else {}


def _record(item: dict[str, Any]) -> dict[str, Any]:
    body = _body(item)
    return {**body, "_id": item.get("id"), "_ts": item.get("ts"), "_simulated": item.get("simulated")}


def fleet_row(summary: dict[str, Any], detail: dict[str, Any] | None) -> dict[str, Any]:
    detail = detail or {}
    sample = detail.get("latest_sample") or {}
    health = detail.get("health") or {}
    alarms = detail.get("alarms") or []
    return {
        "thing": summary.get("thing"),
        "simulated": summary.get("simulated"),
        "source": sample.get("source_id") or health.get("source_id"),
        "soh": summary.get("soh"),
        "rul_cycles": summary.get("rul_cycles"),
        "capacity_ah": summary.get("capacity_ah"),
        "cycle_index": summary.get("cycle_index"),
        "health_method": summary.get("health_method"),
        "temperature_c": summary.get("temperature_c"),
        "voltage_v": summary.get("voltage_v"),
        "current_a": summary.get("current_a"),
        "last_seen": summary.get("last_seen"),
        "open_alarms": [
            {"code": a.get("code"), "severity": a.get("severity"), "message": a.get("message")} for a in alarms
        ]
        or [{"code": c, "severity": None, "message": None} for c in summary.get("open_alarms") or []],
    }


def live_series(telemetry_items: list[dict[str, Any]]) -> dict[str, Any]:
    samples: dict[float, dict[str, Any]] = {}
    for item in telemetry_items:
        for s in _body(item).get("samples") or []:
            ts = _num(s.get("ts"))
            if ts is not None:
                samples[ts] = s
    ordered = [samples[k] for k in sorted(samples)][-LIVE_SAMPLES:]

    def temp(s: dict[str, Any]) -> float | None:
        temps = [t for t in (_num(x) for x in s.get("temperatures_c") or []) if t is not None]
        return sum(temps) / len(temps) if temps else None

    return {
        "ts": [s["ts"] for s in ordered],
        "voltage_v": [_num(s.get("voltage_v")) for s in ordered],
        "current_a": [_num(s.get("current_a")) for s in ordered],
        "temperature_c": [temp(s) for s in ordered],
        "soc_pct": [_num(s.get("soc_pct")) for s in ordered],
        "soc_est_pct": [_num(s.get("soc_est_pct")) for s in ordered],
    }


def find_anomalies(points: list[tuple[float, float]], c0: float | None) -> list[int]:
    """Indices into ``points`` (cycle, capacity) that are capacity anomalies (see the module docstring).

    A discharge is judged once it has ``ANOMALY_WINDOW`` neighbours on each side, so the newest few wait
    for the next cycles, and the steep first cycles of a fade are not mistaken for anomalies.
    """
    w = ANOMALY_WINDOW
    if len(points) < 2 * w + 1:
        return []
    caps = [c for _, c in points]
    judged = range(w, len(caps) - w)
    residuals = {k: caps[k] - statistics.median(caps[k - w : k] + caps[k + 1 : k + w + 1]) for k in judged}
    mad = statistics.median(abs(r) for r in residuals.values())
    scale = max(1.4826 * mad, 0.01 * (c0 or statistics.median(caps)) / ANOMALY_SIGMAS)
    return [k for k, r in residuals.items() if abs(r) > ANOMALY_SIGMAS * scale]


def _quartiles(values: list[float]) -> dict[str, float]:
    vs = sorted(values)
    if len(vs) == 1:
        q1 = med = q3 = vs[0]
    else:
        q1, med, q3 = statistics.quantiles(vs, n=4, method="inclusive")
    return {"min": vs[0], "q1": q1, "median": med, "q3": q3, "max": vs[-1]}


def temperature_bins(discharges: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = [d for d in discharges if _num(d.get("mean_temperature_c")) is not None]
    if not rows:
        return []
    size = max(1, math.ceil(len(rows) / TEMPERATURE_BINS))
    bins = []
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        means = [float(d["mean_temperature_c"]) for d in chunk]
        peaks = [p for p in (_num(d.get("max_temperature_c")) for d in chunk) if p is not None]
        bins.append(
            {
                "first_cycle": chunk[0].get("index"),
                "last_cycle": chunk[-1].get("index"),
                "n": len(chunk),
                "mean_c": _quartiles(means),
                "peak_c": max(peaks) if peaks else None,
            }
        )
    return bins


def shown_forecast(health: dict[str, Any] | None, last_cycle: float) -> dict[str, Any]:
    """The newest forecast up to where it crosses the EOL threshold or, if it does not within its horizon,
    up to ``FORECAST_SPAN`` × the cycles seen so far (at least 50 cycles ahead): the device forecasts up to
    ``health.forecast_max_cycles`` (5000), which would squeeze the measured history into a sliver.

    ``soh_lo`` / ``soh_hi``: the 80 % interval of each shown point as the message carries it (None where a
    point has none: a message from before the intervals)."""

    raw = (health or {}).get("forecast") or []
    points = [
        (float(p["cycle"]), float(p["soh"]), _num(p.get("soh_lo")), _num(p.get("soh_hi")))
        for p in raw
        if isinstance(p, dict) and _num(p.get("cycle")) is not None and _num(p.get("soh")) is not None
    ]
    eol = _num((health or {}).get("eol_threshold"))
    crossing = next((k for k, p in enumerate(points) if eol is not None and p[1] <= eol), None)
    if crossing:  # crosses ahead; a battery already past EOL (crossing == 0) still shows its trajectory
        shown = points[: crossing + 1]
    else:
        limit = max(last_cycle * FORECAST_SPAN, last_cycle + 50.0)
        shown = [p for p in points if p[0] <= limit]
    return {
        "cycle": [p[0] for p in shown],
        "soh": [p[1] for p in shown],
        "soh_lo": [p[2] for p in shown],
        "soh_hi": [p[3] for p in shown],
        "truncated_at": shown[-1][0] if shown and len(shown) < len(points) else None,
        "horizon": points[-1][0] if points else None,
    }


def rul_range(health: dict[str, Any] | None) -> dict[str, float | None] | None:
    """The RUL percentiles of the health record (p10, p50, p90 in cycles; p90 None = beyond the forecast
    horizon), or None when the record has none (a device from before the intervals)."""
    h = health or {}
    p10, p50, p90 = (_num(h.get(f"rul_cycles_{q}")) for q in ("p10", "p50", "p90"))
    if p10 is None:
        return None
    return {"p10": p10, "p50": p50, "p90": p90}


def eol_band(fit_params: Any) -> dict[str, float] | None:
    """The hybrid model's EOL band, from the health record's fit parameters: the EOL is where the forecast
    lowered by ``sigmas`` × the cell's scatter (in log capacity) crosses the threshold. None without one."""
    if not isinstance(fit_params, dict):
        return None
    k, scatter = _num(fit_params.get("eol_band_sigmas")), _num(fit_params.get("scatter_log"))
    if k is None or scatter is None or k <= 0 or scatter <= 0:
        return None
    return {"sigmas": k, "scatter_log": scatter, "lowered_by": 1.0 - math.exp(-k * scatter)}


#: the device's anomaly alarms (schema.messages.AnomalyCode): drawn as anomaly markers on the timeline, with their
#: evidence
ANOMALY_ALARM_CODES: frozenset[str] = ANOMALY_CODES


def alarm_events(alarms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Alarm records (oldest first) with their meaning: ``raised``, ``cleared`` (an inactive record after a
    raise of the same code) or ``event`` (an inactive record with nothing open: a one-off such as
    ``config_rejected`` or ``spool_dropped``). ``anomaly`` marks the device's anomaly alarms
    (device_agent.health.anomalies), whose ``details`` carry their evidence; the timeline shows both."""
    open_codes: set[str] = set()
    out: list[dict[str, Any]] = []
    for a in alarms:
        code = str(a.get("code"))
        if a.get("active"):
            state = "raised"
            open_codes.add(code)
        elif code in open_codes:
            state = "cleared"
            open_codes.discard(code)
        else:
            state = "event"
        out.append(
            {
                "ts": a.get("ts"),
                "code": code,
                "severity": a.get("severity"),
                "active": bool(a.get("active")),
                "state": state,
                "message": a.get("message"),
                "anomaly": code in ANOMALY_ALARM_CODES,
                "details": a.get("details") if isinstance(a.get("details"), dict) else {},
            }
        )
    return out


def battery_view(
    detail: dict[str, Any],
    telemetry_items: list[dict[str, Any]],
    cycles: list[dict[str, Any]],
    health: list[dict[str, Any]],
    alarms: list[dict[str, Any]],
) -> dict[str, Any]:
    latest = health[-1] if health else (detail.get("health") or None)
    c0 = _num((latest or {}).get("initial_capacity_ah"))
    discharges = [c for c in cycles if c.get("kind") == "discharge"]
    measured = [
        c for c in discharges if c.get("complete") and _num(c.get("capacity_ah")) is not None and c["capacity_ah"] > 0
    ]
    pts = [(float(c["index"]), float(c["capacity_ah"])) for c in measured]
    anomalies = find_anomalies(pts, c0)
    capacity = {
        "cycle": [c["index"] for c in measured],
        "ts": [c.get("end_ts") for c in measured],
        "capacity_ah": [c["capacity_ah"] for c in measured],
        "soh": [c["capacity_ah"] / c0 if c0 else None for c in measured],
        "anomaly": [k in set(anomalies) for k in range(len(measured))],
    }
    fade = {
        "c0_ah": c0,
        "eol_threshold": _num((latest or {}).get("eol_threshold")),
        "eol_cycle": _num((latest or {}).get("eol_cycle")),
        "rul_cycles": _num((latest or {}).get("rul_cycles")),
        "rul_range": rul_range(latest),
        "method": (latest or {}).get("method"),
        "model_version": (latest or {}).get("model_version"),
        "eol_band": eol_band((latest or {}).get("fit_params")),
        "estimate": {
            "cycle": [h.get("cycle_index") for h in health],
            "soh": [h.get("soh") for h in health],
            "ts": [h.get("ts") for h in health],
        },
        "forecast": shown_forecast(
            latest, max(pts[-1][0] if pts else 0.0, _num((latest or {}).get("cycle_index")) or 0.0)
        ),
    }
    events = alarm_events(alarms)
    anomaly_events = [
        {
            "ts": measured[k].get("end_ts"),
            "cycle": measured[k].get("index"),
            "capacity_ah": measured[k].get("capacity_ah"),
            "expected_ah": statistics.median(
                [c for j, (_, c) in enumerate(pts) if j != k and abs(j - k) <= ANOMALY_WINDOW]
            ),
        }
        for k in anomalies
    ]
    return {
        "thing": detail.get("thing"),
        "simulated": detail.get("simulated"),
        "source": (detail.get("latest_sample") or {}).get("source_id") or (detail.get("health") or {}).get("source_id"),
        "summary": {
            k: v for k, v in detail.items() if k not in ("latest_sample", "health", "last_cycle", "all_alarms")
        },
        "latest_sample": detail.get("latest_sample"),
        "live": live_series(telemetry_items),
        "capacity": capacity,
        "fade": fade,
        "temperature": temperature_bins(discharges),
        "alarms": events,
        "anomalies": anomaly_events,
        "counts": {"cycles": len(cycles), "discharges": len(discharges), "health": len(health), "alarms": len(alarms)},
    }
