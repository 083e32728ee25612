"""``autopilot keys``: the gateway's API keys (create, list, revoke).

A key binds its caller to one team (and optionally repos); the gateway attributes every
call made with it to that team, whatever the request says (``serving.apikeys``). The
secret is printed once, at creation; the store keeps its SHA-256 only. Creation and
revocation are audit events.
"""

from __future__ import annotations

import getpass

import click

from controlplane.cli.common import Context

__all__ = ["COMMANDS", "keys"]

_COLUMNS = ["key_id", "name", "team", "repos", "purpose", "created_at", "revoked_at",
            "last_used_at"]


def _actor(name: str | None) -> str:
    if name:
        return name
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in this environment
        return "autopilot-cli"


def _row(record, as_json: bool) -> dict:
    data = record.as_dict()
    if not as_json:  # a table cell: "*" is any repo of the team
        data["repos"] = ", ".join(data["repos"]) or "*"
    return data


@click.group()
def keys() -> None:
    """API keys of the gateway: each bound to a team (and optionally repos)."""


@keys.command("create")
@click.option("--team", required=True, help="The team every call with this key is charged to.")
@click.option("--repo", "repos", multiple=True,
              help="A repo the key may name (repeatable; none: any repo of the team).")
@click.option("--name", default=None, help="A label for the key (default: team-<id>).")
@click.option("--purpose", type=click.Choice(["serve", "gate"]), default="serve",
              show_default=True, help="gate: may also send gate traffic (a named policy version).")
@click.option("--as", "actor", default=None, help="Your identity for the audit log "
              "(default: the login name).")
@click.pass_obj
def keys_create(obj: Context, team: str, repos: tuple[str, ...], name: str | None,
                purpose: str, actor: str | None) -> None:
    """Create a key; its secret is printed once and cannot be shown again."""
    with obj.store() as store:
        record, secret = store.create_api_key(team=team, repos=repos, name=name,
                                              purpose=purpose, actor=_actor(actor))
    if obj.as_json:
        obj.emit({**_row(record, True), "secret": secret})
        return
    click.echo(f"created API key {record.key_id} ({record.name}) for team {record.team}"
               f"{' repos ' + ', '.join(record.repos) if record.repos else ''}, purpose "
               f"{record.purpose}")
    click.echo("secret (shown once; the store keeps only its hash):")
    click.echo(secret)


@keys.command("list")
@click.option("--active", is_flag=True, help="Leave revoked keys out.")
@click.pass_obj
def keys_list(obj: Context, active: bool) -> None:
    """Every key: id, name, team, repos, purpose, created, revoked, last used."""
    with obj.store() as store:
        rows = [_row(r, obj.as_json) for r in store.list_api_keys(include_revoked=not active)]
    if not rows and not obj.as_json:
        click.echo("no API keys (autopilot keys create --team T)")
        return
    obj.emit(rows, title="API keys", columns=_COLUMNS)


@keys.command("revoke")
@click.argument("key_id")
@click.option("--reason", default="", help="Why (recorded in the audit log).")
@click.option("--as", "actor", default=None, help="Your identity for the audit log "
              "(default: the login name).")
@click.pass_obj
def keys_revoke(obj: Context, key_id: str, reason: str, actor: str | None) -> None:
    """Revoke a key: the gateway refuses it within seconds (401)."""
    from store import NotFoundError

    with obj.store() as store:
        try:
            record = store.revoke_api_key(key_id, actor=_actor(actor), reason=reason or None)
        except NotFoundError as exc:
            raise click.ClickException(str(exc)) from None
    obj.emit(_row(record, obj.as_json), title=f"revoked {record.key_id}")


COMMANDS = (keys,)
