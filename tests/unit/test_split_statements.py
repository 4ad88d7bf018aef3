"""The SQL splitter that sends a migration one statement per message (store.split_statements): it
splits at the semicolons PostgreSQL ends statements at, and at no other (in strings, quoted names,
comments and dollar-quoted function bodies), and refuses a script whose dollar quote never ends."""

from __future__ import annotations

from importlib import resources

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discount_service.store import split_statements

EXAMPLES = settings(database=None, max_examples=200, deadline=None)


def test_statements_are_split_at_their_semicolons_without_them() -> None:
    assert split_statements("SELECT 1; SELECT 2;\nCREATE TABLE t (id int);") == [
        "SELECT 1",
        "SELECT 2",
        "CREATE TABLE t (id int)",
    ]
    assert split_statements("SELECT 1") == ["SELECT 1"]  # the last one may lack its semicolon


def test_semicolons_in_strings_and_quoted_names_stay_in_their_statement() -> None:
    script = """INSERT INTO notes VALUES ('a;b', 'it''s; fine');
SELECT "odd;name" FROM "t;1";"""
    assert split_statements(script) == [
        "INSERT INTO notes VALUES ('a;b', 'it''s; fine')",
        'SELECT "odd;name" FROM "t;1"',
    ]


def test_semicolons_in_comments_do_not_split() -> None:
    script = """-- first; the table
CREATE TABLE t (id int); /* then; an index
   over two lines; */ CREATE INDEX t_id ON t (id);
SELECT 1 -- don't; split here
;"""
    assert split_statements(script) == [
        "-- first; the table\nCREATE TABLE t (id int)",
        "/* then; an index\n   over two lines; */ CREATE INDEX t_id ON t (id)",
        "SELECT 1 -- don't; split here",
    ]


def test_a_piece_that_is_only_comments_or_blank_is_not_a_statement() -> None:
    assert split_statements("") == []
    assert split_statements(" ;\n;; ") == []
    assert split_statements("SELECT 1; -- the end\n/* really; */\n") == ["SELECT 1"]


def test_a_dollar_quoted_function_body_is_one_statement() -> None:
    function = """CREATE FUNCTION bump(p int) RETURNS int AS $$
BEGIN
    UPDATE counters SET n = n + p; -- not the end
    RETURN p;
END;
$$ LANGUAGE plpgsql"""
    tagged = """CREATE FUNCTION note() RETURNS text AS $body$
    SELECT 'a $$ inside; and a quote '' too'::text;
$body$ LANGUAGE sql"""
    assert split_statements(f"{function};\n{tagged};\nSELECT bump(1);") == [function, tagged, "SELECT bump(1)"]


@pytest.mark.parametrize(
    ("script", "tag"),
    [
        ("CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; ", "$$"),
        ("CREATE FUNCTION f() RETURNS int AS $fn$ SELECT 1; $$; SELECT 2;", "$fn$"),
    ],
)
def test_an_unterminated_dollar_quote_is_refused_naming_its_tag(script: str, tag: str) -> None:
    with pytest.raises(ValueError, match=f"^unterminated dollar quote {tag.replace('$', '[$]')}$"):
        split_statements(script)


def test_every_shipped_script_splits_into_whole_statements() -> None:
    package = resources.files("discount_service")
    scripts = [package.joinpath("sql/schema.sql")]
    scripts += sorted(
        (f for f in package.joinpath("migrations").iterdir() if f.name.endswith(".sql")), key=lambda f: f.name
    )
    assert len(scripts) > 1
    for script in scripts:
        statements = split_statements(script.read_text())
        assert statements, script.name
        for statement in statements:
            assert statement == statement.strip() and not statement.endswith(";"), (script.name, statement)


# -- any script built from the pieces PostgreSQL lexes, joined by semicolons, splits back -------------

# Text weighted towards the characters that end or open something in SQL.
anything = st.text(
    st.one_of(st.sampled_from(";'\"$-/*\n"), st.characters(codec="utf-8", exclude_characters="\x00")), max_size=20
)
words = st.from_regex(r"[A-Za-z_][A-Za-z_0-9]{0,8}|[0-9]{1,4}|[(),.=*<>+-]", fullmatch=True)
strings = anything.map(lambda text: "'" + text.replace("'", "''") + "'")
quoted_names = anything.map(lambda text: '"' + text.replace('"', '""') + '"')
line_comments = anything.filter(lambda text: "\n" not in text).map(lambda text: f"-- {text}\n")
block_comments = anything.filter(lambda text: "*/" not in text and "/*" not in text).map(lambda text: f"/*{text}*/")
dollar_quoted = st.tuples(st.sampled_from(["$$", "$fn$", "$body_1$"]), anything).map(
    lambda tag_text: tag_text[0] + tag_text[1].replace("$", "") + tag_text[0]
)
pieces = st.one_of(words, strings, quoted_names, line_comments, block_comments, dollar_quoted)
# Unstripped: a statement that ends in a line comment keeps the newline that ends the comment.
statements = st.tuples(words, st.lists(pieces, max_size=8)).map(lambda s: " ".join([s[0], *s[1]]))


@EXAMPLES
@given(st.lists(statements, min_size=1, max_size=6), st.booleans())
def test_any_script_splits_back_into_the_statements_it_was_made_of(written: list[str], final: bool) -> None:
    script = ";\n".join(written) + (";" if final else "")
    assert split_statements(script) == [statement.strip() for statement in written]
