"""How the book highlights a step's output: the transcript a person could type, then what it printed.

A line `host (user) $ command` (indented, in the appendix) is a prompt and a shell command, and a trailing
`    # …` its comment; a command broken after `&&` goes on in the indented lines below it, and a new file
written from a here-document (`install … <<'EOF'`) is shell up to its end word. A file's diff lines (`  +…`,
`  -…`) are inserted and deleted text. The rest is output, left plain.
"""
from __future__ import annotations

from pygments.lexer import RegexLexer, bygroups, default, using
from pygments.lexers.shell import BashLexer
from pygments.token import Comment, Error, Generic, Text

PROMPT = r"^(\s*[^\n$]*?\([^)\n]+\) \$ )"
#: a command that writes a file from a here-document, its text, and the here-document's end word
HEREDOC = PROMPT + r"(.*<<'(\w+)'\n)((?:.*\n)*?)(\3(?:\n|$))"
COMMENT = r"( {2,}#.*)?$"        # to the end of the line


class _Shell(BashLexer):
    """Bash, where what it cannot read (a quote a shortened command leaves open) is plain text: Sphinx
    rejects a block with an error token."""

    def get_tokens_unprocessed(self, text, stack=("root",)):
        for index, token, value in super().get_tokens_unprocessed(text, stack):
            yield index, Text if token is Error else token, value


def _heredoc(lexer, match):
    """A file written from a here-document: the command and the file's text as shell, then its end word."""
    yield match.start(1), Generic.Prompt, match.group(1)
    for part in (2, 4):
        for index, token, value in _Shell().get_tokens_unprocessed(match.group(part)):
            yield match.start(part) + index, token, value
    yield match.start(5), Generic.Prompt, match.group(5)


class TranscriptLexer(RegexLexer):
    name = "pgguide transcript"
    aliases = ["pgguide-transcript"]

    tokens = {
        "root": [
            (HEREDOC, _heredoc),
            (PROMPT + r"(.*&&)(\n)", bygroups(Generic.Prompt, using(_Shell), Text), "continued"),
            (PROMPT + r"(.*?)" + COMMENT + r"(\n?)", bygroups(Generic.Prompt, using(_Shell), Comment.Single, Text)),
            (r"^(  )(\+.*)(\n?)", bygroups(Text, Generic.Inserted, Text)),
            (r"^(  )(-.*)(\n?)", bygroups(Text, Generic.Deleted, Text)),
            (r".+\n?|\n", Generic.Output),        # never an empty match: pygments would loop on it
        ],
        "continued": [          # the lines of a command broken after &&
            (r"^(\s+)(.*&&)(\n)", bygroups(Text, using(_Shell), Text)),
            (r"^(\s+)(.*?)" + COMMENT + r"(\n?)", bygroups(Text, using(_Shell), Comment.Single, Text), "#pop"),
            default("#pop"),
        ],
    }
