"""Task recipes: a plain mapping from task name to its config and bundled sample data.

``tacorl-offline pipeline TASK`` and ``tacorl-offline quickstart`` (the summarization recipe on
the embedded defaults) look a recipe up here and run it through
:func:`tacorl_offline.chain.run_chain` (ingest -> teacher-fill -> evaluate (base) -> train ->
evaluate (trained) -> report). Only the CLI imports this package; the library never does.
"""

from tacorl_offline.chain import Recipe

RECIPES: dict[str, Recipe] = {
    "summarization": Recipe(
        name="summarization",
        config="summarization.yaml",
        data="summarization.json",
        about="Meeting summarization (upstream TACO-RL task), BLEU against the teacher's summary",
    ),
    "qa": Recipe(
        name="qa",
        config="qa.yaml",
        data="qa.jsonl",
        about="Extractive QA with a never-compressed question, SQuAD F1",
    ),
    "code": Recipe(
        name="code",
        config="code.yaml",
        data="code.jsonl",
        about="Code summarization, ROUGE-L",
    ),
}

__all__ = ["RECIPES", "Recipe"]
