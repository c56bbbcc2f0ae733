"""A read-only diagnosis of a running cluster: `ci/provision --diagnose params/<env>.yaml` and
notebook 05. Each check names the cause and the fix (lib.diagnose.checks); nothing it runs can
change a host (lib.diagnose.readonly)."""
from __future__ import annotations

import time

from lib.diagnose.checks import CHECKS, FAIL, OK, WARN, Cluster, Finding

__all__ = ["diagnose", "report", "exit_status", "Finding", "OK", "WARN", "FAIL"]


def diagnose(env) -> tuple[list[Finding], Cluster]:
    """Every check's findings, in order. A host that cannot be reached is a finding, not a crash."""
    cluster = Cluster(env)
    found: list[Finding] = []
    for check in CHECKS:
        try:
            found += check(cluster)
        except Exception as e:          # one check failing to read must not hide the others' findings
            found.append(Finding(check.__name__.replace("_", " "), FAIL, "-", f"could not check: {e}".splitlines()[0],
                                 cause="a host did not answer, or a file or query was unreadable",
                                 fix=["run the check's commands by hand (see the transcript)"]))
    return found, cluster


def report(found: list[Finding], seconds: float | None = None) -> str:
    lines = [f.line() for f in found]
    bad = [f for f in found if f.status != OK]
    counts = {s: sum(f.status == s for f in found) for s in (OK, WARN, FAIL)}
    lines.append("")
    lines += [f.details() + "\n" for f in bad]
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    lines.append(f"diagnosis{took}: {counts[OK]} OK, {counts[WARN]} WARN, {counts[FAIL]} FAIL; "
                 "nothing was changed on any host.")
    return "\n".join(lines)


def exit_status(found: list[Finding]) -> int:
    return 1 if any(f.status == FAIL for f in found) else 0


def main(prm, out=print) -> int:
    from lib.remote import Hosts
    env = Hosts(prm, read_only=True, purpose="ci/provision --diagnose")
    start = time.monotonic()
    try:
        found, _ = diagnose(env)
    finally:
        env.close()
    out(f"diagnose {prm.environment}: what is wrong, from the hosts themselves (read-only)")
    out(report(found, time.monotonic() - start))
    return exit_status(found)
