"""A read-only diagnosis of a running cluster: `ci/provision --diagnose params/<env>.yaml` and
notebook 05. Each check names the cause and the fix (lib.diagnose.checks); nothing it runs can
change a host (lib.diagnose.readonly)."""
from __future__ import annotations

import time

from lib.diagnose.checks import CHECKS, Cluster, FAIL, Finding, OK, WARN
from lib.remote import Hosts
from lib.show import expect

__all__ = ["diagnose", "report", "exit_status", "show", "healthy", "transcript", "Finding", "OK", "WARN", "FAIL"]


def diagnose(env) -> tuple[list[Finding], Cluster]:
    """Every check's findings, in order. A host that cannot be reached is a finding, not a crash."""
    cluster = Cluster(env)
    found = reachable(cluster)
    if any(f.status == FAIL for f in found):
        return found, cluster              # every other check reads these hosts: the first cause is enough
    for check in CHECKS:
        try:
            found += check(cluster)
        except Exception as e:          # one check failing to read must not hide the others' findings
            found.append(Finding(check.__name__.replace("_", " "), FAIL, "-", f"could not check: {e}".splitlines()[0],
                                 cause="a host did not answer, or a file or query was unreadable",
                                 fix=["run the check's commands by hand (see the transcript)"]))
    return found, cluster


def reachable(cluster: Cluster) -> list[Finding]:
    """SSH to every host: a host that cannot be reached is the finding, not every check after it."""
    out = []
    for h in cluster.hosts:
        try:
            h.read(["hostname"], user="root", check=True)
            out.append(Finding("host reachable", OK, h.host.name, f"SSH as {cluster.params.ssh['user']}, sudo"))
        except Exception as e:
            out.append(Finding("host reachable", FAIL, h.host.name, str(e).splitlines()[0][:160],
                               evidence=[str(e).splitlines()[0]],
                               cause="the host is down, unreachable, or refuses the SSH key or sudo",
                               fix=["the evidence names what to do; then run the diagnosis again"],
                               step="notebook 00 (preflight)"))
    return out


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
    env = Hosts(prm, read_only=True, purpose="ci/provision --diagnose")
    start = time.monotonic()
    try:
        found, _ = diagnose(env)
    finally:
        env.close()
    out(f"diagnose {prm.environment}: what is wrong, from the hosts themselves (read-only)")
    out(report(found, time.monotonic() - start))
    return exit_status(found)


# --- for notebook 05 ----------------------------------------------------------------------------------
def show(found: list[Finding], *checks: str) -> str:
    """The list's lines for these checks (in the order they ran), with the details of any that is
    not OK."""
    chosen = [f for f in found if f.check in checks]
    missing = set(checks) - {f.check for f in chosen}
    assert not missing, f"no finding from {sorted(missing)}: a check did not run"
    return "\n".join([f.line() for f in chosen] + [f.details() for f in chosen if f.status != OK])


def healthy(found: list[Finding]) -> str:
    """The summary, failing (with every finding's details) unless every check is OK."""
    bad = [f for f in found if f.status != OK]
    expect(not bad, "the diagnosis found:\n" + "\n".join(f.details() for f in bad),
           "each finding names its fix and the guide step that sets it right.")
    return f"{len(found)} findings: every one OK; nothing was changed on any host."


def transcript(cluster: Cluster) -> str:
    """What the diagnosis ran, host by host: each distinct command once, with ×N when repeated."""
    from collections import Counter
    lines = [l for h in cluster.hosts for l in h.transcript]
    counts = Counter(lines)
    seen, out = set(), []
    for line in lines:
        if line not in seen:
            seen.add(line)
            out.append(line + (f"    ×{counts[line]}" if counts[line] > 1 else ""))
    return "\n".join(out)
