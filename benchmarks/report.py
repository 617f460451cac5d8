"""The benchmark tables of benchmarks/README.md and docs/, generated from benchmarks/results/.

    python benchmarks/report.py            # rewrite the tables
    python benchmarks/report.py --check    # exit 1 if a committed table differs from this
    python benchmarks/report.py --unused   # results files that no table cites

Each benchmark's table comes from its newest JSON in ``benchmarks/results/``
(newest by the ``machine.date`` the script recorded; ``*_quick.json`` files
are ignored). The GPU table takes each configuration from the newest
``gpu*.json`` that measured it, since one GPU lease rarely runs them all.

The tables go into ``benchmarks/README.md`` between ``<!-- report:NAME -->``
and ``<!-- /report -->``, and into ``docs/_generated/NAME.md``, which the
documentation pages include. Standard library only: no jax needed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
GENERATED = HERE.parent / "docs" / "_generated"
BLOCK = re.compile(r"(<!-- report:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /report -->)", re.DOTALL)

Result = tuple[Path, dict[str, Any]]


# ---------------------------------------------------------------- reading

def load(pattern: str) -> list[Result]:
  """``(path, payload)`` of every ``results/<pattern>`` JSON but the ``--quick`` ones, newest first."""
  found = [(path, json.loads(path.read_text())) for path in RESULTS.glob(pattern)
           if not path.stem.endswith("_quick")]
  return sorted(found, key=lambda r: (r[1].get("machine", {}).get("date", ""), r[0].name),
                reverse=True)


def newest(pattern: str) -> list[Result]:
  """The newest result matching ``pattern``, as a one-element list (empty if there is none)."""
  return load(pattern)[:1]


def newest_per_config(pattern: str) -> list[Result]:
  """For each configuration, the newest result that measured it (each result listed once)."""
  chosen: dict[str, Result] = {}
  for path, payload in load(pattern):
    for config in payload.get("configs", {}):
      chosen.setdefault(config, (path, payload))
  unique: dict[Path, Result] = {path: (path, payload) for path, payload in chosen.values()}
  return sorted(unique.values(), key=lambda r: r[0].name)


# ---------------------------------------------------------------- formatting

def number(x: float | None, digits: int = 2) -> str:
  """``x`` with ``digits`` decimals below 100, fewer above; blank for ``None``."""
  if x is None:
    return ""
  if abs(x) >= 1000:
    return f"{x:.0f}"
  if abs(x) >= 100:
    return f"{x:.1f}"
  return f"{x:.{digits}f}"


def table(header: list[str], rows: Iterable[list[str]], align: str) -> str:
  """A Markdown table; ``align`` has one ``l`` or ``r`` per column."""
  marks = ["---:" if a == "r" else "---" for a in align]
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def sizes(s: dict[str, int] | list[int]) -> str:
  """``(T, B, I, H, O)``."""
  values = [s[k] for k in "TBIHO"] if isinstance(s, dict) else s
  return "(" + ", ".join(str(v) for v in values) + ")"


def when(payload: dict[str, Any]) -> str:
  """The run's date as ``YYYY-MM-DD HH:MM UTC``."""
  date = payload["machine"]["date"]
  return datetime.datetime.fromisoformat(date).astimezone(datetime.timezone.utc).strftime(
      "%Y-%m-%d %H:%M UTC")


def source(path: Path, payload: dict[str, Any], extra: str = "") -> str:
  """One line naming the file, the date and the machine of a run."""
  m = payload["machine"]
  load_avg = " / ".join(f"{x:.1f}" for x in m.get("loadavg", []))
  parts = [f"`results/{path.name}`", when(payload),
           f"{m['cpu']}, {m['cores']} cores" + (f", load average {load_avg}" if load_avg else ""),
           f"jax {m['jax']}"]
  if m.get("torch_threads"):
    parts.append(f"torch with {m['torch_threads']} threads")
  return "Run: " + "; ".join(parts) + (f"; {extra}" if extra else "") + "."


# ---------------------------------------------------------------- one table per benchmark

