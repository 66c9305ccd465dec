"""Without ../shared/provider-specs the contract tests skip and say why, instead of erroring."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_contract_tests_skip_with_the_reason_when_the_specs_are_absent():
    env = {**os.environ, "PROVIDER_SPECS_DIR": str(ROOT / "no-such-specs")}
    result = subprocess.run(  # noqa: S603 - our own interpreter and tests
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rs",
            "tests/reminders/test_channels.py",
            "-k",
            "contract_catches",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "skipped" in result.stdout and "failed" not in result.stdout
    assert "provider specs not found at" in result.stdout
