"""The ``ble:`` source URL: which pack (address or advertised name) and which BMS family.

Forms::

    ble:AA:BB:CC:DD:EE:FF?type=jbd        by Bluetooth address, family given
    ble:AA:BB:CC:DD:EE:FF                 by address, family detected from the advertisement (type=auto)
    ble:name=xiaoxiang?type=auto          by advertised local name (shell wildcards allowed: name=JBD-*)
    ble:?name=xiaoxiang                   the same, the name as an option

``type`` is an aiobmsble module name without ``_bms`` (``jbd``, ``jikong``, ``daly``, ``ant`` ...; ``jk`` and
``xiaoxiang`` are accepted for ``jikong`` and ``jbd``) or ``auto``: aiobmsble's advertisement matchers choose.
Other options (all optional): ``timeout`` (s per poll, default 10), ``scan_timeout`` (s, 15), ``connect_timeout``
(s, 30), ``adapter`` (BlueZ adapter, e.g. hci1), ``secret`` (the BMS's Bluetooth password where the family
supports one), and the options every driver shares (``retries``, ``backoff_min_s``, ``cells`` ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase

from hardware.errors import SourceConfigError
from schema.source_settings import SourceUrl

#: family names people use for the ones aiobmsble names otherwise
TYPE_ALIASES = {"jk": "jikong", "jkbms": "jikong", "xiaoxiang": "jbd", "jiabaida": "jbd"}
_MAC = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
_UUID = re.compile(r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")  # macOS
_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_NAME_MAX = 64


@dataclass(frozen=True, slots=True)
class BleTarget:
    """The pack to connect to: by ``address`` or by advertised ``name`` (a shell-style pattern), one of them."""

    address: str | None = None
    name: str | None = None

    def matches(self, address: str, local_name: str | None) -> bool:
        if self.address is not None:
            return address.lower() == self.address.lower()
        return local_name is not None and self.name is not None and fnmatchcase(local_name, self.name)

    def __str__(self) -> str:
        return self.address if self.address is not None else f"name={self.name}"


def parse_target(url: SourceUrl) -> BleTarget:
    path = url.path.strip()
    option = url.option("name")
    if path.startswith("name="):
        if option is not None:
            raise SourceConfigError(f"source URL {url.raw!r}: the name is given twice")
        option, path = path[len("name=") :], ""
    if path and option is not None:
        raise SourceConfigError(f"source URL {url.raw!r}: give an address or name=, not both")
    if option is not None:
        if not option or len(option) > _NAME_MAX or not option.isprintable():
            raise SourceConfigError(f"source URL {url.raw!r}: name= must be 1..{_NAME_MAX} printable characters")
        return BleTarget(name=option)
    if not path:
        raise SourceConfigError(
            f"source URL {url.raw!r}: missing the pack's Bluetooth address or name "
            "(ble:AA:BB:CC:DD:EE:FF or ble:name=NAME; `bluetoothctl scan le` lists them)"
        )
    if not (_MAC.match(path) or _UUID.match(path)):
        raise SourceConfigError(
            f"source URL {url.raw!r}: {path!r} is not a Bluetooth address (AA:BB:CC:DD:EE:FF); "
            "for a pack by its advertised name write ble:name=NAME"
        )
    return BleTarget(address=path.upper())


def parse_type(url: SourceUrl) -> str:
    """``auto`` or a family name as aiobmsble spells it (aliases resolved); not yet checked against aiobmsble."""
    raw = (url.option("type") or "auto").strip().lower().replace("-", "_")
    if raw.endswith("_bms"):
        raw = raw[: -len("_bms")]
    if not _TYPE.match(raw):
        raise SourceConfigError(f"source URL {url.raw!r}: type={url.option('type')!r} is not a BMS family name")
    return TYPE_ALIASES.get(raw, raw)


def parse_ble_url(url: SourceUrl) -> tuple[BleTarget, str]:
    if url.host is not None:
        raise SourceConfigError(f"source URL {url.raw!r}: write ble:ADDRESS, not ble://ADDRESS")
    return parse_target(url), parse_type(url)