def train_step(results: list[Result]) -> str:
  (path, payload), = results
  devices = payload["machine"]["jax_devices"]
  configs = payload["configs"]
  impls = list(next(iter(configs.values()))["results"])
  ours = [i for i in impls if i.startswith("jaxrnn")]
  labels = {"jaxrnn_fused": "jaxrnn, 1 device", "jaxrnn_all_cores": f"jaxrnn, {devices} devices",
            "jaxrnn_autodiff": "jaxrnn autodiff", "jaxrnn_readme": "jaxrnn, README step",
            "torch": "torch", "flax": "Flax",
            "numpy": "NumPy"}
  which = " / ".join(labels[i].removeprefix("jaxrnn, ") for i in ours)
  rows = []
  for name, config in configs.items():
    r = config["results"]
    pair = lambda key, digits=2: " / ".join(number(r[i][key], digits) for i in ours)
    rows.append([f"{name} {sizes(config['sizes'])}", *(number(r[i]["ms"]) for i in impls),
                 pair("speedup_over_torch"), pair("speedup_over_flax"), pair("roofline_pct", 1)])
  head = ["config (T, B, I, H, O)", *(f"{labels.get(i, i)} ms" for i in impls),
          f"torch / jaxrnn ({which})", f"Flax / jaxrnn ({which})", f"% of roofline ({which})"]
  rounds = f"median of {payload['rounds']} rounds after {payload['warmup']} warm-up"
  return table(head, rows, "l" + "r" * (len(head) - 1)) + "\n\n" + source(path, payload, rounds)


def split_threshold(results: list[Result]) -> str:
  (path, payload), = results
  devices = payload["machine"]["jax_devices"]
  rows = []
  for name, config in payload["configs"].items():
    r, s = config["results"], config["sizes"]
    one, split = r["jaxrnn_fused"]["ms"], r["jaxrnn_all_cores"]["ms"]
    work = s["B"] // devices * s["H"] ** 2
    rows.append([f"{name} {sizes(s)}", f"{work / 1000:.0f}k", number(one), number(split),
                 number(one / split)])
  head = ["config (T, B, I, H, O)", f"(B/{devices}) H^2", "1 device ms", f"{devices} devices ms",
          "speed-up"]
  return table(head, rows, "lrrrr") + "\n\n" + source(path, payload)


def scaling(results: list[Result]) -> str:
  (path, payload), = results
  methods = list(payload["rows"][0]["methods"])

  def cell(r: dict[str, Any], key: str) -> str:
    if r.get("fits") is False:
      return "does not fit"
    return "failed" if "error" in r else number(r[key])

  rows = []
  for row in payload["rows"]:
    m = row["methods"]
    ran = [m[k]["step_ms"] for k in methods if k != "auto" and "step_ms" in m[k]]
    auto = m.get("auto", {})
    ratio = number(auto["step_ms"] / min(ran), 3) if "step_ms" in auto and ran else ""
    every = auto.get("checkpoint_every")
    rows.append([str(row["T"]), *(cell(m[k], "step_ms") for k in methods),
                 "stores all" if every is None else f"k = {every}", ratio,
                 *(cell(m[k], "temp_mb") for k in methods),
                 *(cell(m[k], "peak_rss_mb") for k in methods),
                 number(m["fused"]["estimate_mb"]), number(row["hs_plus_inputs_mb"])])
  head = ["T", *(f"{k} ms" for k in methods), "auto picks", "auto / faster",
          *(f"{k} temp MB" for k in methods), *(f"{k} peak RSS MB" for k in methods),
          "fused estimate MB", "hs + inputs MB"]
  s = payload["sizes"]
  extra = (f"B={s['B']}, I={s['I']}, H={s['H']}, O={s['O']}; memory "
           f"{payload['memory_bytes'] / 2**30:.1f} GiB")
  return table(head, rows, "r" * len(head)) + "\n\n" + source(path, payload, extra)


