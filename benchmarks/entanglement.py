"""Benchmark: qsdn's repeater-chain emulator against SeQUeNCe 0.8.5 on one 3-node chain (issue 6).

Both models run the same scenario in virtual time, from this script: a chain ``a - r - b`` of two
hops, each hop with a Bell-state-measurement station half-way (Barrett-Kok heralding), ``memories``
memories per hop end (``r`` has twice as many), swapping at ``r``, no purification. For each virtual
duration and seed the script runs

* **qsdn**: ``agent.drivers.entanglement_chain`` (the emulator the agents drive, on its
  ``VirtualClock``) in this process, plus its closed-form ``predict`` for the same scenario;
* **SeQUeNCe**: ``benchmarks/sequence_chain.py`` as a subprocess in a virtualenv of its own
  (``.venv-sequence/``, created here on first use with ``sequence==0.8.5`` from PyPI: SeQUeNCe pulls
  jupyterlab, dash and qutip, which must stay out of the project's virtualenv),

and prints, per model and duration: wall time, wall time per emulated second, pairs, rate, mean
fidelity, the speed-up, and whether the rates agree once the models' stated differences (chiefly
SeQUeNCe's protocol round trips per attempt) are accounted for. ``--repeat`` repeats the whole
measurement and reports the median wall time (the pairs do not change: every run is seeded).
Acceptance target: qsdn at least 100 times faster per emulated second.

    .venv/bin/python benchmarks/entanglement.py [--durations 1 10] [--seeds 1 2 3] [--repeat 3]
        [--sequence-venv .venv-sequence] [--json [FILE]]

This is a script, not a test; ``tests/unit/test_benchmark_entanglement.py`` checks its pure parts
(the parameter mapping, the expected ratio, the tables) without SeQUeNCe.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qsdn.physics.entanglement import (  # noqa: E402
    attempt_time_s,
    heralding_probability,
    two_segment_attempts,
)

SEQUENCE_VERSION = "0.8.5"
SEQUENCE_SCRIPT = ROOT / "benchmarks" / "sequence_chain.py"
TARGET_SPEED_UP = 100.0


# --- the scenario and its mapping onto both models ----------------------------------------------------
@dataclass(frozen=True, slots=True)
class ChainParameters:
    """The 3-node chain, in the terms both models share (SYSTEM.md section 4)."""

    hop_length_km: float = 20.0
    attenuation_db_per_km: float = 0.2
    memories: int = 1
    raw_fidelity: float = 0.95
    memory_efficiency: float = 0.9
    detector_efficiency: float = 0.9
    coherence_time_s: float = 1.0
    swap_success: float = 0.5
    #: SeQUeNCe only: its swap fidelity heuristic ``F = F1 F2 d`` (qsdn uses the Klein-group formula).
    swap_degradation: float = 0.95

    @property
    def half_hop_km(self) -> float:
        return self.hop_length_km / 2.0

    @property
    def half_hop_transmittance(self) -> float:
        """Fibre from a memory to its station: ``10^(-alpha L/2 / 10)``."""
        return math.pow(10.0, -self.attenuation_db_per_km * self.half_hop_km / 10.0)

    @property
    def photon_efficiency(self) -> float:
        """Probability that an emitted photon clicks a detector: memory x fibre x detector."""
        return self.memory_efficiency * self.half_hop_transmittance * self.detector_efficiency

    @property
    def heralding_probability(self) -> float:
        """Barrett-Kok ``p = eta_A eta_B / 2`` per attempt with ``eta`` the photon efficiency."""
        return heralding_probability(self.photon_efficiency, self.photon_efficiency)

    @property
    def attempt_time_s(self) -> float:
        """qsdn's attempt time ``L/c``: photons to the station and its herald back."""
        return attempt_time_s(self.hop_length_km)

    @property
    def werner_swap_fidelity(self) -> float:
        """Fidelity after one swap of two fresh Werner pairs: ``F1 F2 + (1-F1)(1-F2)/3``."""
        f = self.raw_fidelity
        return f * f + (1.0 - f) * (1.0 - f) / 3.0

    @property
    def sequence_swap_fidelity(self) -> float:
        """SeQUeNCe's bookkeeping fidelity after one swap: ``F1 F2 degradation``."""
        return self.raw_fidelity * self.raw_fidelity * self.swap_degradation

    def sequence_argv(self, emulated_s: float, seed: int) -> list[str]:
        """Command-line arguments of ``sequence_chain.py`` for this scenario."""
        return [
            f"--emulated-s={emulated_s!r}",
            f"--seed={seed}",
            f"--hop-length-km={self.hop_length_km!r}",
            f"--attenuation-db-per-km={self.attenuation_db_per_km!r}",
            f"--memories={self.memories}",
            f"--raw-fidelity={self.raw_fidelity!r}",
            f"--memory-efficiency={self.memory_efficiency!r}",
            f"--coherence-time-s={self.coherence_time_s!r}",
            f"--detector-efficiency={self.detector_efficiency!r}",
            f"--swap-success={self.swap_success!r}",
            f"--swap-degradation={self.swap_degradation!r}",
        ]


