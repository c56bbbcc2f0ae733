"""Load and validate an environment's parameters (a file in params/).

A file in params/ is exactly what `papermill -f` takes: its top-level keys become the
notebook's parameters. `load()` turns those keys into a validated `Params`, so bad input
stops here, before any host is touched, with an error that names the key.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lib import REPO

DEFAULT_FILE = REPO / "params" / "lab.yaml"
TOP_LEVEL_KEYS = ("environment", "lab", "hosts", "ssh", "postgres", "pgpool", "options")


#: lab.debian -> (release code name, the PostgreSQL major version it ships; the preflight reads the
#: versions installed on the hosts and stops on a postgres.version they lack)
LAB_RELEASES = {12: ("bookworm", 15), 13: ("trixie", 17)}


class ParamsError(ValueError):
    """A parameter is missing, unknown, of the wrong type or out of range."""


# --- the schema: key -> (type, required, default) -------------------------------------
# A nested dict is a section. Types: int, bool, "name", "hostname", "address", "cidr", "port",
# "path" (on this machine) and "host_path" (on the hosts). Every string is matched whole
# (fullmatch), against a character set that needs no quoting in a shell, in SQL or in a
# config file: values reach all three.
_HOST = {"name": ("hostname", True, None), "address": ("address", True, None),
         "weight": (int, False, None)}   # pgpool's backend_weight; the guide's 1 (primary) and 2 (standby)
SCHEMA: dict[str, Any] = {
    "environment": ("name", True, None),
    "lab": {
        "name": ("name", True, None),
        "subnet": ("cidr", True, None),
        "gateway": ("address", True, None),
        # the lab image's Debian release: 12 (bookworm: PostgreSQL 15, pgpool2 4.3) or 13 (trixie: 17, 4.6)
        "debian": ("debian", False, 12),
    },
    "hosts": {
        "primary": _HOST,
        "standbys": ([_HOST], True, None),
        "pgpool": _HOST,
    },
    "ssh": {
        "user": ("name", True, None),
        "port": ("port", False, 22),
        "key_file": ("path", True, None),
        "known_hosts": ("path", True, None),
        "connect_timeout": (int, False, 5),
        # bound on any one command or query that reads (a step's own actions have theirs)
        "command_timeout": (int, False, 60),
    },
    "postgres": {
        "version": (int, True, None),
        "cluster": ("name", False, "main"),
        "port": ("port", False, 5432),
        "service": ("name", False, "postgresql"),
        "conf_dir": ("host_path", False, "/etc/postgresql/{version}/{cluster}"),
        "data_dir": ("host_path", False, "/var/lib/postgresql/{version}/{cluster}"),
        "log_file": ("host_path", False, "/var/log/postgresql/postgresql-{version}-{cluster}.log"),
        # scram-sha-256 end to end (default), or md5 exactly as the guide does it
        "auth_method": ("auth_method", False, "scram-sha-256"),
        # require verified TLS on every connection between the hosts and from clients to pgpool (lib.tls)
        "tls": (bool, False, False),
        # each host's own pair and the certificates every host trusts; by default made by the steps
        "tls_cert_file": ("host_path", False, "/etc/ssl/pgguide/server.crt"),
        "tls_key_file": ("host_path", False, "/etc/ssl/pgguide/server.key"),
        "tls_ca_file": ("host_path", False, "/etc/ssl/pgguide/root.crt"),
        # a commit is acknowledged once a standby has it too (Step 44); the guide's is asynchronous
        "synchronous": (bool, False, False),
    },
    "pgpool": {
        "port": ("port", False, 9999),
        "service": ("name", False, "pgpool2"),
        "package": ("name", False, "pgpool2"),
        "conf_dir": ("host_path", False, "/etc/pgpool2"),
        "pcp_port": ("port", False, 9898),
        "allowed_clients": ("cidr", False, None),     # pool_hba.conf; default: the lab's subnet
        # where the superuser may log in through pgpool from, besides the pgpool host itself: the machine that
        # runs the notebooks (their checks go through pgpool as postgres); default: the lab's gateway
        "admin_clients": ("cidr", False, None),
        "num_init_children": (int, False, 32),
        "max_pool": (int, False, 3),
        # at least this many sessions in the Step 38 test (it computes how many it needs: 573 at 1:2)
        "lb_sessions": (int, False, 0),
    },
    "options": {
        "interface": ("name", False, "ens33"),
        "rebuild_standby": (bool, False, False),   # clone a standby again even if it already streams
        "reset_passwords": (bool, False, False),   # let the secrets replace the roles' existing passwords
        # refuse to rejoin a former primary that holds commits the current primary never received
        "refuse_diverged": (bool, False, False),
        # bound on one notebook cell (papermill) and on the base backup, the longest action
        "step_timeout": (int, False, 1800),
    },
}
OPTIONAL_SECTIONS = {"lab", "options", "pgpool"}


@dataclass(frozen=True)
class Host:
    role: str      # "primary", "standby", "pgpool"
    name: str
    address: str
    weight: int | None = None

    @property
    def lb_weight(self) -> int:
        """pgpool's backend_weight: as set, or the guide's 1 for the primary, 2 for a standby."""
        return self.weight if self.weight is not None else (1 if self.role == "primary" else 2)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.role}, {self.address})"


@dataclass(frozen=True)
class Params:
    environment: str
    hosts: dict[str, Any]
    ssh: dict[str, Any]
    postgres: dict[str, Any]
    pgpool: dict[str, Any]
    options: dict[str, Any]
    lab: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_lab(self) -> bool:
        return self.lab is not None

    @property
    def primary(self) -> Host:
        return Host("primary", **self.hosts["primary"])

    @property
    def standbys(self) -> list[Host]:
        return [Host("standby", **h) for h in self.hosts["standbys"]]

    @property
    def pgpool_host(self) -> Host:
        return Host("pgpool", **self.hosts["pgpool"])

    @property
    def all_hosts(self) -> list[Host]:
        return [self.primary, *self.standbys, self.pgpool_host]

    @property
    def database_hosts(self) -> list[Host]:
        return [self.primary, *self.standbys]

    def pg_bin(self, program: str) -> str:
        """A PostgreSQL program of the parameters' version, by its path. Debian's psql on PATH is its Perl
        pg_wrapper, which finds and runs this one: 34 ms of CPU a call against 6 (measured on the lab)."""
        return f"/usr/lib/postgresql/{int(self.postgres['version'])}/bin/{program}"

    def host(self, name_or_role: str) -> Host:
        for h in self.all_hosts:
            if name_or_role in (h.name, h.role, h.address):
                return h
        raise ParamsError(f"no host called {name_or_role!r}; hosts are "
                          + ", ".join(h.name for h in self.all_hosts))


# --- loading ---------------------------------------------------------------------------
def read_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a parameter file; YAML errors and missing files become ParamsError."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"parameter file {path} does not exist "
                          f"(the files in params/ are: {', '.join(sorted(p.name for p in (REPO / 'params').glob('*.yaml')))})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ParamsError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path} must be a mapping of parameters at its top level")
    return data


def load(source: str | os.PathLike | dict[str, Any] | None = None, **injected: Any) -> Params:
    """Validated parameters from a file, a dict, or the notebook's injected variables.

    In a notebook: `load(environment=environment, hosts=hosts, ...)`. Variables left None
    are not set; when nothing at all is set, params/lab.yaml applies (the built-in lab).
    """
    if source is None:
        given = {k: v for k, v in injected.items() if v is not None}
        data = given if given else read_file(DEFAULT_FILE)
    elif isinstance(source, dict):
        data = source
    else:
        data = read_file(source)
    return validate(data)


#: pool_hba's client line may admit at most this large a network (10.0.0.0/8 is one organisation's)
MIN_CLIENTS_PREFIX = 8


def validate(data: dict[str, Any]) -> Params:
    out = _section("", data, SCHEMA)
    _check_hosts(out)
    _fill_templates(out["postgres"])
    if out["pgpool"]["allowed_clients"] is None:
        if out["lab"] is None:
            raise ParamsError("missing parameter pgpool.allowed_clients: the network (CIDR) whose clients "
                              "may connect to pgpool, e.g. 192.0.2.0/24 (the guide's 0.0.0.0/0 admits anyone)")
        out["pgpool"]["allowed_clients"] = out["lab"]["subnet"]
    if out["pgpool"]["admin_clients"] is None:
        if out["lab"] is None:
            raise ParamsError("missing parameter pgpool.admin_clients: the address (CIDR, e.g. 192.0.2.10/32) of the "
                              "machine that runs the notebooks, the only one besides the pgpool host from which the "
                              "superuser may log in through pgpool")
        out["pgpool"]["admin_clients"] = f"{out['lab']['gateway']}/32"
    clients = ipaddress.IPv4Network(out["pgpool"]["allowed_clients"])
    if clients.prefixlen < MIN_CLIENTS_PREFIX:
        raise ParamsError(f"pgpool.allowed_clients = {clients} admits {clients.num_addresses:,} addresses, anyone "
                          "who can reach pgpool, to try the superuser's password (the guide's 0.0.0.0/0): name the "
                          f"clients' network, at most a /{MIN_CLIENTS_PREFIX}")
    return Params(**out, raw=data)


def _section(where: str, value: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Validate one mapping against its spec; where="" is the top level."""
    if value is None:
        raise ParamsError(f"missing parameter section {where!r}")
    if not isinstance(value, dict):
        raise ParamsError(f"{where or 'the parameters'} must be a mapping, not {type(value).__name__} ({value!r})")
    unknown = sorted(set(value) - set(spec))
    secret_like = [k for k in unknown if re.search(r"pass|secret|key$|token", str(k), re.I)]
    if secret_like:
        raise ParamsError(f"{_join(where, secret_like[0])}: secrets never go in parameter files (they end up in "
                          "the executed notebooks); set them as environment variables or in a secrets file, "
                          "see book/operate.md, Parameters and secrets")
    if unknown:
        raise ParamsError(f"unknown parameter {_join(where, unknown[0])}; {where or 'the top level'} takes "
                          + ", ".join(spec))
    result = {}
    for key, sub in spec.items():
        path = _join(where, key)
        if not isinstance(sub, dict):
            result[key] = _value(path, value.get(key), sub)
        elif value.get(key) is None and path in OPTIONAL_SECTIONS:
            result[key] = None if path == "lab" else _section(path, {}, sub)
        else:
            result[key] = _section(path, value.get(key), sub)
    return result


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_HOSTNAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
#: an absolute path on a host; {version} and {cluster} are filled in afterwards
_HOST_PATH = re.compile(r"(/[A-Za-z0-9_.{}-]+)+/?")
#: a path on this machine: may start with ~ and be relative to the repository
_LOCAL_PATH = re.compile(r"~?[A-Za-z0-9_./+-]+")