INFERENCE_LABELS = {"jaxrnn_unroll": "`jaxrnn.unroll`", "jaxrnn_infer": "`jaxrnn.infer`",
                    "torch": "torch `nn.RNN`", "jaxrnn_loop": "jaxrnn, a Python loop of steps",
                    "jaxrnn_scan": "jaxrnn, one `lax.scan`", "torch_loop": "torch, a Python loop"}


def inference(results: list[Result]) -> str:
  (path, payload), = results
  rows = []
  for what, part, torch, key, unit in (("forward pass", "throughput", "torch", "ms", "ms/batch"),
                                       ("generation", "generation", "torch_loop", "us_per_token",
                                        "us/token")):
    base = payload[part][torch][key]
    rows += [[what, INFERENCE_LABELS.get(impl, impl), f"{number(r[key], 1)} {unit}",
              number(base / r[key])] for impl, r in payload[part].items()]
  t, g = payload["throughput_sizes"], payload["generation_sizes"]
  extra = (f"forward pass at (T, B, I, H, O) = {sizes(t)}, largest logit difference from torch "
           f"{payload['max_abs_logit_diff_vs_torch']:.1e}; greedy generation of "
           f"{payload['tokens']} tokens at (I, H, O) = ({g['I']}, {g['H']}, {g['O']}), B = 1, "
           f"same tokens as torch: {'yes' if payload['same_tokens_as_torch'] else 'no'}")
  return (table(["task", "implementation", "time", "torch / this"], rows, "llrr") + "\n\n"
          + source(path, payload, extra))


def irnn_adding(results: list[Result]) -> str:
  (path, payload), = results
  models = list(dict.fromkeys(r["model"] for r in payload["runs"]))
  runs = {(r["T"], r["model"]): r for r in payload["runs"]}

  def cells(r: dict[str, Any] | None) -> list[str]:
    if r is None:
      return ["", "", ""]
    return [number(r["final_test_mse"], 4), number(r["best_test_mse"], 4),
            str(r.get("first_step_solved", r.get("first_step_below_0.05")) or "not solved")]
  rows = [[str(length), *(c for m in models for c in cells(runs.get((length, m))))]
          for length in payload["lengths"]]
  solved = payload.get("solved_mse", 0.05)
  head = ["T", *(f"{m} {what}" for m in models for what in ("final MSE", "best MSE",
                                                             f"first step < {solved:.4f}"))]
  b = payload["budget"]
  extra = (f"{b['steps']} steps of batch {b['batch']}, H={b['hidden']}, {b['optimizer']} "
           f"{b['lr']:g}{' cosine-decayed' if b.get('decay') else ''}, clip {b['clip']:g}, seed "
           f"{b['seed']}; predicting 1 scores {payload['baseline_mse']:.3f}; "
           f"{payload['total_wall_s'] / 60:.0f} min in all")
  return table(head, rows, "r" * len(head)) + "\n\n" + source(path, payload, extra)


def chaos(results: list[Result]) -> str:
  (path, payload), = results
  tol = payload["tolerance"]
  rows = [[f"{r['g']:g}", f"{r['theory']:+.4f}", f"{r['mean']:+.4f}",
           " / ".join(f"{m:+.4f}" for m in r["measured"]), f"{r['error']:+.4f}",
           f"{sum(r['log_radius']) / len(r['log_radius']):+.4f}",
           ("yes" if abs(r["error"]) < tol else "no") if r["g"] > 1 else ""]
          for r in payload["rows"]]
  head = ["g", "theory", "measured, mean", "each seed", "mean - theory", "log rho(W_hh)",
          f"g > 1: within {tol:g}"]
  extra = (f"N = {payload['size']}, {payload['steps']} steps of which the first "
           f"{payload['burn_in']} are not averaged, float64, {payload['seeds']} seeds, "
           f"{payload['quadrature']}-point Gauss-Hermite quadrature; "
           f"{payload['total_wall_s'] / 60:.0f} min in all")
  return table(head, rows, "r" * len(head)) + "\n\n" + source(path, payload, extra)


def newest_per_devices(pattern: str) -> list[Result]:
  """For each device count, the newest result measured on it, fewest devices first."""
  chosen: dict[int, Result] = {}
  for path, payload in load(pattern):
    chosen.setdefault(payload.get("devices", 1), (path, payload))
  return [chosen[n] for n in sorted(chosen)]


