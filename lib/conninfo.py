"""libpq connection strings: primary_conninfo as postgresql.auto.conf holds it, parsed, and values
quoted as libpq reads them."""
from __future__ import annotations


def conninfo_fields(auto_conf_text: str) -> dict[str, str]:
    """primary_conninfo's keywords, from postgresql.auto.conf's text. Two quotings nest: the
    file's ('' and \\ doubled, as ALTER SYSTEM writes them) around libpq's (a value in '...'
    with \\' and \\\\ escaped, or bare with \\ escapes)."""
    # the server takes the last line: pg_basebackup -R appends its own after one copied from the
    # source (a promoted standby keeps its old primary_conninfo)
    line = ([l for l in auto_conf_text.splitlines() if l.startswith("primary_conninfo")] or [""])[-1]
    quoted = line.split("=", 1)[1].strip() if line else ""
    return parse_conninfo(_unquote_setting(quoted[1:-1] if quoted.startswith("'") else quoted))


def _unquote_setting(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] in "'\\" and i + 1 < len(text):
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out)


def parse_conninfo(text: str) -> dict[str, str]:
    """A libpq keyword/value connection string (as SHOW primary_conninfo gives it) as a dict."""
    fields, i, n = {}, 0, len(text)
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        if i >= n or "=" not in text[i:]:
            break
        eq = text.index("=", i)
        key, i = text[i:eq].strip(), eq + 1
        while i < n and text[i].isspace():
            i += 1
        quoted = i < n and text[i] == "'"
        i += quoted
        value = []
        while i < n and (text[i] != "'" if quoted else not text[i].isspace()):
            if text[i] == "\\" and i + 1 < n:
                i += 1
            value.append(text[i])
            i += 1
        i += quoted
        fields[key] = "".join(value)
    return fields


def conninfo_quote(value: str) -> str:
    """A libpq connection-string value, quoted when it needs to be."""
    if value and all(c.isalnum() or c in "._-/:@" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