@dataclass(frozen=True, slots=True)
class MappingRow:
    parameter: str
    qsdn: str
    sequence: str
    difference: str


DEFAULTS = ChainParameters()


def parameter_mapping(p: ChainParameters) -> list[MappingRow]:
    """Every parameter of the scenario, its value in each model, and how the models differ on it."""
    eta = p.photon_efficiency
    return [
        MappingRow(
            "hop length (router to router)",
            f"{p.hop_length_km:g} km, station at {p.half_hop_km:g} km",
            f"`qconnections` distance {p.hop_length_km * 1000:g} m, `meet_in_the_middle` "
            f"(BSM node at {p.half_hop_km:g} km)",
            "same geometry",
        ),
        MappingRow(
            "fibre attenuation",
            f"{p.attenuation_db_per_km:g} dB/km (C band)",
            f"{p.attenuation_db_per_km / 1000:g} dB/m",
            f"same: {p.half_hop_transmittance:.4f} per half hop",
        ),
        MappingRow(
            "speed of light in fibre",
            "2e8 m/s",
            "2e-4 m/ps (`SPEED_OF_LIGHT`); classical channels given the same delay",
            "same",
        ),
        MappingRow(
            "memories per hop end",
            f"{p.memories} (repeater {2 * p.memories})",
            f"`memo_size` {p.memories} at a and b, {2 * p.memories} at r; reservation of {p.memories}",
            "same count; SeQUeNCe's RSVP reserves them for the request",
        ),
        MappingRow(
            "initial pair fidelity",
            f"{p.raw_fidelity:g} (Werner)",
            f"memory `fidelity` (raw_fidelity) {p.raw_fidelity:g}",
            "SeQUeNCe samples a Bell state with that probability; qsdn keeps the Werner state",
        ),
        MappingRow(
            "memory efficiency",
            f"{p.memory_efficiency:g}, folded into eta",
            f"memory `efficiency` {p.memory_efficiency:g} (photon loss at emission)",
            "same figure",
        ),
        MappingRow(
            "detector efficiency",
            f"{p.detector_efficiency:g}, folded into eta",
            f"both `SingleAtomBSM` detectors: efficiency {p.detector_efficiency:g}, no dark counts",
            "same; SeQUeNCe also models a 150 ps resolution and 25 MHz count rate (no effect here)",
        ),
        MappingRow(
            "heralding probability",
            f"p = eta_A eta_B / 2 = {p.heralding_probability:.4f} (eta = {eta:.4f})",
            "sampled photon by photon, two Barrett-Kok rounds",
            "same expectation: round 1 clicks with eta/2 (one emitter) and round 2 with eta",
        ),
        MappingRow(
            "attempt time",
            f"L/c = {p.attempt_time_s * 1e6:g} us",
            "negotiate + acknowledge between the routers and the station's reply, for each of "
            "the two rounds, then the resource manager's re-pairing (measured, see the results)",
            "the main difference: SeQUeNCe's attempt takes several L/c",
        ),
        MappingRow(
            "memory coherence",
            f"depolarising, T = {p.coherence_time_s:g} s",
            f"`coherence_time` {p.coherence_time_s:g} s: a cut-off (pairs discarded after T), "
            "no fidelity decay in the ket formalism",
            "rates: none while waits stay << T; fidelities: qsdn decays, SeQUeNCe does not",
        ),
        MappingRow(
            "swap success",
            f"{p.swap_success:g}",
            f"`EntanglementSwappingA` success_prob {p.swap_success:g} (set as the class default)",
            "same",
        ),
        MappingRow(
            "swapped fidelity",
            f"Klein group: F1 F2 + (1-F1)(1-F2)/3 = {p.werner_swap_fidelity:.4f} for fresh pairs",
            f"heuristic F1 F2 x {p.swap_degradation:g} = {p.sequence_swap_fidelity:.4f}",
            "different by design (SYSTEM.md section 5): compare rates, not fidelities",
        ),
        MappingRow(
            "purification",
            "none",
            "none: the request's target fidelity (0.5) is below every fidelity that occurs",
            "same",
        ),
    ]


