"""bus.log: logging is imported at the first message, with the CLI's set-up."""

from __future__ import annotations

import json
import subprocess
import sys


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_cli_commands_that_log_nothing_never_import_logging():
    out = _run(
        "import sys\n"
        "import zentry.cmd.main, zentry.cmd.state, zentry.cmd.start, zentry.cmd.delete, zentry.cmd.common, zentry.actors.launch\n"
        "from zentry.bus.log import configure\n"
        "configure('/nonexistent/log', 'json', False)\n"
        "print(sorted(m for m in ('logging', 'traceback') if m in sys.modules))\n"
    )
    assert out == "[]\n"


def test_first_message_applies_the_recorded_set_up(tmp_path):
    log = tmp_path / "log.json"
    _run(
        "from zentry.bus.log import configure, get_logger, shutdown\n"
        f"configure({str(log)!r}, 'json', False)\n"
        "get_logger('zentry.test').debug('dropped: below INFO without --debug')\n"
        "get_logger('zentry.test').warning('careful %s', 1)\n"
        "get_logger('zentry.test').error('bad')\n"
        "shutdown()\n"
    )
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["level"], e["msg"]) for e in lines] == [("warning", "careful 1"), ("error", "bad")]
    assert all(e["time"].endswith("Z") for e in lines)


def test_without_configure_messages_reach_logging_as_usual(caplog):
    from zentry.bus.log import get_logger

    get_logger("zentry.test.plain").warning("seen by %s", "caplog")
    assert "seen by caplog" in caplog.text
