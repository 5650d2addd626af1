"""The configuration reference (docs/configuration.md and the README's Settings table) is what
the settings model generates: a key added, removed, retyped, re-defaulted or re-described in
the model without regenerating fails here, saying how to regenerate."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from sevpipe.cli import main
from sevpipe.settings import Settings
from sevpipe.settings_doc import (
    DOC,
    END,
    REGENERATE,
    START,
    current_block,
    default_text,
    missing_descriptions,
    nested_models,
    readme_block,
    reference,
    replace_block,
    type_name,
)

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def _stale(what: str, committed: str, generated: str) -> str:
    diff = "".join(
        difflib.unified_diff(
            committed.splitlines(keepends=True),
            generated.splitlines(keepends=True),
            "committed",
            "generated from the model",
            n=0,
        )
    )
    return (
        f"{what} disagrees with the settings model (sevpipe/settings.py and the models nested in "
        f"it). Regenerate it from the repository's root with:\n\n    {REGENERATE}\n\n"
        f"and commit the result.\n{diff[:4000]}"
    )


def test_docs_configuration_is_what_the_model_generates() -> None:
    committed = (ROOT / DOC).read_text(encoding="utf-8")
    generated = reference()
    assert committed == generated, _stale(DOC, committed, generated)


def test_readme_settings_table_is_what_the_model_generates() -> None:
    text = README.read_text(encoding="utf-8")
    block = current_block(text)
    assert block is not None, (
        f"README.md has no {START} ... {END} block in its Settings section; put the two "
        f"markers back and run: {REGENERATE}"
    )
    assert block == readme_block(), _stale("README.md's Settings table", block, readme_block())


def test_every_setting_has_a_description() -> None:
    missing = missing_descriptions()
    assert not missing, (
        "settings without a description (give each Field(..., description=...), then run "
        f"{REGENERATE}): {', '.join(missing)}"
    )


def test_every_key_and_its_variable_is_in_the_reference() -> None:
    doc = reference()
    for name in Settings.model_fields:
        assert f"| `{name}` |" in doc
        assert f"`SEVPIPE_{name.upper()}`" in doc
    prefixes = dict(nested_models())
    assert set(prefixes) == {"slack", "email", "statuspage", "aws", "operators[]"}
    for prefix, model in prefixes.items():
        assert f"## {prefix.removesuffix('[]')}\n" in doc
        for name in model.model_fields:
            assert f"| `{prefix}.{name}` |" in doc


def test_types_and_defaults_read_as_a_person_would_write_them() -> None:
    fields = Settings.model_fields
    assert type_name(fields["port"].annotation, fields["port"].metadata) == "integer (0..65535)"
    assert default_text(fields["port"]) == "`9095`"
    assert type_name(fields["approval_ttl"].annotation, fields["approval_ttl"].metadata) == (
        "duration (> 0)"
    )
    assert default_text(fields["approval_ttl"]) == "`30m`"
    assert type_name(fields["fsync"].annotation) == "one of `full`, `normal`"
    assert type_name(fields["auth_token"].annotation) == "secret"
    assert default_text(fields["auth_token"]) == "none"
    assert default_text(fields["allow_unauthenticated"]) == "`false`"
    assert default_text(fields["max_body_bytes"]) == "`1048576` (1 MiB)"
    assert default_text(fields["operators"]) == "`[]`"
    assert default_text(fields["public_url"]) == '`""`'


class _Deep(BaseModel):
    depth: int = Field(2, description="how deep")


class _Inner(BaseModel):
    """An inner object."""

    size: int = Field(1, ge=1, description="how | big")
    where: str = Field(description="at <host>")
    deep: _Deep = Field(default_factory=_Deep, description="an object in an object")


class _Model(BaseModel):
    """A model the reference is made from."""

    name: str = Field("x", description="a name")
    inner: _Inner | None = Field(None, description="an object")
    many: list[_Inner] = Field(default_factory=list)


def test_a_model_change_changes_the_reference() -> None:
    doc = reference(_Model)
    assert "| `name` | string | `x` | `SEVPIPE_NAME` | a name |" in doc
    assert "| `inner` | object, see [inner](#inner) | none | `SEVPIPE_INNER` | an object |" in doc
    assert "| `inner.size` | integer (>= 1) | `1` | how \\| big |" in doc  # no column break
    assert "| `inner.where` | string | required | at \\<host> |" in doc  # no HTML tag
    assert "## inner.deep\n\nAn object in an object.\n" in doc
    assert "| `inner.deep` | object, see [inner.deep](#innerdeep) | its keys' defaults |" in doc
    assert "| `inner.deep.depth` | integer | `2` | how deep |" in doc
    assert "## many\n" in doc
    assert "| `many[].size` |" in doc
    assert missing_descriptions(_Model) == ["many"]
    assert reference(_Model) != reference()


def test_replace_block_keeps_the_rest_and_needs_the_markers() -> None:
    text = f"before\n{START}\nold\n{END}\nafter\n"
    assert replace_block(text, f"{START}\nnew\n{END}") == f"before\n{START}\nnew\n{END}\nafter\n"
    with pytest.raises(ValueError, match="settings-reference"):
        replace_block("no markers here\n", "x")
    assert current_block("no markers\n") is None


def test_the_command_prints_writes_and_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["settings", "reference"]) == 0
    assert capsys.readouterr().out == reference()

    out, readme = tmp_path / "docs" / "configuration.md", tmp_path / "README.md"
    readme.write_text(f"# x\n\n{START}\nstale\n{END}\n\nrest\n", encoding="utf-8")
    args = ["settings", "reference", "--out", str(out), "--readme", str(readme)]
    assert main([*args, "--check"]) == 1
    said = capsys.readouterr()
    assert REGENERATE in said.err
    assert not out.exists()  # --check changes nothing

    assert main(args) == 0
    assert capsys.readouterr().out.split() == [str(out), str(readme)]
    assert out.read_text(encoding="utf-8") == reference()
    written = readme.read_text(encoding="utf-8")
    assert written == f"# x\n\n{readme_block()}\n\nrest\n"

    assert main([*args, "--check"]) == 0
    assert main(args) == 0
    assert capsys.readouterr().out == ""  # nothing to write: nothing written


def test_the_command_says_when_the_readme_has_no_markers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n", encoding="utf-8")
    assert main(["settings", "reference", "--readme", str(readme)]) == 2
    assert "settings-reference:start" in capsys.readouterr().err
    assert readme.read_text(encoding="utf-8") == "# no markers\n"
