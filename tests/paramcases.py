"""Every string parameter of the schema, with a valid value, for the injection tests."""
from lib import params as P

#: each is tried appended to a valid value and on its own
INJECTIONS = {"a command after ';'": ";touch /tmp/x", "a command substitution": "$(touch /tmp/x)",
              "a trailing newline": "\n", "a space": " "}
_STRING_KINDS = {"name", "hostname", "address", "cidr", "path", "host_path", "auth_method"}


def string_parameters(data: dict) -> list[tuple[str, str]]:
    """(dotted key as set_key takes it, its value in data or its default) for every string
    parameter; standbys[0] stands for the list's entries."""
    found = []

    def walk(prefix, spec, value):
        for key, sub in spec.items():
            path = f"{prefix}{key}"
            here = (value or {}).get(key)
            if isinstance(sub, dict):
                walk(f"{path}.", sub, here)
            elif isinstance(sub[0], list):
                walk(f"{path}.0.", sub[0][0], (here or [{}])[0])
            elif sub[0] in _STRING_KINDS:
                found.append((path, here if here is not None else sub[2]))
    walk("", P.SCHEMA, data)
    return found


def cases(data: dict):
    """(key, bad value, description) for every string parameter and every injection."""
    for key, valid in string_parameters(data):
        for what, text in INJECTIONS.items():
            for bad in {str(valid or "x") + text, text}:
                yield key, bad, f"{key}: {what}"


def set_key(path: str, value):
    """A change to parameter data: the dotted key (list entries by index) set to value."""
    def change(data):
        *parents, last = path.split(".")
        node = data
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        node[last] = value
    return change