def expected_rate_ratio(qsdn_attempt_s: float, sequence_attempt_s: float) -> float:
    """The rate qsdn should show over SeQUeNCe's when the models differ only in their attempt clock.

    Both are the same renewal process (same heralding probability, memories, swap success) on
    different time scales: with pairs stored far below the coherence time, scaling every attempt by
    ``s`` scales the rate by ``1/s``. The expected ratio is therefore SeQUeNCe's attempt period over
    qsdn's attempt time.
    """
    if qsdn_attempt_s <= 0 or sequence_attempt_s <= 0:
        raise ValueError("attempt times must be positive")
    return sequence_attempt_s / qsdn_attempt_s


# --- results ------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Run:
    model: str
    emulated_s: float
    seed: int
    wall_s: float
    pairs: int
    fidelity_sum: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Row:
    """One line of the table: a model at one virtual duration, summed over the seeds."""

    model: str
    emulated_s: float
    seeds: int
    wall_s: float
    pairs: int
    rate_per_s: float
    rate_stderr: float
    mean_fidelity: float | None
    speed_up: float | None = None
    predicted_rate: float | None = None
    predicted_fidelity: float | None = None

    @property
    def wall_per_emulated_s(self) -> float:
        return self.wall_s / (self.emulated_s * self.seeds)


def summarise(model: str, runs: Sequence[Sequence[Run]]) -> Row:
    """``runs[repeat][seed]`` for one model and duration: median wall time over the repeats."""
    first = runs[0]
    emulated = first[0].emulated_s
    pairs = sum(r.pairs for r in first)
    per_seed = [r.pairs / r.emulated_s for r in first]
    stderr = statistics.stdev(per_seed) / math.sqrt(len(per_seed)) if len(per_seed) > 1 else math.nan
    fid_sum = sum(r.fidelity_sum for r in first)
    return Row(
        model=model,
        emulated_s=emulated,
        seeds=len(first),
        wall_s=statistics.median(sum(r.wall_s for r in rep) for rep in runs),
        pairs=pairs,
        rate_per_s=pairs / (emulated * len(first)),
        rate_stderr=stderr,
        mean_fidelity=fid_sum / pairs if pairs else None,
    )


def _num(x: float | None, fmt: str) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def format_results(rows: Sequence[Row]) -> str:
    """The results as a Markdown table (what docs/benchmarks.md shows)."""
    head = (
        "| model | emulated s (x seeds) | wall s | wall s per emulated s | pairs | rate (pairs/s) "
        "| mean fidelity | speed-up | qsdn prediction (pairs/s, fidelity) |"
    )
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        rate = f"{r.rate_per_s:.1f}" + (f" ± {r.rate_stderr:.1f}" if not math.isnan(r.rate_stderr) else "")
        pred = ""
        if r.predicted_rate is not None:
            pred = f"{r.predicted_rate:.1f}, {_num(r.predicted_fidelity, '.4f')}"
        lines.append(
            f"| {r.model} | {r.emulated_s:g} x {r.seeds} | {r.wall_s:.3g} | {r.wall_per_emulated_s:.3g} "
            f"| {r.pairs} | {rate} | {_num(r.mean_fidelity, '.4f')} "
            f"| {'' if r.speed_up is None else f'{r.speed_up:,.0f}x'} | {pred} |"
        )
    return "\n".join(lines)