def compare_release(results: list[Result]) -> str:
  parts = []
  for path, payload in results:
    old, new = payload["prev_version"], payload["new_version"]
    devices = payload.get("devices", 1)
    rows = [[f"{name} {sizes(r['sizes'])}", str(devices), number(r["old_ms"]),
             number(r["new_ms"]), number(r["ratio_new_over_old"], 3),
             number(r.get("paired_median_ratio"), 3), number(r["cpu_ratio_new_over_old"], 3)]
            for name, r in payload["configs"].items()]
    head = ["config (T, B, I, H, O)", "devices", f"{old} ms", f"{new} ms",
            f"{new} / {old}, wall", "paired", f"{new} / {old}, CPU"]
    rounds = f"median of {payload['rounds']} rounds after {payload['warmup']} warm-up"
    parts.append(table(head, rows, "lrrrrrr") + "\n\n" + source(path, payload, rounds))
  return "\n\n".join(parts)


GPU_IMPLS = ["jaxrnn_scan_highest", "jaxrnn_scan_default", "jaxrnn_scan_bf16",
             "jaxrnn_kernel_highest", "jaxrnn_kernel_default", "jaxrnn_kernel_bf16", "flax",
             "cudnn_fp32", "cudnn_tf32"]


def gpu(results: list[Result]) -> str:
  configs: dict[str, Result] = {}
  for path, payload in sorted(results, key=lambda r: r[1]["machine"]["date"]):
    for name in payload["configs"]:
      configs[name] = (path, payload)                                   # the newest wins
  impls = [i for i in GPU_IMPLS
           if any(i in p["configs"][name]["results"] for name, (_, p) in configs.items())]

  def cell(r: dict[str, Any] | None, key: str, fmt: Callable[[float], str]) -> str:
    if r is None:
      return ""
    if "error" in r:
      return "fail (smem)" if "Shared memory" in r["error"] else "fail"
    return fmt(r[key])

  rows = [[f"{name} {sizes(p['configs'][name]['sizes'])}", path.stem]
          + [cell(p["configs"][name]["results"].get(i), "train_ms", number) for i in impls]
          for name, (path, p) in configs.items()]
  head = ["config (T, B, I, H, O)", "run", *(i.removeprefix("jaxrnn_") for i in impls)]
  errors: dict[str, list[float]] = {}
  for name, (_, p) in configs.items():
    for impl, r in p["configs"][name]["results"].items():
      if "forward_error" in r:
        errors.setdefault(impl, []).append(r["forward_error"])
  spans = ", ".join(f"{i.removeprefix('jaxrnn_')} {min(errors[i]):.0e} to {max(errors[i]):.0e}"
                    for i in impls if i in errors)
  parts = [table(head, rows, "ll" + "r" * len(impls)),
           f"Train step, median ms. Forward error (largest absolute difference of the outputs "
           f"from a float64 loop), lowest to highest over the configurations above: {spans}."]
  runs = []
  for path, payload in sorted(results, key=lambda r: r[0].name):
    d = payload["device"]
    runs.append(f"`results/{path.name}` ({when(payload)}; {d['jax_device']}; jax "
                f"{payload['machine']['jax']}, torch {d.get('torch', 'none')}; "
                f"{payload['rounds']} rounds)")
  return "\n\n".join(parts) + " Runs: " + "; ".join(runs) + "."


