"""The ``autopilot`` command group; every command is registered here, explicitly."""

from __future__ import annotations

import sys

import click

from contracts.documents import DocumentError
from contracts.errors import AutopilotError
from controlplane.cli import commands, distill, keys, loop, receive, spend
from controlplane.cli.common import Context, accept_json_everywhere
from controlplane.settings import resolve_state_dir

__all__ = ["cli", "main"]


@click.group()
@click.option("--state-dir", type=click.Path(file_okay=False), default=None,
              help="State directory (default: $AUTOPILOT_HOME or ~/.autopilot).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.pass_context
def cli(ctx: click.Context, state_dir: str | None, as_json: bool) -> None:
    """L5 autopilot for self-hosted LLM fleets: lowers cost per Green PR behind gates."""
    ctx.obj = Context(resolve_state_dir(state_dir), as_json)


for _command in (*commands.COMMANDS, *loop.COMMANDS, distill.distill, *spend.COMMANDS,
                 *keys.COMMANDS, *receive.COMMANDS):
    cli.add_command(_command)
commands.policy.add_command(loop.policy_rollback)
accept_json_everywhere(cli)  # `--json` before or after the subcommand; days checked


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="autopilot", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except (DocumentError, AutopilotError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
