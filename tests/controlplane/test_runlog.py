"""Issue 15, defect 9: `serve` and `demo` send Ray/vLLM output to a log file under the
state directory and print progress lines; `-v` leaves everything on the console.

Checked in a child process: the redirection is of file descriptors 1 and 2 (what Ray's
forwarded worker output, C++ logging and child processes write to)."""

import subprocess
import sys
import textwrap

from click.testing import CliRunner

from controlplane.cli import cli

SCRIPT = textwrap.dedent("""
    import logging, os, sys
    from controlplane.runlog import engine_logs_to_file

    logs = sys.argv[1] if sys.argv[1] != "-" else None
    with engine_logs_to_file(logs, "serve", verbose=sys.argv[2] == "1") as (echo, path):
        echo("progress: starting the fleet")
        print("ray flood on stdout")
        print("vllm flood on stderr", file=sys.stderr)
        os.system("echo child-process-flood; echo child-err >&2")
        logging.getLogger("vllm.engine").warning("vllm logger says")
        logging.getLogger("ray.serve").warning("serve logger says")
        echo("progress: gateway up")
    print("after: " + str(path))
""")
FLOOD = ("ray flood on stdout", "vllm flood on stderr", "child-process-flood", "child-err",
         "vllm logger says", "serve logger says")


def run(logs: str, verbose: bool):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, logs, "1" if verbose else "0"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, proc.stderr


def test_engine_output_goes_to_the_log_file_progress_to_the_console(tmp_path):
    out, err = run(str(tmp_path / "logs"), verbose=False)
    console = out + err
    assert "progress: starting the fleet" in out and "progress: gateway up" in out
    assert "engine logs:" in out and "-v" in out
    for line in FLOOD:
        assert line not in console, line
    [log] = (tmp_path / "logs").glob("serve-*.log")
    text = log.read_text()
    for line in (*FLOOD, "progress: gateway up"):
        assert line in text, line
    assert f"after: {log}" in out  # the console is restored when the block ends


def test_verbose_keeps_everything_on_the_console(tmp_path):
    out, err = run(str(tmp_path / "logs"), verbose=True)
    for line in FLOOD:
        assert line in out + err, line
    assert "progress: gateway up" in out and "after: None" in out
    assert not (tmp_path / "logs").exists()


def test_serve_and_demo_take_verbose():
    for name in ("serve", "demo"):
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0 and "--verbose" in result.output and "-v" in result.output
