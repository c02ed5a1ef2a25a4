"""Recipe: Code summarization, ROUGE-L."""

from pipelines.chain import Recipe, register

RECIPE = register(
    Recipe(
        name="code",
        config="code.yaml",
        data="code.jsonl",
        about="Code summarization, ROUGE-L",
    )
)