def _value(path: str, value: Any, spec: tuple) -> Any:
    kind, required, default = spec
    if value is None:
        if required:
            raise ParamsError(f"missing parameter {path}")
        return default
    if isinstance(kind, list):
        if not isinstance(value, list) or not value:
            raise ParamsError(f"{path} must be a non-empty list")
        return [_section(f"{path}[{i}]", item, kind[0]) for i, item in enumerate(value)]
    if kind == "debian":
        if value not in LAB_RELEASES:
            raise ParamsError(f"{path} = {value!r}: the lab builds Debian "
                              + " or ".join(str(v) for v in LAB_RELEASES))
        return value
    if kind in (int, "port"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{path} must be a whole number, not {value!r}")
        if kind == "port" and not 1 <= value <= 65535:
            raise ParamsError(f"{path} = {value} is not a TCP port (1-65535)")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{path} must be true or false, not {value!r}")
        return value
    if not isinstance(value, str):
        raise ParamsError(f"{path} must be a string, not {type(value).__name__} ({value!r})")
    if kind == "auth_method" and value not in ("scram-sha-256", "md5"):
        raise ParamsError(f"{path} = {value!r}: choose scram-sha-256 (the default) or md5 (the guide's way)")
    if kind == "name" and not _NAME.fullmatch(value):
        raise ParamsError(f"{path} = {value!r}: use letters, digits, '.', '_' and '-' only (at most 63)")
    if kind == "hostname" and not _HOSTNAME.fullmatch(value):
        raise ParamsError(f"{path} = {value!r} is not a valid host name "
                          "(lower-case letters, digits and '-', at most 63)")
    if kind == "address":
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise ParamsError(f"{path} = {value!r} is not an IPv4 address") from None
    if kind == "cidr":
        try:
            ipaddress.IPv4Network(value)
        except ValueError as e:
            raise ParamsError(f"{path} = {value!r} is not a network like 10.0.0.0/24 ({e})") from None
    if kind == "host_path":
        if not _HOST_PATH.fullmatch(value) or "/../" in f"{value}/" or "/./" in f"{value}/":
            raise ParamsError(f"{path} = {value!r}: give an absolute path of letters, digits, '.', '_', '-' "
                              "and '/' (no spaces, no '..'; {version} and {cluster} may be used)")
    if kind == "path":
        if not _LOCAL_PATH.fullmatch(value):
            raise ParamsError(f"{path} = {value!r}: use a path of letters, digits, '.', '_', '-', '+' and '/' "
                              "(no spaces or shell characters)")
        return str(resolve_path(value))
    return value


def resolve_path(value: str) -> Path:
    """`~` is the user's home; a relative path is relative to the repository."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else REPO / p


def _check_hosts(out: dict[str, Any]) -> None:
    hosts = [out["hosts"]["primary"], *out["hosts"]["standbys"], out["hosts"]["pgpool"]]
    primary = out["hosts"]["primary"]
    for i, standby in enumerate(out["hosts"]["standbys"]):
        if standby["address"] == primary["address"]:
            raise ParamsError(f"hosts.standbys[{i}].address {standby['address']} is the primary's address: "
                              "a standby must be another machine (Part 1 clears the standby's data directory)")
    seen: dict[str, str] = {}
    for h in hosts:
        for key in ("address", "name"):
            if h[key] in seen:
                raise ParamsError(f"two hosts share the {key} {h[key]!r} "
                                  f"({seen[h[key]]} and {h['name']}): each host needs its own")
            seen[h[key]] = h["name"]
    lab = out["lab"]
    if lab:
        subnet = ipaddress.IPv4Network(lab["subnet"])
        for h in hosts + [{"name": "lab.gateway", "address": lab["gateway"]}]:
            if ipaddress.IPv4Address(h["address"]) not in subnet:
                raise ParamsError(f"{h['name']} address {h['address']} is outside lab.subnet {subnet}")
        if lab["gateway"] in seen:
            raise ParamsError(f"lab.gateway {lab['gateway']} is also a host's address")


def _fill_templates(postgres: dict[str, Any]) -> None:
    """Paths may say {version} and {cluster}: Debian and Ubuntu put the major version in them."""
    for key in ("conf_dir", "data_dir", "log_file"):
        # replaced literally: str.format would also evaluate {version.__class__} and the like
        filled = postgres[key].replace("{version}", str(postgres["version"])).replace("{cluster}", str(postgres["cluster"]))
        if "{" in filled or "}" in filled:
            raise ParamsError(f"postgres.{key} = {postgres[key]!r}: only {{version}} and {{cluster}} may be filled in")
        postgres[key] = filled
