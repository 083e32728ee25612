from click.testing import CliRunner

from controlplane.cli import cli


def test_serve_refuses_without_a_state_dir(tmp_path):
    result = CliRunner().invoke(cli, ["--state-dir", str(tmp_path / "none"), "serve"])
    assert result.exit_code != 0 and "autopilot init" in result.output


def test_serve_lists_its_options():
    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--fleet", "--port", "--ray-address", "--reload-interval"):
        assert option in result.output
