"""The book's highlighting of outputs (lib/transcript_lexer.py)."""
from pygments.token import Comment, Error, Generic

from lib.transcript_lexer import TranscriptLexer
from tests.test_stored_notebooks import NOTEBOOKS


def kinds(text: str) -> list[tuple[object, str]]:
    return [(t, v) for t, v in TranscriptLexer().get_tokens(text) if v.strip()]


def test_prompts_commands_comments_diffs_and_output_each_get_their_own_kind():
    found = kinds("vm1 (root) $ edit /etc/x.conf    # as it was: x.conf.orig\n  -#a = 1\n  +a = 2\n"
                  "vm3 (root) $ systemctl restart pgpool2 &&\n    wait_for 30 'x' 'listens 9999'\n id | name\n")
    assert found[0] == (Generic.Prompt, "vm1 (root) $ ")
    assert (Comment.Single, "    # as it was: x.conf.orig") in found
    assert (Generic.Deleted, "-#a = 1") in found and (Generic.Inserted, "+a = 2") in found
    assert any(v == "wait_for" for t, v in found if t not in (Generic.Output, Generic.Prompt))   # the command goes on
    assert found[-1] == (Generic.Output, " id | name\n")


def test_a_file_written_from_a_here_document_is_shell_up_to_its_end_word():
    found = kinds("vm3 (root) $ install -m 750 /dev/stdin /etc/x.sh <<'EOF'\n#!/bin/bash\nset -u\nEOF\nafter\n")
    assert (Comment.Hashbang, "#!/bin/bash\n") in found and (Generic.Prompt, "EOF\n") in found
    assert found[-1] == (Generic.Output, "after\n")


def test_every_stored_output_is_read_without_an_error_token():
    import nbformat
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            for output in cell.get("outputs", []):
                text = output.get("text", "")
                assert not any(t is Error for t, _ in TranscriptLexer().get_tokens(text)), (path.name, text[:200])
