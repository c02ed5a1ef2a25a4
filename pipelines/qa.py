"""Recipe: Extractive QA with a never-compressed question, SQuAD F1."""

from pipelines.chain import Recipe, register

RECIPE = register(
    Recipe(
        name="qa",
        config="qa.yaml",
        data="qa.jsonl",
        about="Extractive QA with a never-compressed question, SQuAD F1",
    )
)