def long_stream(results: list[Result]) -> str:
  (path, payload), = results
  s = payload["sizes"]
  head = ["T", "g", "lambda_1", "sequential `infer`", "one segment", "split over 2",
          "split / sequential", "split / one segment", "rounds", "steps re-run", "fell back",
          "difference from `infer`", "difference from one segment"]
  runs = [(payload["main"], s["T"])] + [(r, payload["sweep_steps"]) for r in payload["sweep"]]
  rows = [[f"{t:,}", number(r["gain"]), f"{r['lambda_1']:+.3f}", f"{number(r['sequential_s'])} s",
           f"{number(r['one_segment_s'])} s", f"{number(r['split_s'])} s", number(r["ratio"], 3),
           number(r["ratio_to_one_segment"], 3), str(r["iterations"]), f"{r['rerun_steps']:,}",
           "yes" if r["fell_back"] else "no", f"{r['max_rel_diff']:.1e}",
           f"{r['max_rel_diff_to_one_segment']:.1e}"] for r, t in runs]
  extra = (f"B = {s['B']}, I = {s['I']}, H = {s['H']}, O = {s['O']}, float32, tanh, "
           f"W_hh = g Q; one segment: `split_time(mesh=1)`, the split's chain (inputs projected "
           f"by one GEMM) unsplit on one device; differences: largest over `ys` and `final`, "
           f"relative to the largest output; medians of {payload['rounds']} interleaved rounds; "
           f"lambda_1 over the first {payload['lyapunov_steps']:,} steps; peak RSS "
           f"{payload['peak_rss_mb']:.0f} MB")
  return table(head, rows, "r" * len(head)) + "\n\n" + source(path, payload, extra)


def xla_cpu_flags(results: list[Result]) -> str:
  (path, payload), = results
  parts = []
  for name, config in payload["configs"].items():
    rows = [[f"`{option}`", f"`{r['flags']}`" if r["flags"] else "(none)",
             *([number(r["ms"]), number(r["cores_busy"]), number(r["speedup"]),
                f"{r['loss_difference']:.1e}"] if "ms" in r else [r["error"], "", "", ""])]
            for option, r in config["results"].items()]
    head = ["option", "`XLA_FLAGS`", "ms/step", "cores busy (CPU / wall)", "default / option",
            "first loss difference"]
    parts.append(f"{name} {sizes(config['sizes'])}, one device:\n\n"
                 + table(head, rows, "llrrrr"))
  extra = (f"one process per option and round, {payload['rounds']} rounds in a fresh order each, "
           f"median of {payload['steps']} steps after {payload['warmup']} warm-up in each")
  return "\n\n".join(parts) + "\n\n" + source(path, payload, extra)


LAYER_PAIRS = (("jaxrnn_nnx", "flax_nnx", "nnx"), ("jaxrnn_equinox", "equinox_scan", "equinox"))
"""(jaxrnn's layer, the framework's own, the framework) of ``layers.py``."""


def layers(results: list[Result]) -> str:
  (path, payload), = results
  rows = []
  for name, config in payload["configs"].items():
    r = config["results"]
    cells = [f"{name} {sizes(config['sizes'])}", number(r["jaxrnn_step"]["ms"])]
    for ours, own, framework in LAYER_PAIRS:
      p = config["pairs"][framework]
      cells += [number(r[ours]["ms"]), number(r[own]["ms"]),
                f"{number(p['speedup_over_own'])} / {number(p['cpu_speedup_over_own'])}",
                f"{number(p['over_functional'], 3)} / {number(p['cpu_over_functional'], 3)}"]
    rows.append(cells)
  head = ["config (T, B, I, H, O)", "functional step ms", "`jaxrnn.nnx` ms", "Flax `nnx.RNN` ms",
          "Flax / `jaxrnn.nnx` (wall / CPU)", "`jaxrnn.nnx` / functional (wall / CPU)",
          "`jaxrnn.equinox` ms", "Equinox scan ms", "scan / `jaxrnn.equinox` (wall / CPU)",
          "`jaxrnn.equinox` / functional (wall / CPU)"]
  rounds = f"median of {payload['rounds']} rounds after {payload['warmup']} warm-up, one device"
  return table(head, rows, "l" + "r" * (len(head) - 1)) + "\n\n" + source(path, payload, rounds)


