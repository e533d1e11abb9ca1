"""The ``moescope`` command line: one thin command per job (parse, call the library, say where)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from moescope._paths import (
    check_checkpoint_dir,
    check_contrast_spec,
    check_device_name,
    check_domain_spec,
    check_dtype_name,
    check_in_file,
    check_out_dir,
    check_out_file,
    option,
)

app = typer.Typer(
    name="moescope",
    help="Measure the geometry of high-dimensional spaces and of Mixture-of-Experts models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
# Every path a command is given is checked while the command line is parsed, before any work starts.
_OUT_DIR, _OUT_FILE, _IN_FILE = option(check_out_dir), option(check_out_file), option(check_in_file)
_CHECKPOINT, _DOMAIN = option(check_checkpoint_dir), option(check_domain_spec)
_CONTRAST = option(check_contrast_spec)
_DTYPE_HELP = ("The model's parameters: auto (the checkpoint's own dtype, from config.json or the safetensors "
               "files: bfloat16 for most released MoE checkpoints, whose matrix products run several times faster "
               "than float32's on CPUs with AMX and on GPUs), float32 (exact), bfloat16 or float16 (half the "
               "memory; bfloat16-trained weights can overflow in float16). The routers' softmax or sigmoid runs in "
               "float32 either way; their inputs (and in most families their logits) carry the dtype's rounding.")
_DEVICE_HELP = "Where the model runs: cpu, cuda (cuda:N) or mps, if this machine has it."
_DtypeOption = Annotated[str, typer.Option(callback=option(check_dtype_name), help=_DTYPE_HELP)]
_DeviceOption = Annotated[str, typer.Option(callback=option(check_device_name), help=_DEVICE_HELP)]


def _check_arch(value: str | None) -> str | None:
    from moescope.lab.model import ARCHS

    if value is not None and value not in ARCHS:
        raise typer.BadParameter(f"must be one of {', '.join(ARCHS)}; got {value!r}")
    return value


_ArchOption = Annotated[str | None, typer.Option(
    callback=_check_arch, help="The body the lab's runs train: llama (the default: RoPE, RMSNorm, q/k/v/o, what "
    "transformers' MoE families compute, so runs are exported for `moescope analyze`) or nanogpt (learned "
    "positions, LayerNorm: the body of the lab's numbers before llama).")]
# where the weights live (moescope.models.placement.Placement): the same four options on analyze, ablate and steer
_StreamOption = Annotated[bool, typer.Option(
    "--stream-layers", help="Run one decoder layer at a time from the safetensors shards (bounded memory, the same "
    "routing).")]
_MaxMemoryOption = Annotated[str | None, typer.Option(
    "--max-memory", metavar="SIZE", help="Memory budget such as 4GB or 512MiB: layers are streamed when the whole "
    "model would not fit; refused, naming the smallest workable budget, when even streaming would not. With "
    "--device-map: the CPU memory accelerate may fill.")]
_DeviceMapOption = Annotated[str | None, typer.Option(
    "--device-map", help="Spread the model with accelerate: auto, balanced, balanced_low_0 or sequential (GPUs "
    "first, then CPU memory up to --max-memory, then --offload-folder).")]
_OffloadOption = Annotated[Path | None, typer.Option(
    "--offload-folder", help="With --device-map: a folder for the weights that fit in no memory.")]


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
    out: Annotated[Path, typer.Option(callback=_OUT_DIR,
                                      help="Folder for report.html, results.json and the PNG figures.")]
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


def _read_sources(texts: list[Path], domains: list[str]):
    """The --text files and --domain NAME=FILE texts (checked while parsing) as analysis sources."""
    from moescope.analysis.analyze import Source

    sources = [Source(label=path.stem, text=path.read_text(errors="replace")) for path in texts]
    for spec in domains:
        name, _, file = spec.partition("=")
        sources.append(Source(label=name, text=Path(file).read_text(errors="replace"), domain=name))
    return tuple(sources)


def _parse_layers(text: str | None, flag: str = "--layers", what: str = "MoE layer") -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise typer.BadParameter(f"{flag} expects comma-separated {what} indices such as 0,3,7; got {text!r}") \
            from None


def _check_flip_check(windows: int) -> int:
    from moescope.analysis.analyze import check_flip_check

    return check_flip_check(windows)


@app.command()
def analyze(
    paths: Annotated[list[Path], typer.Argument(
        callback=_CHECKPOINT, metavar="PATH",
        help="A Hugging Face MoE checkpoint directory (config.json, safetensors weights, tokenizer); several, "
             "or one folder of checkpoint-N / step_N folders: a checkpoint series over training.")],
    text: Annotated[list[Path], typer.Option("--text", callback=_IN_FILE,
                                             help="A text file to route (repeatable).")] = [],  # noqa: B006
    domain: Annotated[list[str], typer.Option("--domain", callback=_DOMAIN,
                                              help="NAME=FILE: a text labelled with a domain, for domain "
                                                   "specialisation (repeatable).")] = [],  # noqa: B006
    layers: Annotated[str | None, typer.Option(help="Comma-separated MoE layer indices (default: all).")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="Tokens routed per text, at most.")] = 50_000,
    seq_len: Annotated[int, typer.Option(min=1, help="Tokens per sequence fed to the model.")] = 256,
    weights: Annotated[bool, typer.Option(help="Also measure expert and router weight geometry.")] = True,
    dtype: _DtypeOption = "auto",
    flip_check: Annotated[int, typer.Option(
        callback=option(_check_flip_check), help="When the model computes in bfloat16 or float16: windows of "
        "text (of --seq-len tokens, dealt over the texts) re-run in float32 to count, per MoE layer, the tokens "
        "whose expert set differs and how many of those are near-ties (float32 margin below 2^-8 of the k-th "
        "score); one more load of the model, in float32 (streamed if it does not fit; skipped with --device-map; "
        "0: off).")] = 8,
    device: _DeviceOption = "cpu",
    stream_layers: _StreamOption = False,
    max_memory: _MaxMemoryOption = None,
    device_map: _DeviceMapOption = None,
    offload_folder: _OffloadOption = None,
    activity_tokens: Annotated[int, typer.Option(
        min=0, help="Real tokens per MoE layer whose expert outputs are measured (the output subspaces, their "
        "overlap and interference against a permutation null, and the logit lens of each expert's mean output; "
        "0: off; needs resident weights).")] = 2048,
    ablation_windows: Annotated[int, typer.Option(
        min=0, help="Windows of text per domain for the re-route ablation map (the loss change when each expert "
        "is removed, with bootstrap intervals; exact for every cell when layers × experts <= 256, else first-order "
        "attribution and the top cells; needs resident weights; 0: off). `moescope ablate` does more.")] = 16,
    text_tokens: Annotated[int, typer.Option(
        min=0, help="Tokens of each text shown in the report as text coloured by expert, with a layer selector "
        "and the weights on hover (at most --seq-len; 0: off).")] = 256,
    trace: Annotated[Path | None, typer.Option(
        "--trace", metavar="FILE.parquet", help="Also write one row per routed token (document, position, token, "
        "and per MoE layer the chosen experts, their weights, router entropy and margin) to a Parquet file.")]
    = None,
    routing: Annotated[bool, typer.Option(
        help="Route text through the model. --no-routing: only the weight geometry, read expert by expert from "
        "the files (no model is built; memory stays near one expert matrix).")] = True,
    out: Annotated[Path, typer.Option(callback=_OUT_DIR, help="Folder for report.html and results.json.")]
    = Path("out/analyze"),
) -> None:
    """Routing health and expert geometry of an MoE checkpoint (no text given: a built-in
    code / language / math sample)."""
    if len(paths) > 1 or not (paths[0] / "config.json").is_file():
        if trace is not None or not routing:
            raise typer.BadParameter("--trace and --no-routing apply to one checkpoint, not to a series")
        _series(paths, sources=_read_sources(text, domain), layers=_parse_layers(layers), max_tokens=max_tokens,
                seq_len=seq_len, dtype=dtype, device=device, stream_layers=stream_layers, max_memory=max_memory,
                device_map=device_map, offload_folder=offload_folder, out=out)
        return
    path = paths[0]
    from moescope.analysis.analyze import AnalyzeConfig
    from moescope.analysis.analyze import analyze as run_analysis
    from moescope.models.sizes import format_size
    from moescope.report.analyze import write_analyze_report

    try:
        cfg = AnalyzeConfig(path=path, sources=_read_sources(text, domain), layers=_parse_layers(layers),
                            max_tokens=max_tokens, seq_len=seq_len, weights=weights, dtype=dtype,
                            device=device, stream_layers=stream_layers, max_memory=max_memory,
                            device_map=device_map, offload_folder=offload_folder, routing=routing, trace=trace,
                            activity_tokens=activity_tokens, text_tokens=text_tokens,
                            ablation_windows=ablation_windows, flip_check=flip_check)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    start = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("tokens"))
    try:
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("routing text", total=None)
            results = run_analysis(cfg, on_tokens=lambda n: progress.advance(task, n),
                                   on_stage=lambda label: progress.update(task, description=label, completed=0))
    except (FileNotFoundError, ValueError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(1) from None
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_rank() != 0:  # under torchrun: rank 0 writes
        return
    written = write_analyze_report(results, out)
    only = results.get("weights_only")
    if only is not None:
        peak = only["peak_rss_growth"]
        console.print(f"Read {format_size(only['bytes'])} of MoE weights in {only['seconds']:.1f} s "
                      f"({format_size(only['bytes_per_second'] or 0)}/s: a 100 GB checkpoint would take "
                      f"{(only['seconds_per_100GB'] or 0) / 60:.0f} min); peak memory growth "
                      f"{format_size(peak) if peak is not None else 'not measured on this OS'}.")
    _print_memory(results.get("memory"))
    _print_dtype(results)
    if trace is not None:
        console.print(f"Token trace: {trace} ({results['text']['tokens']} rows)")
    console.print(f"Report: {written['report']}  (results: {written['results']}) "
                  f"in {time.perf_counter() - start:.1f} s")


def _print_dtype(results: dict) -> None:
    """One line on the compute dtype and where it came from, and one on the float32 flip check, if it ran."""
    model = results["model"]
    if model.get("dtype_source") is None:
        return
    console.print(f"Computed in {model['dtype']}: {model['dtype_source']}.")
    flips = results.get("dtype_flips")
    if flips is None:
        return
    if "skipped" in flips:
        console.print(f"Flip check against float32 skipped: {flips['skipped']}.")
        return
    worst = max(flips["layers"], key=lambda r: r["flip_share"], default=None)
    if worst is not None:
        off = sum(r["flips_not_near_ties"] for r in flips["layers"])
        console.print(f"Flip check against float32 ({flips['tokens']} tokens per layer): expert sets differ for at "
                      f"most {worst['flip_share']:.2%} of tokens (layer {worst['layer']}); {off} flip(s) over all "
                      "layers were not near-ties.")


def _series(paths: list[Path], *, out: Path, **options) -> None:
    """A checkpoint series: every checkpoint routes the same text and is compared with the last."""
    from moescope.analysis.series import SeriesConfig, checkpoint_series, saturation_text
    from moescope.report.series import write_series_report

    try:
        cfg = SeriesConfig(paths=tuple(paths), **options)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    start = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("tokens"))
    try:
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("routing", total=None)

            def next_checkpoint(label: str) -> None:
                progress.update(task, description=f"routing {label}", completed=0)

            results = checkpoint_series(cfg, on_checkpoint=next_checkpoint,
                                        on_tokens=lambda n: progress.advance(task, n))
    except (FileNotFoundError, ValueError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(1) from None
    written = write_series_report(results, out)
    for line in saturation_text(results):
        console.print(line)
    change = results["similarity_change"]
    if change is not None:
        console.print(f"Expert similarity, first → last checkpoint: {change['effect']:+.4f} "
                      f"[{change['interval'][0]:+.4f}, {change['interval'][1]:+.4f}] → {change['verdict']}")
    console.print(f"Report: {written['report']}  (results: {written['results']}) "
                  f"in {time.perf_counter() - start:.1f} s")


def _print_memory(memory: dict | None) -> None:
    """One line on where the weights were and the peak memory growth (the results' memory section)."""
    from moescope.models.sizes import format_size

    if memory is None:
        return
    peak = memory.get("peak", "not measured on this OS")
    if "streamed_minimum" not in memory:
        console.print(f"Placed by accelerate (device map {memory['device_map']}); peak memory growth {peak}.")
        return
    how = "one decoder layer at a time" if memory["streamed"] else "the whole model in memory"
    console.print(f"Ran {how}; peak memory growth {peak} (streamed minimum "
                  f"{format_size(memory['streamed_minimum'])}).")


def _with_progress(label: str, unit: str, work: Callable[[Callable[[int, int], None]], dict]) -> dict:
    """Run ``work(step)`` under a progress bar that ``step(done, total)`` advances; a ``ValueError`` or
    missing file it raises becomes one red line and exit code 1."""
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn(unit), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task(label, total=None)
            return work(lambda done, total: progress.update(task, completed=done, total=total))
    except (FileNotFoundError, ValueError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(1) from None


def _parse_modes(text: str) -> tuple[str, ...]:
    from moescope.analysis.ablation import MODES

    modes = tuple(MODES) if text == "both" else tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise typer.BadParameter(f"--mode must be {', '.join(MODES)} or both; got {text!r}")
    return modes


@app.command()
def ablate(
    path: Annotated[Path, typer.Argument(callback=_CHECKPOINT,
                                         help="A Hugging Face MoE checkpoint directory (decoder-only, with "
                                              "its tokenizer), or a lab run folder (OUT/training/runs/NAME: "
                                              "measured on the lab's validation text of each domain).")],
    domain: Annotated[list[str], typer.Option("--domain", callback=_DOMAIN,
                                              help="NAME=FILE: a text of one domain (repeatable; default: a "
                                                   "built-in code / language / math sample; not with a lab "
                                                   "run).")] = [],  # noqa: B006
    mode: Annotated[str, typer.Option(help="reroute (the expert's selection score −∞), zero (its weighted "
                                           "output removed) or both.")] = "both",
    layers: Annotated[str | None, typer.Option(help="Comma-separated MoE layer indices (default: all).")] = None,
    experts: Annotated[str | None, typer.Option(help="Comma-separated expert indices (default: all).")] = None,
    exact: Annotated[str, typer.Option(help="auto: every (layer, expert) exactly when there are at most 256, "
                                            "otherwise the top 16 per domain by first-order attribution; all: "
                                            "every one exactly.")] = "auto",
    seq_len: Annotated[int, typer.Option(min=2, help="Tokens per window.")] = 128,
    max_windows: Annotated[int, typer.Option(min=1, help="Windows per domain, at most (spread over the "
                                                         "text).")] = 32,
    batch_size: Annotated[int, typer.Option(min=1, help="Windows per forward pass.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap intervals.")] = 0,
    dtype: _DtypeOption = "float32",
    device: _DeviceOption = "cpu",
    stream_layers: _StreamOption = False,
    max_memory: _MaxMemoryOption = None,
    device_map: _DeviceMapOption = None,
    offload_folder: _OffloadOption = None,
    out: Annotated[Path, typer.Option(callback=_OUT_DIR, help="Folder for report.html and results.json.")]
    = Path("out/ablate"),
) -> None:
    """What each expert does: the loss change per domain when each expert is removed, with intervals."""
    from moescope.analysis.ablate import AblateConfig, ablation_results, run_ablation
    from moescope.lab.ablation import is_lab_run, load_lab_run
    from moescope.report.ablate import write_ablate_report

    lab_run = is_lab_run(path)
    placed = stream_layers or max_memory is not None or device_map is not None or offload_folder is not None
    if lab_run and (domain or dtype != "float32" or device != "cpu" or placed):
        raise typer.BadParameter(f"{path} is a lab run: it is measured on the lab's own validation text in "
                                 "float32 on the CPU; --domain, --dtype, --device and the memory options are for "
                                 "Hugging Face checkpoints")
    try:
        cfg = AblateConfig(path=path, sources=_read_sources([], domain), modes=_parse_modes(mode),
                           layers=_parse_layers(layers), experts=_parse_layers(experts, "--experts", "expert"),
                           exact=exact, seq_len=seq_len, max_windows=max_windows, batch_size=batch_size, seed=seed,
                           dtype=dtype, device=device, stream_layers=stream_layers, max_memory=max_memory,
                           device_map=device_map, offload_folder=offload_folder)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    start = time.perf_counter()
    def work(step: Callable[[int, int], None]) -> dict:
        if lab_run:
            model, views, domains, about = load_lab_run(path, seq_len=seq_len, max_windows=max_windows)
            return ablation_results(model, views, domains, cfg, about, on_step=step)
        return run_ablation(cfg, on_step=step)

    results = _with_progress("ablating", "(layer, expert, mode)", work)
    written = write_ablate_report(results, out)
    for per in results["sentences"].values():
        for text in per.values():
            console.print(text)
    _print_memory(results.get("memory"))
    console.print(f"Report: {written['report']}  (results: {written['results']}) "
                  f"in {time.perf_counter() - start:.1f} s")


@app.command()
def steer(
    path: Annotated[Path, typer.Argument(callback=_CHECKPOINT,
                                         help="A Hugging Face MoE checkpoint directory (decoder-only, softmax "
                                              "router, with its tokenizer).")],
    contrast: Annotated[list[str], typer.Option("--contrast", callback=_CONTRAST,
                                                help="NAME=FILE, given twice: text A, then text B (default: the "
                                                     "built-in code against language); for a lab run, two of "
                                                     "its domains by NAME.")] = [],  # noqa: B006
    top: Annotated[int, typer.Option(min=1, help="Experts linked to A to steer, at most.")] = 8,
    random_draws: Annotated[int, typer.Option(min=1, help="Draws of as many random experts (the control).")] = 39,
    seq_len: Annotated[int, typer.Option(min=2, help="Tokens per window.")] = 128,
    max_windows: Annotated[int, typer.Option(min=1, help="Windows per text, at most.")] = 32,
    seed: Annotated[int, typer.Option(help="Seed of the intervals and the random control.")] = 0,
    dtype: _DtypeOption = "float32",
    device: _DeviceOption = "cpu",
    stream_layers: _StreamOption = False,
    max_memory: _MaxMemoryOption = None,
    device_map: _DeviceMapOption = None,
    offload_folder: _OffloadOption = None,
    out: Annotated[Path, typer.Option(callback=_OUT_DIR, help="Folder for report.html and results.json.")]
    = Path("out/steer"),
) -> None:
    """Find the experts that tell text A from text B (risk difference of activation), switch them on and off,
    and measure each text's loss change against steering random experts."""
    from moescope.analysis.steer import DEFAULT_CONTRAST, SteerCommand, run_steer, steer_results
    from moescope.analysis.steering import SteerConfig
    from moescope.lab.ablation import is_lab_run, load_lab_run
    from moescope.report.steer import write_steer_report

    lab_run = is_lab_run(path)
    if lab_run:  # --contrast NAME (no file): two of the lab's domains
        names = [c.partition("=")[0] for c in contrast] or list(DEFAULT_CONTRAST)
        placed = stream_layers or max_memory is not None or device_map is not None or offload_folder is not None
        if len(names) != 2 or dtype != "float32" or device != "cpu" or placed:
            raise typer.BadParameter(f"{path} is a lab run: give two of its domains as --contrast NAME, or none "
                                     "for code against language; --dtype, --device and the memory options are for "
                                     "Hugging Face checkpoints")
        contrast = []
    elif any("=" not in c for c in contrast):
        raise typer.BadParameter(f"{path} is a Hugging Face checkpoint: --contrast takes NAME=FILE texts")
    try:
        sources = _read_sources([], contrast)
        cmd = SteerCommand(path=path, contrast=sources, seq_len=seq_len, max_windows=max_windows, dtype=dtype,
                           device=device, steer=SteerConfig(top=top, random_draws=random_draws, seed=seed),
                           stream_layers=stream_layers, max_memory=max_memory, device_map=device_map,
                           offload_folder=offload_folder)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    start = time.perf_counter()
    def work(step: Callable[[int, int], None]) -> dict:
        if not lab_run:
            return run_steer(cmd, on_step=step)
        model, views, domains, about = load_lab_run(path, seq_len=seq_len, max_windows=max_windows)
        unknown = [n for n in names if n not in domains]
        if unknown:
            raise ValueError(f"the lab has no domain {unknown}; its domains: {', '.join(domains)}")
        return steer_results(model, views, {n: domains[n] for n in names}, cmd, about, on_step=step)

    results = _with_progress("steering", "passes", work)
    written = write_steer_report(results, out)
    if not results["linked"]:
        console.print(f"No expert is used measurably more by {results['sets'][0]} than by {results['sets'][1]}.")
    for text in results["sentences"]:
        console.print(text)
    _print_memory(results.get("memory"))
    console.print(f"Report: {written['report']}  (results: {written['results']}) "
                  f"in {time.perf_counter() - start:.1f} s")


@app.command()
def compare(
    checkpoint_a: Annotated[Path, typer.Argument(callback=_CHECKPOINT,
                                                 help="The earlier checkpoint directory.")],
    checkpoint_b: Annotated[Path, typer.Argument(callback=_CHECKPOINT,
                                                 help="The later checkpoint directory (same architecture).")],
    text: Annotated[list[Path], typer.Option("--text", callback=_IN_FILE,
                                             help="A text file to route (repeatable).")] = [],  # noqa: B006
    max_tokens: Annotated[int, typer.Option(min=1, help="Tokens routed per text, at most.")] = 20_000,
    out: Annotated[Path, typer.Option(callback=_OUT_DIR, help="Folder for report.html and results.json.")]
    = Path("out/compare"),
    dtype: _DtypeOption = "float32",
    device: _DeviceOption = "cpu",
) -> None:
    """Router saturation (share of top-k choices kept), similarity and weight drift between two checkpoints:
    the two-checkpoint case of `moescope analyze A B ...`."""
    _series([checkpoint_a, checkpoint_b], sources=_read_sources(text, []), layers=None, max_tokens=max_tokens,
            seq_len=256, dtype=dtype, device=device, out=out)


def _parse_eps(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated budgets such as 0,0.05,0.1; got {text!r}") from None


@app.command("attack")
def attack_command(
    dataset: Annotated[str, typer.Option(
        help="'digits' (scikit-learn's 8×8 digits, L∞ budgets on [0, 1] pixels) or 'spheres' "
             "(Gilmer et al.'s concentric spheres, L2 budgets).")] = "digits",
    attack: Annotated[str, typer.Option(
        help="The featured attack (drawn on the digits, quoted first): fgsm, pgd or deepfool.")] = "pgd",
    eps: Annotated[str | None, typer.Option(
        help="Comma-separated budgets, e.g. 0,0.05,0.1 (default: the data set's own list).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of every draw and initialisation.")] = 0,
    out: Annotated[Path, typer.Option(callback=_OUT_DIR,
                                      help="Folder for report.html, results.json and the PNG figures.")]
    = Path("out/attack"),
) -> None:
    """Adversarial examples and why high dimension makes them easy: attacks, √d shortcuts, spheres."""
    from moescope.adversarial.experiment import AttackConfig, run_experiment
    from moescope.report.attack import write_attack_report

    eps_list = _parse_eps(eps)
    try:  # validate before any work
        cfg = AttackConfig(dataset=dataset, attack=attack, eps=None if eps_list is None else tuple(eps_list),
                           seed=seed)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    start = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("starting", total=None)
        results = run_experiment(cfg, progress=lambda stage, done, total: progress.update(
            task, description=stage, completed=done, total=total))
    written = write_attack_report(results, out)
    for sentence in results["sentences"]:
        console.print(f"[bold]{sentence['title']}.[/bold] {sentence['sentence']}")
    console.print(f"Report: {written['report']}  (results: {written['results']}) "
                  f"in {time.perf_counter() - start:.1f} s")


@app.command()
def curvature(
    graph: Annotated[
        list[str] | None,
        typer.Option(help="tree, cycle, ring-of-trees, or a graph file (.edgelist/.txt/.csv, .adjlist, .graphml, "
                          ".gml); repeat for several. Default: the three graphs of Gu et al. 2019, Table 1."),
    ] = None,
    dim: Annotated[int, typer.Option(min=2, help="Total dimension of every space (Gu et al.'s Table 1 uses 3).")] = 3,
    steps: Annotated[int, typer.Option(min=1, help="Riemannian Adam steps per space.")] = 1000,
    restarts: Annotated[int, typer.Option(min=1, help="Random restarts per space; the lowest loss is kept.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of every random draw; the same seed gives the same numbers.")] = 0,
    out: Annotated[Path, typer.Option(callback=_OUT_DIR,
                                      help="Folder for report.html, results.json and the PNG figures.")]
    = Path("out/curvature"),
) -> None:
    """Trees need hyperbolic space: distortion in E, H, S and products, and Sarkar's construction."""
    from moescope.lab.curvature import CurvatureConfig, run_curvature, total_steps
    from moescope.report.curvature import write_curvature_report

    try:
        cfg = CurvatureConfig(**({"graphs": tuple(graph)} if graph else {}), dim=dim, steps=steps,
                              restarts=restarts, seed=seed)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    start = time.perf_counter()
    columns = (TextColumn("embedding graphs"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("steps", total=total_steps(cfg))
        try:
            results = run_curvature(cfg, on_step=lambda n: progress.advance(task, n))
        except ValueError as err:  # a graph file that is disconnected, too small or too large
            raise typer.BadParameter(str(err), param_hint="--graph") from None
    written = write_curvature_report(results, out)
    for claim in results["claims"]:
        console.print(f"[bold]{claim['title']}.[/bold] {claim['sentence']}")
    console.print(f"Report: {written['report']}  (results: {written['results']}) "
                  f"in {time.perf_counter() - start:.1f} s")


@app.command()
def lab(
    profile: Annotated[str, typer.Option(help="quick (minutes on 2 CPU cores) or full (longer training, "
                                              "more samples and seeds).")] = "quick",
    claims: Annotated[str | None, typer.Option(help="Comma-separated claim numbers to test (default: all).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of every random draw; the same seed gives the same numbers.")] = 0,
    out: Annotated[Path, typer.Option(callback=_OUT_DIR,
                                      help="Folder for report.html, results.json, figures, checkpoints and logs.")]
    = Path("out/lab"),
    model: Annotated[Path | None, typer.Option(
        "--model", help="A local Hugging Face MoE checkpoint folder (config.json, safetensors, tokenizer): claims "
                        "6, 10-14 are measured on it instead of the lab's tiny model (default claims: those; "
                        "7, 8, 9, 15 need the lab's own training and are refused).")] = None,
    tensorboard: Annotated[bool, typer.Option(help="Also write each training run's curves as TensorBoard events "
                                                   "(OUT/training/runs/*/tensorboard; needs "
                                                   "pip install 'moescope[tensorboard]').")] = False,
    dtype: _DtypeOption = "float32",
    device: _DeviceOption = "cpu",
    arch: _ArchOption = None,
) -> None:
    """Every claim of the lecture, tested on data and models built here, in one report."""
    from moescope.lab.external import ModelInputError
    from moescope.lab.run import LabConfig, run_lab
    from moescope.report.lab import lab_figures, timing_text, verdict_table, write_lab_report

    try:
        chosen = None if claims is None else tuple(int(c) for c in claims.split(",") if c.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated claim numbers such as 6,13; got {claims!r}",
                                 param_hint="--claims") from None
    try:
        cfg = LabConfig(profile=profile, claims=chosen, seed=seed, workdir=out, model=model, tensorboard=tensorboard,
                        dtype=dtype, device=device, **({} if arch is None else {"arch": arch}))
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--model" if isinstance(err, ModelInputError) else None) from None
    start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), console=console, transient=True) as progress:
        task = progress.add_task("lab", total=None)
        try:
            results = run_lab(cfg, on_stage=lambda name: progress.update(task, description=f"running {name}"))
        except ModelInputError as err:  # weights that do not load, a tokenizer that does not fit them
            raise typer.BadParameter(str(err), param_hint="--model") from None
    written = write_lab_report(results, lab_figures(results), out)
    Console().print(verdict_table(results["verdicts"]))
    console.print(timing_text(results))
    console.print(f"Report: {written['report']}  (results: {written['results']}) "
                  f"in {time.perf_counter() - start:.1f} s")


@app.command()
def train(
    profile: Annotated[str, typer.Option(help="quick or full: the lab profile whose runs to train.")] = "quick",
    runs: Annotated[str | None, typer.Option(help="Comma-separated run names, e.g. top2,top2-alpha0 "
                                                  "(default: all of the profile's).")] = None,
    seed: Annotated[int, typer.Option(help="The seed `moescope lab --seed` will use.")] = 0,
    out: Annotated[Path, typer.Option(callback=_OUT_DIR,
                                      help="The lab's folder: runs go to OUT/training/runs/, where "
                                           "`moescope lab --out OUT` finds them finished.")] = Path("out/lab"),
    tensorboard: Annotated[bool, typer.Option(help="Also write each training run's curves as TensorBoard events "
                                                   "(OUT/training/runs/*/tensorboard; needs "
                                                   "pip install 'moescope[tensorboard]').")] = False,
    estimate: Annotated[bool, typer.Option(help="Train nothing: time a few steps of each knob's run at the "
                                                "profile's shape and print the projected training time.")] = False,
    export_hf: Annotated[Path | None, typer.Option(
        "--export-hf", callback=_OUT_DIR,
        help="After training, save each run's final model as a Hugging Face checkpoint in EXPORT_HF/<run> "
             "(with the lab tokenizer) for `moescope analyze`; runs no transformers family computes exactly "
             "are listed with the reason.")] = None,
    arch: _ArchOption = None,
    dtype: Annotated[str, typer.Option(help="How the runs train: float32, or bfloat16 (each step's forward under "
                                            "autocast, weights and optimizer state float32); `moescope lab --dtype` "
                                            "must match to find them.")] = "float32",
) -> None:
    """Train the lab's runs ahead of `moescope lab`; data-parallel under `torchrun --nproc_per_node N -m moescope`."""
    import os

    from moescope.lab.runs import lab_profile, select_runs, train_lab_runs
    from moescope.lab.tensorboard import require as require_tensorboard

    try:
        p = lab_profile(profile, seed, *(() if arch is None else (arch,)), dtype=dtype)
        only = None if runs is None else tuple(r.strip() for r in runs.split(",") if r.strip())
        select_runs(p, only)
        if tensorboard:
            require_tensorboard()
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    if estimate:
        _print_estimate(p, only)
        return
    start = time.perf_counter()
    results = train_lab_runs(p, out, only=only, tensorboard=tensorboard)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun: rank 0 reports
        return
    for name, r in results.items():
        console.print(f"{name}: val loss {r.val_loss:.3f}  ({r.run_dir})")
    console.print(f"Trained {len(results)} runs in {out / 'training'} in {time.perf_counter() - start:.1f} s; "
                  f"next: moescope lab --profile {profile} --seed {seed} --arch {p.lm.arch} --dtype {dtype} "
                  f"--out {out}")
    if export_hf is not None:
        from moescope.lab.export_hf import export_runs

        for name, where in export_runs(results, out, export_hf).items():
            console.print(f"{name}: {where}" if isinstance(where, str) else f"{name}: exported to {where}")


def _print_estimate(p, only: tuple[str, ...] | None) -> None:
    """``train --estimate``: one row per knob, then the projected wall time on the profile's workers."""
    import os

    from rich.table import Table

    from moescope.lab.estimate import estimate
    from moescope.lab.runs import base_runs

    knobs = [s for s in base_runs(p) if only is None or any(n == s.name or n.startswith(s.name + "-seed")
                                                           for n in only)]
    jobs = p.jobs if p.jobs is not None else min(2, os.cpu_count() or 1)
    with console.status(f"timing {len(knobs)} runs of the {p.name} profile"):
        rows, wall = estimate(knobs, p.replicates, jobs)
    table = Table(title=f"{p.name} profile: projected training time ({p.replicates} seeds, {jobs} workers)")
    for col in ("run", "ms / step", "steps", "seeds", "CPU s"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for r in rows:
        table.add_row(r.name, f"{r.step_ms:.1f}", str(r.steps), str(r.replicates), f"{r.seconds:,.0f}")
    console.print(table)
    console.print(f"Projected training: {wall / 60:.1f} min of wall time ({sum(r.seconds for r in rows) / 60:.1f} "
                  "CPU-min), from the median of 5 timed steps per knob, one at a time; evaluation, the corpus "
                  "and the lab's measurements after training are not included.")


bench = typer.Typer(help="Benchmarks: commands that print measurements (never tests).", no_args_is_help=True)
app.add_typer(bench, name="bench")


@bench.command("analyze")
def bench_analyze(
    geometry: Annotated[bool, typer.Option(help="Also time the weight geometry of one Mixtral-8x7B-shaped layer "
                                                "(writes a 2.8 GB bf16 file to a temporary folder; ~1 min).")]
    = True,
    ablation: Annotated[bool, typer.Option(help="Only the cost of the full exact ablation map: the residual cache "
                                                "against whole forwards, and attribution's rank agreement.")]
    = False,
    big: Annotated[bool, typer.Option(help="Only analyze on a Mixtral-8x7B-shaped checkpoint of 4 decoder layers "
                                           "(12.1 GB bf16, random weights; made once, ~1 min, and cached): "
                                           "tokens/s, peak RSS and disk read rate, streamed in --max-memory and "
                                           "in memory where it fits, against a plain read of the same files.")]
    = False,
    trace: Annotated[bool, typer.Option(help="Only routing capture with everything analyze records per token (the "
                                             "token table, pathways, a --trace Parquet file) against a plain forward, "
                                             "at 10,000 and 100,000 tokens: overhead, tokens/s, memory growth.")]
    = False,
    big_tokens: Annotated[int, typer.Option(min=1, help="With --big: tokens analysed per run.")] = 2048,
    max_memory: Annotated[str, typer.Option(help="With --big: the streamed run's budget (4GB: 4·10^9 bytes, 4GiB: "
                                                 "4·2^30); raised to the plan's minimum if below it, and said so.")]
    = "4GB",
    cache_dir: Annotated[Path | None, typer.Option(callback=_OUT_DIR,
                                                   help="With --big: where the checkpoint is kept (default "
                                                        "$XDG_CACHE_HOME/moescope/bench, ~/.cache/moescope/bench).")]
    = None,
) -> None:
    """Tokens/s of a small Mixtral in float32 and bfloat16, with and without routing capture, statistics memory
    vs text length, and weight-geometry time and memory; with --big, analyze on a 12 GB Mixtral-shaped
    checkpoint, streamed and in memory, against a plain read."""
    from moescope.analysis.bench import bench_ablation, bench_routing_capture, bench_weight_geometry

    if big:
        from moescope.analysis.bench import bench_big, big_lines, big_table
        from moescope.models.sizes import parse_size

        try:
            parse_size(max_memory)
        except (TypeError, ValueError) as err:
            raise typer.BadParameter(str(err), param_hint="--max-memory") from None
        stdout = Console()
        if not stdout.is_terminal:
            stdout.width = 160  # a file or pipe gets the whole table
        try:
            with console.status("analyze --big") as status:
                result = bench_big(max_memory=max_memory, tokens=big_tokens, cache_dir=cache_dir,
                                   on_step=lambda text: status.update(text))
        except (FileNotFoundError, ValueError) as err:  # too little disk, a cache folder that is not ours
            console.print(f"[red]error:[/red] {err}")
            raise typer.Exit(1) from None
        stdout.print(big_table(result))
        for line in big_lines(result):
            stdout.print(line)
        return
    if trace:
        from moescope.analysis.bench import bench_trace

        with console.status("routing 10,000 and 100,000 tokens with and without the trace"):
            rows = bench_trace()
        for r in rows:
            growth = "not measured" if r["rss_growth_mb"] is None else f"{r['rss_growth_mb']:+.0f} MiB"
            console.print(f"{r['tokens']:,} tokens: plain {r['plain_s']:.2f} s, with statistics + pathways + trace "
                          f"{r['recorded_s']:.2f} s ({r['overhead']:+.1%}; {r['tokens_per_s']:,.0f} tokens/s), "
                          f"resident memory {growth}, {r['threads']} threads")
        return
    if ablation:
        with console.status("ablating every expert of a random 8-layer Mixtral, cached and whole"):
            b = bench_ablation()
        console.print(f"full exact ablation map, {b['layers']} layers × {b['experts']} experts, {b['tokens']} tokens, "
                      f"{b['threads']} threads: {b['cached_forward_equivalents']:.1f} forward-pass equivalents with "
                      f"the residual cache against {b['naive_forward_equivalents']:.0f} whole forwards "
                      f"({b['naive_forward_equivalents'] / b['cached_forward_equivalents']:.2f}× fewer); "
                      f"{b['cached_s']:.2f} s against {b['naive_s']:.2f} s ({b['naive_s'] / b['cached_s']:.2f}×); "
                      f"largest difference of a loss change {b['max_abs_difference']:.1e}; first-order attribution "
                      f"vs exact, Spearman ρ = {b['rank_agreement']:.2f}")
        return
    with console.status("routing a small Mixtral in float32 and bfloat16, with and without capture"):
        cap = bench_routing_capture()
    for name, d in cap["dtypes"].items():
        faster = cap["speedup"].get(name, {}).get("plain")
        console.print(f"routing capture, {name}: forward {d['forward_s'] * 1e3:.1f} ms ({d['tokens_per_s']:,.0f} "
                      f"tokens/s) -> {d['forward_recorded_s'] * 1e3:.1f} ms with recording + statistics "
                      f"({d['tokens_per_s_recorded']:,.0f} tokens/s, {d['overhead']:+.1%})"
                      + (f"; {faster:.2f}× float32's speed" if faster is not None and name != "float32" else ""))
    console.print(f"  on {cap['tokens_per_pass']} tokens per pass, {cap['threads']} threads, bfloat16 instructions: "
                  f"{cap['bf16_isa']}")
    console.print(f"statistics memory: {cap['stats_bytes_after_1x']:,} bytes after 1x the text, "
                  f"{cap['stats_bytes_after_4x']:,} after 4x")
    if geometry:
        bench_weight_geometry(threads=2)


@bench.command("moe")
def bench_moe_command(
    quick: Annotated[bool, typer.Option(help="Only T = 16 and 1024, fewer repeats (about half a minute on 2 cores).")]
    = False,
    out: Annotated[Path | None, typer.Option(callback=_OUT_FILE,
                                             help="Also write the machine and rows to this JSON file.")] = None,
    stat: Annotated[str, typer.Option(help="Table of the 'median' run or of the 'best' (on a shared machine).")]
    = "median",
    system_malloc: Annotated[bool, typer.Option(help="Leave glibc's malloc as it is: every fresh buffer of 32 MiB "
                                                     "or more (a weight gradient) page-faults, for every "
                                                     "implementation alike.")] = False,
    dtype: Annotated[str, typer.Option(help="Comma-separated dtypes to run the layer, transformers' block, the "
                                            "GEMM probe and the roofline in: float32, bfloat16.")]
    = "float32,bfloat16",
) -> None:
    """MoE layer time against transformers' eager and grouped_mm experts and against the roofline, per dtype.

    Freed memory is kept for reuse first (moescope.moe.memory.retain_freed_memory), for moescope and
    transformers alike, unless --system-malloc.
    """
    from moescope._files import write_json_atomic
    from moescope.moe.benchmark import bench_moe, case_count, machine_lines, moe_table, parse_dtypes
    from moescope.moe.memory import retain_freed_memory

    if stat not in ("median", "best"):
        raise typer.BadParameter(f"--stat must be 'median' or 'best'; got {stat!r}")
    try:
        dtypes = parse_dtypes(dtype)
    except ValueError as err:
        raise typer.BadParameter(f"--{err}") from None
    retained = not system_malloc and retain_freed_memory()
    stdout = Console()
    if not stdout.is_terminal:
        stdout.width = 220  # a file or pipe gets the whole table (19 columns), not 80 columns of it
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task("benchmark", total=case_count(quick=quick, dtypes=dtypes))
        result = bench_moe(quick=quick, dtypes=dtypes,
                           on_case=lambda label: progress.update(task, description=label, advance=1))
    result["machine"]["malloc"] = ("freed memory retained for reuse (glibc mallopt: M_MMAP_MAX=0, no trim)"
                                   if retained else "the system's malloc as configured")
    for line in machine_lines(result["machine"]):
        stdout.print(line)
    stdout.print(moe_table(result, stat=stat))
    for row in result["rows"]:
        for name, reason in row["skipped"].items():
            stdout.print(f"skipped {name} at {row['shape']} T={row['tokens']} {row['pass']}: {reason}")
    if out is not None:
        console.print(f"Rows: {write_json_atomic(out, result)}")


@bench.command("train")
def bench_train_command(
    rounds: Annotated[int, typer.Option(min=1, help="Interleaved rounds (the median is over all timed steps).")] = 9,
    steps_per_round: Annotated[int, typer.Option(min=1, help="Timed steps of each implementation per round.")] = 5,
    threads: Annotated[int, typer.Option(min=1, help="torch threads (the lab trains each run on one).")] = 1,
    out: Annotated[Path | None, typer.Option(callback=_OUT_FILE,
                                             help="Also write the machine and rows to this JSON file.")] = None,
    arch: _ArchOption = None,
    profile: Annotated[str, typer.Option(help="The lab profile whose baseline LM and batch are timed: quick or "
                                              "full (d_model 128, 4 layers, seq_len 128, experts of I = 256).")]
    = "quick",
) -> None:
    """The lab LM's training step (TinyLM top-2 of 8, a profile's shape) against transformers' MixtralForCausalLM."""
    from moescope._files import write_json_atomic
    from moescope.lab.bench_train import TrainBenchConfig, bench_train, machine_line, train_table
    from moescope.lab.runs import PROFILES
    from moescope.lab.runs import profile as lab_profile

    if profile not in PROFILES:
        raise typer.BadParameter(f"must be one of {', '.join(PROFILES)}; got {profile!r}", param_hint="--profile")
    p = lab_profile(profile, *(() if arch is None else (arch,)))
    cfg = TrainBenchConfig(lm=p.lm, batch_size=p.train.batch_size, rounds=rounds, steps_per_round=steps_per_round,
                           threads=threads)
    stdout = Console()
    if not stdout.is_terminal:
        stdout.width = 160  # a file or pipe gets the whole table, not 80 columns of it
    with Progress(TextColumn("rounds"), BarColumn(), MofNCompleteColumn(), console=console, transient=True) as progress:
        task = progress.add_task("rounds", total=rounds)
        result = bench_train(cfg, on_round=lambda r: progress.update(task, advance=1))
    stdout.print(machine_line(result))
    stdout.print(train_table(result))
    if out is not None:
        console.print(f"Rows: {write_json_atomic(out, result)}")


def _parse_world_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated process counts such as 1,2,4; got {text!r}") from None
    if not sizes:
        raise typer.BadParameter(f"expected comma-separated process counts such as 1,2,4; got {text!r}")
    return sizes


@bench.command("parallel")
def bench_parallel_command(
    world_sizes: Annotated[str, typer.Option(help="Comma-separated numbers of processes (each must divide the "
                                                  "experts; 1 always runs as the baseline).")] = "1,2,4",
    tokens: Annotated[int | None, typer.Option(min=1, help="Tokens per rank (default 1024, or 256 with --quick).")]
    = None,
    quick: Annotated[bool, typer.Option(help="The coarse layer only, 256 tokens per rank, fewer repeats.")] = False,
    out: Annotated[Path | None, typer.Option(callback=_OUT_FILE,
                                             help="Also write the machine and rows to this JSON file.")] = None,
) -> None:
    """Expert parallelism over 1, 2, 4 CPU processes: all-to-all bytes per token, time split, ratio to one process."""
    from moescope._files import write_json_atomic
    from moescope.moe.bench_parallel import bench_parallel, parallel_lines, parallel_table

    sizes = _parse_world_sizes(world_sizes)
    stdout = Console()
    if not stdout.is_terminal:
        stdout.width = 160  # a file or pipe gets the whole table, not 80 columns of it
    with Progress(TextColumn("{task.description}"), BarColumn(), console=console, transient=True) as progress:
        task = progress.add_task("benchmark", total=None)
        try:
            result = bench_parallel(world_sizes=sizes, tokens=tokens, quick=quick,
                                    on_case=lambda label: progress.update(task, description=f"timing {label}"))
        except ValueError as err:
            raise typer.BadParameter(str(err), param_hint="--world-sizes / --tokens") from None
    for line in parallel_lines(result):
        stdout.print(line)
    stdout.print(parallel_table(result["rows"]))
    if out is not None:
        console.print(f"Rows: {write_json_atomic(out, result)}")
