import subprocess

import yaml

from lib import REPO


def test_bootstrap_installs_exactly_the_pip_list_of_environment_yml():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_list = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    out = subprocess.run(["bash", "-c", f"source <(sed -n '/^pip_requirements()/,/^}}/p' {REPO}/ci/bootstrap);"
                          f" repo={REPO}; pip_requirements"], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:-1] == pip_list
    assert any(p.startswith("psycopg[binary]") for p in pip_list)
