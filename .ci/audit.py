"""Fail CI when a resolved dependency has a published advisory; skip, saying so, when no advisory database answers.

Runs ``pip-audit`` (PyPI's advisory data, the only advisory source reachable from this project's machines) over the
test venv's site-packages. Exit codes: 0 clean or skipped (with a message), 1 a known-vulnerable version is installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

OURS = {"cscapi"}


def main() -> int:
    auditor, site_packages = Path(sys.argv[1]), Path(sys.argv[2])
    try:
        run = subprocess.run(  # noqa: S603 (our own CI venv's pip-audit)
            [str(auditor), "-s", "pypi", "--progress-spinner", "off", "-f", "json", "--path", str(site_packages)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"dependency audit skipped: pip-audit could not run ({exc})")
        return 0
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:
        print(f"dependency audit skipped: no advisory database reachable ({run.stderr.strip().splitlines()[-1:]})")
        return 0
    deps = [d for d in report.get("dependencies", []) if d.get("name", "").lower() not in OURS]
    audited = [d for d in deps if "skip_reason" not in d]
    if not audited:
        print(f"dependency audit skipped: the advisory database did not answer for any of {len(deps)} packages")
        return 0
    vulnerable = [d for d in audited if d.get("vulns")]
    for dep in vulnerable:
        ids = ", ".join(f"{v['id']} (fixed in {', '.join(v.get('fix_versions') or ['?'])})" for v in dep["vulns"])
        print(f"VULNERABLE {dep['name']} {dep['version']}: {ids}")
    skipped = len(deps) - len(audited)
    print(f"dependency audit: {len(audited)} packages checked, {skipped} not answered, {len(vulnerable)} vulnerable")
    return 1 if vulnerable else 0


if __name__ == "__main__":
    sys.exit(main())
