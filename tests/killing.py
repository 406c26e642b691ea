"""Killing a stage process mid-run, for the resume tests."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def kill_at_first_checkpoint(stage: str, cfg: Any, config_file: Path, checkpoint: Path, timeout: float) -> None:
    """Run ``python -m salmon.stages.<stage> --config config_file`` (``cfg`` written there) and
    SIGKILL it as soon as ``checkpoint`` exists; fails if the run ends first or takes longer than
    ``timeout`` seconds to get there."""
    config_file.write_text(cfg.model_dump_json())
    proc = subprocess.Popen([sys.executable, "-m", f"salmon.stages.{stage}", "--config", str(config_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint.exists() and proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
