"""Operating-system operations both parts use: packages and the host firewall."""
from __future__ import annotations

from lib import ops


def missing_packages(remote, packages: list[str]) -> list[str]:
    return [p for p in packages if "install ok installed" not in remote.run(
        f"dpkg-query -W -f='${{Status}}' {p} 2>/dev/null", check=False).stdout]


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
    state = remote.sudo("command -v ufw >/dev/null || { echo absent; exit 0; }; ufw status | head -1").stdout.strip()
    return "absent" if state == "absent" else "inactive" if "inactive" in state else "active"


def firewall_step(step: ops.Step, remote, port: int) -> ops.Step:
    state = ufw_state(remote)
    command = f"ufw allow {port}/tcp && ufw reload"
    if state == "absent":
        return step.note(remote, f"ufw is not installed, so there is no host firewall to open "
                                 f"(where ufw is active, this step runs `{command}`)")
    if state == "inactive":
        return step.note(remote, f"ufw is installed but inactive, so port {port} is not blocked "
                                 f"(where ufw is active, this step runs `{command}`)")
    if f"{port}/tcp" in remote.sudo("ufw status").stdout:
        return step.note(remote, f"ufw already allows {port}/tcp")
    return step.do(ops.Command(remote, "root", command,
                               summary=f"ufw allows {port}/tcp"))
