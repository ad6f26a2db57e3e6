"""The shipped recipes, installed with the package as `sft.recipes` (see pyproject.toml); look them up
with `sft.recipe.shipped_recipes()`. Nothing here is code to import."""
