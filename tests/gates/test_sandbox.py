import os
import time

from gates.sandbox import SandboxLimits, run_check

FAST = SandboxLimits(timeout_s=1.5, cpu_s=1, memory_mb=256)


def test_pass_and_fail_protocol():
    src = "import json,sys\nd=json.load(sys.stdin)\nprint('PASS' if d['x']==1 else 'FAIL x is '+str(d['x']))"
    assert run_check(src, {"x": 1}, FAST).status == "pass"
    r = run_check(src, {"x": 2}, FAST)
    assert (r.status, r.reason) == ("fail", "x is 2")


def test_sleeping_check_is_killed_at_the_wall_clock_timeout():
    start = time.monotonic()
    r = run_check("import time\ntime.sleep(60)\nprint('PASS')", {}, FAST)
    assert time.monotonic() - start < 5
    assert r.status == "error" and "wall-clock timeout of 1.5 s" in r.reason


def test_busy_loop_is_killed_by_the_cpu_limit():
    r = run_check("while True:\n    pass", {}, SandboxLimits(timeout_s=20, cpu_s=1))
    assert r.status == "error" and "CPU-time limit" in r.reason, r.reason


def test_memory_hog_is_stopped():
    r = run_check("x = bytearray(2 * 1024**3)\nprint('PASS')", {}, FAST)
    assert r.status == "error" and "MemoryError" in r.reason


def test_output_flood_is_capped():
    r = run_check("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", {}, FAST)
    assert r.status == "error"


def test_no_secrets_no_inherited_cwd(monkeypatch):
    monkeypatch.setenv("AUTOPILOT_SECRET_TOKEN", "hunter2")
    src = ("import os\n"
           "ok = ('AUTOPILOT_SECRET_TOKEN' not in os.environ and "
           f"os.getcwd() != {os.getcwd()!r} and os.path.basename(os.getcwd())"
           ".startswith('gate-check-'))\n"
           "print('PASS' if ok else 'FAIL ' + repr(sorted(os.environ)) + os.getcwd())")
    r = run_check(src, {}, FAST)
    assert r.status == "pass", r.reason


def test_limits_are_in_force_inside_the_check():
    src = ("import resource\n"
           "cpu = resource.getrlimit(resource.RLIMIT_CPU)[0]\n"
           "mem = resource.getrlimit(resource.RLIMIT_AS)[0]\n"
           "print('PASS' if (cpu, mem) == (1, 256 * 1024 * 1024) else f'FAIL {cpu} {mem}')")
    r = run_check(src, {}, FAST)
    assert r.status == "pass", r.reason


def test_crash_and_missing_verdict_are_errors_without_temp_paths():
    r = run_check("raise ValueError('boom')", {}, FAST)
    assert r.status == "error" and "ValueError: boom" in r.reason and "gate-check-" not in r.reason
    r = run_check("print('maybe')", {}, FAST)
    assert r.status == "error" and "without PASS or FAIL" in r.reason
