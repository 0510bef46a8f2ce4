"""BLE battery packs through aiobmsble: the ``ble:`` source (``ble:AA:BB:CC:DD:EE:FF?type=jbd``).

aiobmsble (Apache-2.0) connects to the pack with bleak, asks it for data and decodes the replies, for about 50
BMS families; battwin's part is the URL, the connection life cycle behind the synchronous
:class:`~hardware.source.Source` interface, the typed errors and the mapping onto :class:`~schema.messages.Sample`.
aiobmsble needs Python >= 3.12 and comes with the optional extra ``battwin[ble]``. No module of this package
imports it at import time: on Python 3.11, or without the extra, ``hardware.ble`` imports and the registry lists
``ble``, and building a ``ble:`` source raises :class:`~hardware.ble.support.BleSupportMissing` naming the extra.
"""

from __future__ import annotations

from hardware.ble.support import BleSupportMissing, ble_support_problem
from hardware.ble.url import BleTarget, parse_ble_url

__all__ = ["BleSupportMissing", "BleTarget", "ble_support_problem", "parse_ble_url"]