def format_mapping(rows: Sequence[MappingRow]) -> str:
    lines = ["| parameter | qsdn | SeQUeNCe 0.8.5 | difference |", "| --- | --- | --- | --- |"]
    lines += [f"| {r.parameter} | {r.qsdn} | {r.sequence} | {r.difference} |" for r in rows]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Agreement:
    measured_ratio: float
    expected_ratio: float
    tolerance: float

    @property
    def agrees(self) -> bool:
        return abs(self.measured_ratio / self.expected_ratio - 1.0) <= self.tolerance


def agreement(qsdn: Row, sequence: Row, qsdn_attempt_s: float, sequence_attempt_s: float) -> Agreement:
    """Do the two rates agree once the attempt clocks are accounted for?

    The tolerance is three combined standard errors of the two rates (seed to seed), plus 5 % for
    what the time scaling leaves out (SeQUeNCe's classical messages after a swap keep the end
    memories busy for another ``L/c``; its memories do not attempt in lock-step).
    """
    measured = qsdn.rate_per_s / sequence.rate_per_s
    rel = [
        (r.rate_stderr / r.rate_per_s) if r.rate_per_s and not math.isnan(r.rate_stderr) else 0.0
        for r in (qsdn, sequence)
    ]
    tolerance = 3.0 * math.hypot(*rel) + 0.05
    return Agreement(measured, expected_rate_ratio(qsdn_attempt_s, sequence_attempt_s), tolerance)


