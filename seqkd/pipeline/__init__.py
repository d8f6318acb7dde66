"""Recipes: a whole distillation pipeline from one YAML file, in cached, resumable stages, with a report
(``seqkd run RECIPE``). :mod:`.recipe` loads and validates recipes, :mod:`.run` plans and runs their stages,
:mod:`.jobs` holds what each job does, :mod:`.report` writes the report."""

from seqkd.pipeline.recipe import BUILTIN, Recipe, Stage, load_recipe

__all__ = ["BUILTIN", "Recipe", "Stage", "load_recipe"]
