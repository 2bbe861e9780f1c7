"""Options shared by several commands."""
from __future__ import annotations

import click


def _parse_tgid_map(ctx, param, value: tuple[str, ...]) -> dict[int, int] | None:
    """--tgid-map TID=TGID (repeatable): assign threads to VMs when the source has no TGID."""
    if not value:
        return None
    out: dict[int, int] = {}
    for item in value:
        tid, sep, tgid = item.partition("=")
        if not sep or not tid.strip().isdigit() or not tgid.strip().isdigit():
            raise click.BadParameter(f"{item!r} is not TID=TGID", ctx=ctx, param=param)
        out[int(tid)] = int(tgid)
    return out


tgid_map_option = click.option(
    "--tgid-map", multiple=True, callback=_parse_tgid_map, metavar="TID=TGID",
    help="Assign thread TID to the VM process TGID (repeatable) when the trace has no TGID column.")