def sequence_checks(
    params: ChainParameters, emulated_s: float, runs: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """SeQUeNCe's measured attempt period and heralding probability over the seeds' runs, and the
    two-segment closed form (Shchukin et al. 2019) evaluated on SeQUeNCe's own attempt clock."""
    attempts = sum(sum(r["attempts_per_hop"].values()) for r in runs)
    heralded = sum(sum(r["heralded_per_hop"].values()) for r in runs)
    periods = [r["attempt_period_s"] for r in runs if r.get("attempt_period_s")]
    period = statistics.fmean(periods)
    out: dict[str, Any] = {
        "emulated_s": emulated_s,
        "sequence_attempt_period_s": period,
        "sequence_attempts": attempts,
        "sequence_heralding_probability": heralded / attempts if attempts else math.nan,
        "qsdn_heralding_probability": params.heralding_probability,
    }
    if params.memories == 1:
        n = two_segment_attempts(params.heralding_probability, params.swap_success)
        out["closed_form_rate_at_sequence_clock"] = 1.0 / (n * period)
        out["closed_form_rate_at_qsdn_clock"] = 1.0 / (n * params.attempt_time_s)
    return out


def format_verdict(v: dict[str, Any], params: ChainParameters) -> str:
    """One line per duration: SeQUeNCe's clock and heralding, then the comparison if qsdn ran."""
    period = v["sequence_attempt_period_s"]
    text = (
        f"{v['emulated_s']:g} s: SeQUeNCe attempt period {period * 1e6:.0f} us "
        f"({period / params.attempt_time_s:.2f} L/c), heralding {v['sequence_heralding_probability']:.4f} "
        f"over {v['sequence_attempts']} attempts (p = eta^2/2 = {v['qsdn_heralding_probability']:.4f})"
    )
    if "closed_form_rate_at_sequence_clock" in v:
        text += (
            f"; closed form (3-2p)/(a p (2-p)) attempts per pair: "
            f"{v['closed_form_rate_at_sequence_clock']:.1f} pairs/s at SeQUeNCe's period, "
            f"{v['closed_form_rate_at_qsdn_clock']:.1f} at L/c"
        )
    if "measured_ratio" in v:
        text += (
            f"; rate ratio qsdn/SeQUeNCe {v['measured_ratio']:.2f}, expected {v['expected_ratio']:.2f} "
            f"± {v['tolerance'] * 100:.0f} %: {'agree' if v['agrees'] else 'DISAGREE'}; speed-up "
            f"{v['speed_up']:,.0f}x per emulated second "
            f"({'meets' if v['speed_up_target_met'] else 'BELOW'} the 100x target)"
        )
        if v.get("speed_up_per_pair"):
            text += f", {v['speed_up_per_pair']:,.0f}x per delivered pair"
    return text


# --- running the models -------------------------------------------------------------------------------
def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {system}"


def source_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def sequence_python(venv: Path) -> Path:
    """The interpreter of SeQUeNCe's own virtualenv, created (and ``sequence`` installed) if needed."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import importlib.metadata as m; print(m.version('sequence'))"]
    if python.exists():
        out = subprocess.run(probe, capture_output=True, text=True, timeout=120)
        if out.returncode == 0 and out.stdout.strip() == SEQUENCE_VERSION:
            return python
    print(f"creating {venv} with sequence=={SEQUENCE_VERSION} (once; a few minutes) ...", file=sys.stderr)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=600)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"sequence=={SEQUENCE_VERSION}"],
        check=True,
        timeout=1800,
    )
    return python


def run_sequence(python: Path, params: ChainParameters, emulated_s: float, seed: int) -> Run:
    out = subprocess.run(
        [str(python), str(SEQUENCE_SCRIPT), *params.sequence_argv(emulated_s, seed)],
        capture_output=True,
        text=True,
        timeout=max(600.0, 200.0 * emulated_s),
    )
    if out.returncode != 0:
        raise RuntimeError(f"sequence_chain.py failed (status {out.returncode}):\n{out.stderr[-3000:]}")
    data: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    fid = data["mean_fidelity"]
    return Run(
        model="SeQUeNCe",
        emulated_s=emulated_s,
        seed=seed,
        wall_s=float(data["wall_s"]),
        pairs=int(data["pairs"]),
        fidelity_sum=(fid or 0.0) * int(data["pairs"]),
        extra=data,
    )


class QsdnChainMissingError(RuntimeError):
    """``agent.drivers.entanglement_chain`` is not there (yet)."""


def _chain_module() -> Any:
    try:
        return importlib.import_module("agent.drivers.entanglement_chain")
    except ImportError as exc:
        raise QsdnChainMissingError(str(exc)) from exc


def qsdn_scenario(params: ChainParameters, seed: int = 1) -> Any:
    """qsdn's ``ChainScenario`` for ``params`` (see :func:`parameter_mapping`).

    Each side of a hop gets ``eta`` = memory x fibre x detector efficiency, so that qsdn's
    ``p = eta_A eta_B / 2`` is the probability SeQUeNCe's photon-by-photon Barrett-Kok samples.
    """
    chain = _chain_module()
    eta = params.photon_efficiency
    hop = chain.HopParams(length_km=params.hop_length_km, eta_left=eta, eta_right=eta)
    return chain.ChainScenario(
        hops=(hop, hop),
        f0=params.raw_fidelity,
        memories=params.memories,
        coherence_s=params.coherence_time_s,
        swap_success=params.swap_success,
        seed=seed,
    )


def run_qsdn(params: ChainParameters, emulated_s: float, seed: int) -> Run:
    """One run of qsdn's emulator (in this process) and its closed-form prediction."""
    chain = _chain_module()
    scenario = qsdn_scenario(params, seed)
    started = time.perf_counter()
    result = chain.run(scenario, emulated_s)
    wall = time.perf_counter() - started
    predicted = chain.predict(scenario)
    pairs = int(result.pairs_delivered)
    return Run(
        model="qsdn",
        emulated_s=emulated_s,
        seed=seed,
        wall_s=wall,
        pairs=pairs,
        fidelity_sum=float(result.mean_fidelity) * pairs if pairs else 0.0,
        extra={
            "events": result.events,
            "prediction": {"rate_per_s": predicted.rate_per_s, "fidelity": predicted.fidelity},
        },
    )


# --- main ---------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--durations", type=float, nargs="+", default=[1.0, 10.0], help="virtual seconds")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--repeat", type=int, default=1, help="repeat everything, report the median wall time")
    p.add_argument("--sequence-venv", type=Path, default=ROOT / ".venv-sequence")
    p.add_argument("--no-sequence", action="store_true", help="run the qsdn side only")
    p.add_argument("--memories", type=int, default=DEFAULTS.memories)
    p.add_argument("--hop-length-km", type=float, default=DEFAULTS.hop_length_km)
    p.add_argument("--coherence-time-s", type=float, default=DEFAULTS.coherence_time_s)
    p.add_argument("--swap-success", type=float, default=DEFAULTS.swap_success)
    p.add_argument(
        "--json", nargs="?", const="-", metavar="FILE", help="results as JSON (stdout with no FILE)"
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    params = ChainParameters(
        hop_length_km=args.hop_length_km,
        memories=args.memories,
        coherence_time_s=args.coherence_time_s,
        swap_success=args.swap_success,
    )
    out = sys.stderr if args.json == "-" else sys.stdout
    print(f"machine: {machine()}; qsdn {source_revision()}", file=out)
    python = None if args.no_sequence else sequence_python(args.sequence_venv)
    try:
        qsdn_scenario(params)
        models = ["qsdn"]
    except QsdnChainMissingError as exc:
        print(f"qsdn's chain runner is not available ({exc}): SeQUeNCe only", file=sys.stderr)
        models = []
    if python is not None:
        models.append("SeQUeNCe")

    runs: dict[tuple[str, float], list[list[Run]]] = {}
    for _ in range(args.repeat):
        for duration in args.durations:
            for model in models:
                batch = []
                for seed in args.seeds:
                    started = time.perf_counter()
                    if model == "qsdn":
                        run = run_qsdn(params, duration, seed)
                    else:
                        assert python is not None
                        run = run_sequence(python, params, duration, seed)
                    batch.append(run)
                    print(
                        f"  {model:8} {duration:g} s seed {seed}: {run.pairs} pairs, wall {run.wall_s:.3f} s "
                        f"({time.perf_counter() - started:.1f} s with start-up)",
                        file=sys.stderr,
                    )
                runs.setdefault((model, duration), []).append(batch)

    rows: list[Row] = []
    verdicts: list[dict[str, Any]] = []
    for duration in args.durations:
        q = s = None
        if ("qsdn", duration) in runs:
            q = summarise("qsdn", runs[("qsdn", duration)])
            pred = runs[("qsdn", duration)][0][0].extra.get("prediction", {})
            q.predicted_rate = pred.get("rate_per_s")
            q.predicted_fidelity = pred.get("fidelity")
            rows.append(q)
        if ("SeQUeNCe", duration) in runs:
            s = summarise("SeQUeNCe", runs[("SeQUeNCe", duration)])
            rows.append(s)
        if s is None:
            continue
        seq_runs = runs[("SeQUeNCe", duration)][0]
        v = sequence_checks(params, duration, [r.extra for r in seq_runs])
        if q is not None:
            s.speed_up = s.wall_per_emulated_s / q.wall_per_emulated_s
            verdict = agreement(q, s, params.attempt_time_s, v["sequence_attempt_period_s"])
            v |= {
                "measured_ratio": verdict.measured_ratio,
                "expected_ratio": verdict.expected_ratio,
                "tolerance": verdict.tolerance,
                "agrees": verdict.agrees,
                "speed_up": s.speed_up,
                "speed_up_target_met": s.speed_up >= TARGET_SPEED_UP,
                # the same work on both sides: wall time per delivered pair
                "speed_up_per_pair": (s.wall_s / s.pairs) / (q.wall_s / q.pairs)
                if s.pairs and q.pairs
                else None,
            }
        verdicts.append(v)

    print("\n" + format_mapping(parameter_mapping(params)) + "\n", file=out)
    print(format_results(rows) + "\n", file=out)
    for v in verdicts:
        print(format_verdict(v, params), file=out)
    if args.json:
        doc = {
            "machine": machine(),
            "revision": source_revision(),
            "parameters": asdict(params),
            "rows": [asdict(r) | {"wall_per_emulated_s": r.wall_per_emulated_s} for r in rows],
            "verdicts": verdicts,
        }
        text = json.dumps(doc, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
