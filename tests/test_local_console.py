"""The console of a local pipeline run: a line per task as it starts and ends, the progress of
long stages, a failing task's last lines; kfp.local's own output goes to the log file."""

from __future__ import annotations

import io

from pipelines.local import TaskConsole, plain

CYAN, GREEN, RED, RESET = "\x1b[96m", "\x1b[92m", "\x1b[91m", "\x1b[0m"


def _kfp_task(name: str, body: list[str], status: str = "SUCCESS") -> str:
    """What kfp.local prints for one task (logging lines, indented streamed output, outputs)."""
    colour = GREEN if status == "SUCCESS" else RED
    lines = [f"18:00:00.000 - INFO - Executing task {CYAN}'{name}'{RESET}", "18:00:00.001 - INFO - Streamed logs:", "",
             "    [KFP Executor 2026-12-06 18:00:01,000 INFO]: Looking for component `x` in --component_module_path",
             '    [KFP Executor 2026-12-06 18:00:01,000 INFO]: Got executor_input:', '    {', '        "inputs": {',
             '            "parameterValues": {}', "        }", "    }",
             *(f"    {b}" for b in body), "",
             f"18:00:09.000 - INFO - Task {CYAN}'{name}'{RESET} finished with status {colour}{status}{RESET}",
             f"18:00:09.001 - INFO - Task {CYAN}'{name}'{RESET} outputs:", "    Output: '{}'"]
    return "\n".join(lines) + "\n"


def test_the_console_names_each_task_and_the_log_holds_everything() -> None:
    log, console = io.StringIO(), io.StringIO()
    view = TaskConsole(log, console, interval=30.0)
    text = (_kfp_task("plan", ["[plan] 12 stages planned"])
            + _kfp_task("sample", [f"sample  {i}/320 responses   {i * 100 // 320}%  1.0/s  eta {320 - i}s"
                                   for i in range(32, 321, 32)])
            + _kfp_task("ppo", ["[ppo] step 1/2 rm +0.1 kl 0.0", "[ppo] step 2/2 rm +0.2 kl 0.1"])
            + _kfp_task("eval-rm", ["Traceback (most recent call last):", "ValueError: bad pairs"], "FAILURE"))
    for piece in (text[i:i + 97] for i in range(0, len(text), 97)):  # arbitrary chunks, as a pipe delivers
        view.write(piece)
    shown = console.getvalue().splitlines()
    assert log.getvalue() == text  # the log keeps every byte, colour codes included
    assert "executor_input" not in console.getvalue() and "\x1b[" not in console.getvalue()
    names = [line.split(" ", 2)[1:] for line in shown]
    assert ["plan", "started"] in names and ["plan", "done in 0 s"] in names
    assert ["sample", "started"] in names and ["ppo", "started"] in names
    progress = [line for line in shown if "responses" in line]
    assert len(progress) == 2 and "32/320" in progress[0] and "320/320" in progress[1]  # first, then the last
    assert any("[ppo] step 2/2" in line for line in shown)
    failed = shown.index(next(line for line in shown if "eval-rm failure after" in line))
    assert shown[failed + 1:] and "ValueError: bad pairs" in shown[-1]
    assert len(shown) < 20
    assert plain(f"{CYAN}'x'{RESET}") == "'x'"