def eager_calls(results: list[Result]) -> str:
  (path, payload), = results
  rows = [[f"`{name}`", number(r["first_call_ms"], 0), number(r["eager_ms"], 3),
           number(r["jit_ms"], 3), number(r["eager_over_jit"]), str(r["compiles_second_call"])]
          for name, r in payload["results"].items()]
  head = ["call", "first call ms", "eager call ms", "jitted call ms", "eager / jitted",
          "compiles in the 2nd eager call"]
  extra = (f"{sizes(payload['sizes'])}, {payload['layers']} layers, float32; median of "
           f"{payload['rounds']} interleaved rounds after {payload['warmup']} warm-up")
  return table(head, rows, "lrrrrr") + "\n\n" + source(path, payload, extra)


BENCHMARKS: dict[str, tuple[str, Callable[[str], list[Result]], Callable[[list[Result]], str]]] = {
    "train_step": ("train_step*.json", newest, train_step),
    "split_threshold": ("split_threshold*.json", newest, split_threshold),
    "scaling": ("scaling*.json", newest, scaling),
    "inference": ("inference*.json", newest, inference),
    "irnn_adding": ("irnn_adding*.json", newest, irnn_adding),
    "chaos": ("chaos*.json", newest, chaos),
    "compare_release": ("compare_release*.json", newest_per_devices, compare_release),
    "gpu": ("gpu*.json", newest_per_config, gpu),
    "long_stream": ("long_stream*.json", newest, long_stream),
    "layers": ("layers*.json", newest, layers),
    "xla_cpu_flags": ("xla_cpu_flags*.json", newest, xla_cpu_flags),
    "eager_calls": ("eager_calls*.json", newest, eager_calls),
}
"""Name -> (results pattern, which results to use, renderer)."""


# ---------------------------------------------------------------- writing

def reports() -> tuple[dict[str, str], set[Path]]:
  """``({name: markdown}, cited result paths)``; a benchmark without results has no table."""
  out, cited = {}, set()
  for name, (pattern, select, render) in BENCHMARKS.items():
    results = select(pattern)
    if results:
      out[name] = render(results).rstrip() + "\n"
      cited.update(path for path, _ in results)
  return out, cited


def unused(cited: set[Path]) -> list[Path]:
  """Files in results/ that no table cites (a plot next to a cited JSON counts as cited)."""
  stems = {p.stem for p in cited}
  return sorted(p for p in RESULTS.iterdir()
                if p.is_file() and p not in cited and p.stem not in stems
                and not p.stem.endswith("_quick"))


def readme_with(text: str, tables: dict[str, str]) -> str:
  """``text`` with every marked block replaced by its table; unknown names raise."""
  def replace(match: re.Match[str]) -> str:
    name = match["name"]
    if name not in tables:
      raise SystemExit(f"{README}: no results for the block report:{name}")
    return match.group(1) + tables[name] + match.group(4)
  return BLOCK.sub(replace, text)


def generated_file(name: str, markdown: str) -> str:
  return f"% Generated by benchmarks/report.py from benchmarks/results/; do not edit.\n\n{markdown}"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--check", action="store_true",
                      help="exit 1 if benchmarks/README.md or docs/_generated/ differ from the results")
  parser.add_argument("--unused", action="store_true", help="list the results no table cites")
  args = parser.parse_args(argv)
  tables, cited = reports()
  if args.unused:
    for path in unused(cited):
      print(path.relative_to(HERE.parent))
    return 0
  wanted = {README: readme_with(README.read_text(), tables)}
  wanted |= {GENERATED / f"{name}.md": generated_file(name, md) for name, md in tables.items()}
  missing = [name for name in tables
             if f"<!-- report:{name} -->" not in README.read_text()]
  stale = [path for path, text in wanted.items()
           if not path.exists() or path.read_text() != text]
  if args.check:
    for path in stale:
      print(f"{path.relative_to(HERE.parent)} is not what benchmarks/report.py writes")
    for name in missing:
      print(f"benchmarks/README.md has no <!-- report:{name} --> block")
    return 1 if stale or missing else 0
  GENERATED.mkdir(parents=True, exist_ok=True)
  for path in stale:
    path.write_text(wanted[path])
    print(f"wrote {path.relative_to(HERE.parent)}")
  for name in missing:
    print(f"note: benchmarks/README.md has no <!-- report:{name} --> block", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
