"""`situation explore`: a read-only terminal viewer of zones, hosts, endpoints and flows.

Zones (subnetworks) on the left; the hosts of the selected zone at the top right; the
node card of the selected host below it. Rows are read when they are shown: the zone
list at start, a zone's hosts when it is selected, a host's card when its row is,
each through one bounded named query (sql/queries/explore.sql) on a read-only
connection (situation/store/reader.py). So opening is as fast on 5,000 machines as on 5.

Everything shown comes from the network (host names, vendors, certificate fields), so
every string passes through :func:`shown` (control and format characters replaced,
length bounded) and reaches Textual as a Rich ``Text``, which is never read as markup.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Input, OptionList, Static

from situation.logs import terminal_text
from situation.store.reader import Reader

ZONE_LIMIT = 10_000
HOST_LIMIT = 5_000
CARD_LIMIT = 500  # endpoints, and outgoing flows, on one card
MAX_CELL = 64  # characters of one table cell
MAX_LINE = 120  # characters of a card line's text
COLLAPSE_ABOVE = 3  # an application with more outgoing flows is shown as one row with the count
EXPIRY_WARNING_DAYS = 30


def shown(value: Any, limit: int = MAX_CELL) -> str:
    """Untrusted text made safe to show: bounded, and without a character a terminal would act on.

    Control characters (ESC, BEL, NUL, C1 …), format characters (bidi overrides) and line
    separators become U+FFFD. Rich markup needs nothing here: callers wrap the result in
    ``Text``, which is never parsed as markup.
    """
    return "" if value is None else terminal_text(str(value), replacement="\ufffd", width=limit)


# -- rows as shown ---------------------------------------------------------------------


@dataclass(frozen=True)
class Zone:
    id: int
    cidr: str
    label: str


@dataclass(frozen=True)
class HostRow:
    nic_id: int
    machine_id: int | None
    machine: str
    ip: str
    mac: str
    vendor: str
    endpoints: int

    def matches(self, needle: str) -> bool:
        return any(needle in cell.lower() for cell in (self.machine, self.ip, self.mac, self.vendor))


def zone_label(row: dict[str, Any]) -> str:
    label = shown(row["network_cidr"], 43)
    if row.get("tag"):
        label += " " + shown(row["tag"], 12)  # docker network id: its start is enough
    return label


def address_in(cidr: str, link_ip: str | None, ips: Any) -> str:
    """The NIC's address in the zone: the link's own, else its first address inside the CIDR."""
    if link_ip:
        return link_ip
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return ""
    for text in ips if isinstance(ips, list) else []:
        try:
            if isinstance(text, str) and ipaddress.ip_address(text) in network:
                return text
        except ValueError:
            continue
    return ""


def zone_hosts(cidr: str, rows: list[dict[str, Any]], counts: list[dict[str, Any]]) -> list[HostRow]:
    """One row per NIC (a NIC linked twice keeps the link that has an address)."""
    endpoints = {(c["nic_id"], c["addr"]): int(c["endpoints"]) for c in counts}
    by_nic: dict[int, HostRow] = {}
    for row in rows:
        ip = address_in(cidr, row["link_ip"], row["ips"])
        if row["nic_id"] in by_nic and not ip:
            continue
        by_nic[row["nic_id"]] = HostRow(
            nic_id=row["nic_id"],
            machine_id=row["machine_id"],
            machine=shown(row["hostname"]),
            ip=shown(ip, 45),
            mac=shown(row["mac"], 17),
            vendor=shown(row["mac_vendor"]),
            endpoints=endpoints.get((row["nic_id"], ip), 0),
        )
    return list(by_nic.values())


def expiry(tls: Any, now: datetime) -> Text | None:
    """``expires 2026-03-01 (in 40 d)`` for a TLS endpoint, coloured when expired or near."""
    if not isinstance(tls, dict) or not tls.get("not_after"):
        return None
    raw = str(tls["not_after"])
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return Text(f"certificate until {shown(raw, 40)}", style="dim")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    days = (moment - now).days
    if moment < now:
        return Text(f"certificate expired {moment:%Y-%m-%d} ({-days} d ago)", style="bold red")
    style = "yellow" if days < EXPIRY_WARNING_DAYS else "green"
    return Text(f"certificate expires {moment:%Y-%m-%d} (in {days} d)", style=style)


def endpoint_lines(rows: list[dict[str, Any]], now: datetime) -> list[Text]:
    lines = []
    for row in rows:
        line = Text(shown(f"{row['protocol']}/{row['port']}", 20), style="bold")
        protocols = row.get("application_protocols")
        if isinstance(protocols, list) and protocols:
            line.append(" " + shown(protocols[0], 20), style="dim")
        line.append(f" ({int(row['incoming'])})")
        if row.get("saas"):
            line.append(" " + shown(row["saas"], 30), style="cyan")
        certificate = expiry(row.get("tls"), now)
        if certificate is not None:
            line.append("  ")
            line.append_text(certificate)
        lines.append(line)
    return lines


def flow_lines(rows: list[dict[str, Any]]) -> list[Text]:
    """``app → addr:port (saas)``, an app with more than COLLAPSE_ABOVE flows as ``app → (n)``."""
    by_app: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_app.setdefault(application_name(row["application"]), []).append(row)
    lines = []
    for app in sorted(by_app):
        flows = by_app[app]
        if len(flows) > COLLAPSE_ABOVE:
            lines.append(Text.assemble((app, "bold"), f" → ({len(flows)})"))
            continue
        for flow in flows:
            line = Text.assemble((app, "bold"), " → " + shown(f"{flow['addr']}:{flow['port']}", 60))
            if flow.get("saas"):
                line.append(" (" + shown(flow["saas"], 30) + ")", style="cyan")
            lines.append(line)
    return lines


def application_name(path: str | None) -> str:
    if not path:
        return "?"
    return shown(path.rstrip("/").rsplit("/", 1)[-1] or path, 40)


def system_table(machine: dict[str, Any] | None) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim")
    table.add_column()
    fields = (("Hostname", "hostname"), ("Platform", "platform"), ("Distribution", "distribution"),
              ("Version", "distribution_version"), ("Chassis", "chassis"))
    for label, column in fields:
        table.add_row(Text(label), Text(shown((machine or {}).get(column), MAX_LINE)))
    return table


def node_card(machine: dict[str, Any] | None, endpoints: list[Text], flows: list[Text], cut: bool) -> Group:
    parts: list[Any] = [Text("System", style="bold underline"), system_table(machine), Text("")]
    parts.append(Text("Endpoints (incoming flows)", style="bold underline"))
    parts.extend(endpoints or [Text("none", style="dim")])
    parts.append(Text(""))
    parts.append(Text("Flows (outgoing)", style="bold underline"))
    parts.extend(flows or [Text("none", style="dim")])
    if cut:
        parts.append(Text(f"(first {CARD_LIMIT} shown)", style="dim"))
    return Group(*parts)


# -- the application -------------------------------------------------------------------


class Notice(ModalScreen[None]):
    """A message (the screenshot's path), dismissed with Enter or Esc."""

    BINDINGS = [Binding("enter", "dismiss", "Close"), Binding("escape", "dismiss", "Close")]
    DEFAULT_CSS = """
    Notice { align: center middle; }
    Notice > Static { width: auto; max-width: 90%; padding: 1 2; border: round $success; background: $surface; }
    """

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        yield Static(Text(self.text))

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)


