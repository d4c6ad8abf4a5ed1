"""docs/compiler.md shows the pipeline as declared (it is printed from the declaration)."""

from pathlib import Path

from sbnet.compiler.tables import markdown


def test_pipeline_table_in_the_docs_is_the_declaration():
    doc = (Path(__file__).parents[2] / "docs" / "compiler.md").read_text()
    assert markdown() in doc, "run: python -m sbnet.compiler.tables, paste into docs/compiler.md"
