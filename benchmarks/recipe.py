"""Benchmark: a built-in recipe end to end (``seqkd run RECIPE``), its report committed as a result.

Runs ``seqkd run RECIPE --out benchmarks/work/recipes/RECIPE [KEY=VALUE ...]`` in a fresh process (cached stages are
reused: a killed run continues; ``--fresh`` starts over; the two multi30k recipes share ``recipes/multi30k``), times
the whole command, and writes ``benchmarks/results/recipe_RECIPE.{json,md}`` (the report's data and text with the
commit, the command and the machine), the report's plots beside them (``recipe_RECIPE_files/``) and its
self-contained ``recipe_RECIPE.html``.
With a headless Chromium at hand (``pip install playwright`` and ``playwright install chromium``, or any Chromium
binary named by ``SEQKD_CHROMIUM``, e.g. the one npm's ``@sparticuz/chromium`` unpacks where only package registries
are reachable), it also screenshots the HTML report as a browser shows it (``recipe_RECIPE.screenshot.png``); without
one it says so.

    python benchmarks/recipe.py synthetic            # ~3.5 minutes on 2 CPU cores
    python benchmarks/recipe.py multi30k-de-en       # hours on 2 CPU cores (resumable)
    python benchmarks/recipe.py smollm2-layers       # ~4.5 hours after smollm2-draft (its run directory)
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import common

ROOT = Path(__file__).resolve().parents[1]
# recipes that share stages share a run directory, so those stages run once for both (the multi30k recipes' teacher,
# corpus and seq-KD student; benchmarks/teachers_multi30k.py runs multi30k-teachers there too; smollm2-layers' target,
# corpus and first:4 draft are smollm2-draft's)
RUN_DIRS = {"multi30k-de-en": "multi30k", "multi30k-teachers": "multi30k", "smollm2-layers": "smollm2-draft"}
# what a Chromium of one's own needs to start without a display, a sandbox or a GPU
CHROMIUM_ARGS = ["--no-sandbox", "--no-zygote", "--single-process", "--disable-gpu", "--use-gl=angle",
                 "--use-angle=swiftshader", "--font-render-hinting=none"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe", help="a built-in recipe (synthetic, multi30k-de-en, multi30k-teachers, smollm2-draft, "
                   "smollm2-layers)")
    p.add_argument("overrides", nargs="*", help="STAGE.FIELD=VALUE, as seqkd run takes them")
    p.add_argument("--jobs", type=int, default=1, help="seqkd run --jobs: training stages ready together run N at a "
                   "time, each with 1/N of the cores")
    p.add_argument("--fresh", action="store_true", help="delete the run directory first (every stage runs; the "
                   "multi30k recipes share theirs)")
    return p.parse_args(argv)


def screenshot(html: Path, png: Path) -> str | None:
    """A headless Chromium's screenshot of ``html`` (full page); None if it was made, else why not."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "no headless Chromium: playwright is not installed"
    exe = os.environ.get("SEQKD_CHROMIUM")  # a Chromium binary of one's own (e.g. npm's @sparticuz/chromium)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(**({"executable_path": exe, "args": CHROMIUM_ARGS} if exe else {}))
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(html.resolve().as_uri())
            page.screenshot(path=str(png), full_page=True)
            browser.close()
    except Exception as e:  # no browser binary (playwright install chromium), or it failed to start
        return f"no headless Chromium: {str(e).strip().splitlines()[0][:200]}"
    return None


def main(argv=None) -> None:
    a = parse_args(argv)
    run = ROOT / "benchmarks" / "work" / "recipes" / RUN_DIRS.get(a.recipe, a.recipe)
    if a.fresh and run.exists():
        shutil.rmtree(run)
    t0 = time.perf_counter()
    report = common.run_recipe(a.recipe, run, a.overrides, a.jobs)
    wall = time.perf_counter() - t0
    name = f"recipe_{a.recipe.replace('-', '_')}"
    # a path of this machine anywhere in the report: nothing written (write_results checks its own files; the HTML
    # and the plots are copied before it)
    common.scrub(report, "report")
    common.scrub((run / "report.html").read_text(encoding="utf-8"), "report.html")
    results = ROOT / "benchmarks" / "results"
    files = results / f"{name}_files"
    if files.exists():
        shutil.rmtree(files)
    shutil.copytree(run / "report_files", files)
    shutil.copyfile(run / "report.html", results / f"{name}.html")
    ran = [n for n, s in report["stages"].items() if s["this_run"] == "ran"]
    why_no_shot = screenshot(results / f"{name}.html", results / f"{name}.screenshot.png")
    md = (run / "report.md").read_text(encoding="utf-8").replace("](report_files/", f"]({files.name}/")
    title, _, body = md.partition("\n")
    note = (f"Whole command: {wall:.0f} s; stages run by it: {', '.join(ran) or 'none (all cached)'}. "
            + (f"Browser screenshot: {why_no_shot}." if why_no_shot else
               f"Browser screenshot of the HTML report: `{name}.screenshot.png`."))
    common.write_results(name, {"report": report, "wall_s": wall, "stages_run": ran, "screenshot": why_no_shot},
                         f"{title}\n\n{note}\n{body}")
    print(f"{results / name}.md ({wall:.0f} s)")


if __name__ == "__main__":
    main()
