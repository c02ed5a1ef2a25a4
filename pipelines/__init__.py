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
        data="sample/summarization.json",
        heldout_share=0.25,
        sft=True,
        about="Meeting summarization (upstream TACO-RL task), BLEU against the teacher's summary; "
        "a quarter of the prompts held out",
    ),
    "qa": Recipe(
        name="qa",
        config="qa.yaml",
        data="squad/train.jsonl",
        heldout="squad/heldout.jsonl",
        sft=True,
        val_share=0.2,
        about="Real SQuAD 2.0 paragraphs, question-aware: SFT warm start, then RL; SQuAD F1 on held-out",
    ),
    "code": Recipe(
        name="code",
        config="code.yaml",
        data="sample/code.jsonl",
        about="Code summarization, ROUGE-L",
    ),
}

__all__ = ["RECIPES", "Recipe"]
