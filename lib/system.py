"""Operating-system operations both parts use: packages and the host firewall."""
from __future__ import annotations

import re
import shlex

from lib import facts, ops


def packages_fact(packages: list[str]) -> facts.CommandFact:
    """`PACKAGE install ok installed` for each installed one (dpkg-query)."""
    return facts.CommandFact("dpkg-query -W -f='${Package} ${Status}\\n' " + " ".join(map(shlex.quote, packages))
                             + " 2>/dev/null")


def missing_packages(remote, packages: list[str]) -> list[str]:
    installed = remote.facts.get(packages_fact(packages))
    have = {line.split()[0] for line in installed.lines if line.endswith("install ok installed")}
    return [p for p in packages if p not in have]


def packages_step(step: ops.Step, remote, packages: list[str]) -> ops.Step:
    """apt-get install what is missing (apt's own output is long and varies: not shown)."""
    missing = missing_packages(remote, packages)
    if not missing:
        return step.note(remote, f"{' '.join(packages)} already installed")
    return step.do(ops.Command(
        remote, "root", f"apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -q {' '.join(missing)} -y",
        shown=f"apt-get update && apt-get install {' '.join(missing)} -y",
        summary=f"installed {' '.join(missing)}", show_output=False, timeout=900,
        hint="the host needs a reachable apt repository with these packages"))


def ufw_state(remote) -> str:
    """'absent', 'inactive' or 'active': Ubuntu installs ufw (often active), Debian does not."""
    state = ufw_status(remote).split("\n", 1)[0].strip()
    return "absent" if state == "absent" else "inactive" if "inactive" in state else "active"


def ufw_status(remote) -> str:
    """`ufw status`, or 'absent' without ufw."""
    return remote.facts.get(UFW_STATUS).stdout


UFW_STATUS = facts.CommandFact("command -v ufw >/dev/null || { echo absent; exit 0; }; ufw status")


def firewall_step(step: ops.Step, remote, port: int, sources: list[str]) -> ops.Step:
    """Open `port` in the host's ufw to `sources` only (addresses or networks): the guide's
    `ufw allow PORT/tcp` would open it to anyone who can route to the host."""
    rules = {src: f"ufw allow from {src} to any port {port} proto tcp" for src in sources}
    state = ufw_state(remote)
    if state != "active":
        command = " && ".join(rules.values()) + " && ufw reload"
        return step.note(remote, ("ufw is not installed, so there is no host firewall to open" if state == "absent" else
                                  f"ufw is installed but inactive, so port {port} is not blocked")
                         + f" (where ufw is active, this step runs `{command}`; the guide's `ufw allow {port}/tcp` "
                           "would open the port to anyone)")
    status = ufw_status(remote)
    missing = [src for src in sources if not re.search(
        rf"^{port}/tcp\s+ALLOW(\s+IN)?\s+{re.escape(src)}\s*$", status, re.M)]
    if not missing:
        return step.note(remote, f"ufw already allows {port}/tcp from {', '.join(sources)}")
    return step.do(ops.Command(remote, "root", " && ".join(rules[s] for s in missing) + " && ufw reload",
                               summary=f"ufw allows {port}/tcp from {', '.join(missing)} (the guide's "
                                       f"`ufw allow {port}/tcp`, narrowed to who needs it)"))
