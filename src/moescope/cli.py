"""The ``moescope`` command line: one thin command per job (parse, call the library, say where)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

app = typer.Typer(
    name="moescope",
    help="Measure the geometry of high-dimensional spaces and of Mixture-of-Experts models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


@app.callback()
def main() -> None:
    """Measure the geometry of high-dimensional spaces and of Mixture-of-Experts models."""


def _parse_dims(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers such as 2,10,100; got {text!r}") from None
    if not dims or min(dims) < 2:
        raise typer.BadParameter(f"every dimension must be an integer >= 2; got {text!r}")
    return dims


@app.command()
def sphere(
    dims: Annotated[str, typer.Option(help="Comma-separated dimensions d of the spheres S^(d-1) to measure.")]
    = "2,3,10,100,1000,10000",
    samples: Annotated[
        int, typer.Option(min=2, help="Gaussian rows drawn per dimension (half of them form cosine pairs).")
    ] = 20_000,
    points: Annotated[int, typer.Option(min=2, help="Points per query for the relative distance contrast.")] = 999,
    seed: Annotated[int, typer.Option(help="Seed of every random draw; the same seed gives the same numbers.")] = 0,
    out: Annotated[Path, typer.Option(help="Folder for report.html, results.json and the PNG figures.")]
    = Path("out/sphere"),
) -> None:
    """Exact sphere laws against Monte Carlo: near-orthogonality, equidistance, the equator."""
    from moescope.lab.sphere_laws import SphereConfig, run_sphere, total_rows
    from moescope.report.sphere import write_sphere_report

    try:
        cfg = SphereConfig(dims=_parse_dims(dims), samples=samples, points_per_query=points, seed=seed)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    start = time.perf_counter()
    columns = (TextColumn("sampling spheres"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("rows", total=total_rows(cfg))
        results = run_sphere(cfg, on_rows=lambda n: progress.advance(task, n))
    written = write_sphere_report(results, out)
    for claim in results["claims"]:
        console.print(f"[bold]Claim {claim['id']}.[/bold] {claim['sentence']}")
    console.print(f"Report: {written['report']}  (results: {written['results']}) "
                  f"in {time.perf_counter() - start:.1f} s")
