"""Recipe: Meeting summarization (upstream TACO-RL task), BLEU against the teacher's summary."""

from pipelines.chain import Recipe, register

RECIPE = register(
    Recipe(
        name="summarization",
        config="summarization.yaml",
        data="summarization.json",
        about="Meeting summarization (upstream TACO-RL task), BLEU against the teacher's summary",
    )
)
