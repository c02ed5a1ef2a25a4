"""Task recipes: ingest -> teacher-fill -> evaluate (base) -> train -> evaluate (trained) -> report.

Each task module (summarization, qa, code) names its config and bundled sample data;
:func:`pipelines.chain.run_recipe` runs the chain. ``tacorl-offline pipeline TASK`` and
``tacorl-offline quickstart`` (the summarization recipe on the embedded defaults) call it.
"""

from pipelines.chain import RECIPES, Recipe, run_recipe

__all__ = ["RECIPES", "Recipe", "run_recipe"]