class ExploreApp(App[None]):
    """Zones, hosts and node cards of a situation database, read-only."""

    TITLE = "Situation - Explore"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    #title { height: 1; color: $text-muted; padding: 0 1; }
    #zones { width: 24; height: 1fr; border: round $primary; }
    #right { width: 1fr; }
    #hosts { height: 1fr; border: round $primary; }
    #node { height: 1fr; border: round $primary; padding: 0 1; }
    #filter { display: none; }
    #filter.shown { display: block; }
    """
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
        Binding("tab", "next_zone", "Next zone", priority=True),
        Binding("shift+tab", "previous_zone", "Previous zone", show=False, priority=True),
        Binding("slash", "filter", "Filter"),
        Binding("ctrl+s", "screenshot", "Screenshot", priority=True),
    ]

    def __init__(self, reader: Reader, *, screenshot_dir: str | None = None):
        super().__init__()
        self.reader = reader
        self.screenshot_dir = screenshot_dir or tempfile.gettempdir()
        self.zones: list[Zone] = []
        self.zone_index = 0
        self.hosts: list[HostRow] = []
        self.shown_hosts: list[HostRow] = []
        self.needle = ""
        self.failure: str | None = None
        self.last_screenshot: str | None = None
        self.card: Any = None  # what the node card shows

    def compose(self) -> ComposeResult:
        yield Static(Text("Situation - Explore"), id="title")
        with Horizontal():
            yield OptionList(id="zones", markup=False)
            with Vertical(id="right"):
                yield DataTable(id="hosts", cursor_type="row", zebra_stripes=True)
                with VerticalScroll(id="node"):
                    yield Static(id="card")
        yield Input(placeholder="filter hosts (Enter keeps it, Esc clears it)", id="filter")
        yield Footer()

    async def on_mount(self) -> None:
        self.query_one("#zones").border_title = "Zones"
        self.query_one("#zones").can_focus = False
        self.query_one("#hosts").border_title = "Data"
        self.query_one("#node").border_title = "Node"
        table = self.query_one("#hosts", DataTable)
        table.add_columns("Machine", "IP", "MAC", "Vendor", "Endpoints")
        table.focus()
        rows = await self._load("explore_zones", ZONE_LIMIT)
        if rows is None:
            return
        self.zones = [Zone(row["id"], row["network_cidr"], zone_label(row)) for row in rows]
        zones = self.query_one("#zones", OptionList)
        zones.add_options([Text(zone.label) for zone in self.zones])
        if self.zones:
            self.select_zone(0)
        else:
            self.show_in_card(Text("No zones: the database holds no subnetwork yet."))

    async def _load(self, query: str, *args: Any) -> list[dict[str, Any]] | None:
        """Rows of a named query; a failure ends the app with its reason (shown by the command)."""
        try:
            return await self.reader.fetch(query, *args)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any database failure ends the viewer with one line
            self.failure = f"reading {query} failed: {' '.join(str(exc).split()) or type(exc).__name__}"
            self.exit()
            return None

    # -- zones ------------------------------------------------------------------------

    def select_zone(self, index: int) -> None:
        self.zone_index = index
        zones = self.query_one("#zones", OptionList)
        zones.highlighted = index
        self.run_worker(functools.partial(self.load_zone, self.zones[index]), exclusive=True, group="zone")

    async def load_zone(self, zone: Zone) -> None:
        rows = await self._load("explore_zone_hosts", zone.id, HOST_LIMIT)
        counts = await self._load("explore_zone_endpoint_counts", zone.id) if rows is not None else None
        if rows is None or counts is None:
            return
        self.hosts = zone_hosts(zone.cidr, rows, counts)
        title = f"Data: {len(self.hosts)} hosts" + (f" (first {HOST_LIMIT})" if len(rows) >= HOST_LIMIT else "")
        self.query_one("#hosts").border_title = title
        self.show_hosts()

    def action_next_zone(self) -> None:
        if self.zones:
            self.select_zone((self.zone_index + 1) % len(self.zones))

    def action_previous_zone(self) -> None:
        if self.zones:
            self.select_zone((self.zone_index - 1) % len(self.zones))

    # -- hosts ------------------------------------------------------------------------

    def show_hosts(self) -> None:
        table = self.query_one("#hosts", DataTable)
        table.clear()
        needle = self.needle.lower()
        self.shown_hosts = [host for host in self.hosts if not needle or host.matches(needle)]
        for host in self.shown_hosts:
            table.add_row(Text(host.machine), Text(host.ip), Text(host.mac), Text(host.vendor),
                          Text(str(host.endpoints), justify="right"), key=str(host.nic_id))
        if self.shown_hosts:
            table.move_cursor(row=0)
            self.show_card(self.shown_hosts[0])
        else:
            self.show_in_card(Text("No host matches." if needle else "No host in this zone."))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if 0 <= event.cursor_row < len(self.shown_hosts):
            self.show_card(self.shown_hosts[event.cursor_row])

    def action_filter(self) -> None:
        field = self.query_one("#filter", Input)
        field.add_class("shown")
        field.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.needle = event.value.strip()
        self.show_hosts()

    def on_input_submitted(self, _event: Input.Submitted) -> None:
        self.query_one("#filter", Input).remove_class("shown")
        self.query_one("#hosts", DataTable).focus()

    def on_key(self, event) -> None:
        field = self.query_one("#filter", Input)
        if event.key == "escape" and field.has_focus:
            field.value = ""
            field.remove_class("shown")
            self.query_one("#hosts", DataTable).focus()
            event.stop()

    # -- node card --------------------------------------------------------------------

    def show_card(self, host: HostRow) -> None:
        self.run_worker(functools.partial(self.load_card, host), exclusive=True, group="card")

    async def load_card(self, host: HostRow) -> None:
        machine_rows = await self._load("explore_machine", host.machine_id) if host.machine_id is not None else []
        endpoints = await self._load("explore_endpoints", host.nic_id, host.ip, CARD_LIMIT)
        flows = await self._load("explore_outgoing_flows", host.nic_id, host.ip, CARD_LIMIT)
        if machine_rows is None or endpoints is None or flows is None:
            return
        now = datetime.now(timezone.utc)
        cut = len(endpoints) >= CARD_LIMIT or len(flows) >= CARD_LIMIT
        self.show_in_card(node_card(machine_rows[0] if machine_rows else None, endpoint_lines(endpoints, now),
                                    flow_lines(flows), cut))

    def show_in_card(self, content: Any) -> None:
        self.card = content
        self.query_one("#card", Static).update(content)

    # -- screenshot -------------------------------------------------------------------

    async def action_screenshot(self) -> None:
        svg = self.export_screenshot(title="Situation - Explore")
        path = Path(self.screenshot_dir) / f"situation-{int(time.time())}.svg"
        await asyncio.to_thread(write_screenshot, path, svg)
        self.last_screenshot = str(path)
        self.push_screen(Notice(f"Screenshot saved to {path}"))


def write_screenshot(path: Path, svg: str) -> None:
    path.write_text(svg, encoding="utf-8")
    os.chmod(path, 0o644)


async def explore(dsn: str, *, terminal: bool = True) -> str | None:
    """Open the viewer on ``dsn``; returns the reason it had to stop, if any.

    The database is opened and checked first, so that a wrong --db is reported
    the same way with or without a terminal.
    """
    from situation.errors import ConfigError
    from situation.store.reader import open_reader

    reader = await open_reader(dsn, "explore")
    try:
        if not terminal:
            raise ConfigError("`situation explore` is a full-screen viewer and needs a terminal; for scripts, query the database with SQL")
        app = ExploreApp(reader)
        await app.run_async()
        return app.failure
    finally:
        await reader.close()
