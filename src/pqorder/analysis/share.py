"""Parameter sharing × pruning in both orders: does the stronger method later win?

The paper combines Basis Sharing with pruning and reports that putting the stronger
perturbation later wins. For each sharing ratio s and pruning ratio p the study runs
``share:ratio=s > pruner:ratio=p`` (share first) and ``pruner:ratio=p > share:ratio=s``
(prune first), plus each step alone (the intensities). The order advantage of sharing first is
A(S→P) = M(share first) − M(prune first); the intensity gap G = M(share alone) − M(prune
alone) is positive when pruning is the stronger method. "Stronger later" predicts the sign of
A equals the sign of G. Every run is stored; the Study reuses the single-step prefixes.

What the orders mean (``pqorder.methods.share``): pruning after sharing prunes the factor
matrices (the model keeps both compressions); sharing after pruning factors the pruned weights,
whose zeros end in dense factors, so the prune-first model stores only the sharing's savings.
The comparison is of the two perturbations' order, as in the paper, not of equal storage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from pqorder.errors import ConfigError, check_format
from pqorder.methods.base import Method
from pqorder.methods.pruner import Pruner
from pqorder.pipeline import parse_step
from pqorder.plotting import figure
from pqorder.store import Direction, Measurement, m_text
from pqorder.study import Study
from pqorder.tables import Table, cell

PRUNER = "sparsegpt"
SHARES = (0.1, 0.2, 0.3)
PRUNES = (0.2, 0.4)
SHARE = "share:group=2"
FORMAT = 1  # version of ShareStudy.to_dict


@dataclass(frozen=True)
class SharePair:
    """One (sharing ratio, pruning ratio): each step alone and both orders."""

    share: float
    prune: float
    share_alone: float | None
    prune_alone: float | None
    share_first: float | None  # share > prune
    prune_first: float | None  # prune > share
    error: str | None = None  # why a run failed, if one did


@dataclass(frozen=True)
class ShareStudy:
    share_step: str  # the sharing step's text at its first ratio
    pruner: str  # the pruner's label at its first ratio
    metric: str
    direction: Direction
    dense: float | None
    pairs: list[SharePair]

    @property
    def m_text(self) -> str:
        return m_text(self.metric, self.direction)

    def _m(self, value: float | None) -> float | None:
        return Measurement(self.metric, value, self.direction).metric

    def _diff(self, a: float | None, b: float | None) -> float | None:
        ma, mb = self._m(a), self._m(b)
        return None if ma is None or mb is None else ma - mb

    def advantage(self, pair: SharePair) -> float | None:
        """A(S→P) = M(share first) − M(prune first)."""
        return self._diff(pair.share_first, pair.prune_first)

    def gap(self, pair: SharePair) -> float | None:
        """G = M(share alone) − M(prune alone): positive when pruning is the stronger."""
        return self._diff(pair.share_alone, pair.prune_alone)

    def held(self, pair: SharePair) -> bool | None:
        """Whether the stronger method later won (None: a run failed or the gap is 0)."""
        a, g = self.advantage(pair), self.gap(pair)
        if a is None or g is None or g == 0 or a == 0:
            return None
        return (a > 0) == (g > 0)

    def summary(self) -> str:
        verdicts = [v for p in self.pairs if (v := self.held(p)) is not None]
        if not verdicts:
            return "no pair has all four runs: nothing to compare"
        return (
            f"stronger later won in {sum(verdicts)} of {len(verdicts)} (share, prune) pairs "
            f"(A(S→P) = M(share first) − M(prune first), G = M(share) − M(prune), "
            f"M = {self.m_text})"
        )

    def table(self) -> Table:
        rows = []
        for p in self.pairs:
            verdict = self.held(p)
            rows.append(
                (
                    f"{p.share:.0%}",
                    f"{p.prune:.0%}",
                    p.share_alone,
                    p.prune_alone,
                    self.gap(p),
                    p.share_first,
                    p.prune_first,
                    self.advantage(p),
                    "—" if verdict is None else "yes" if verdict else "no",
                )
            )
        columns = (
            *("share", "prune", f"share alone {self.metric}", f"prune alone {self.metric}"),
            *(f"G {self.m_text}", f"share→prune {self.metric}", f"prune→share {self.metric}"),
            *(f"A(S→P) {self.m_text}", "stronger later wins"),
        )
        title = f"{self.share_step} × {self.pruner} in both orders; dense {cell(self.dense)}"
        return Table(title, columns, tuple(rows))

    def to_dict(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, raw: dict) -> ShareStudy:
        check_format("share study", raw.get("format"), (FORMAT,))
        data = {k: v for k, v in raw.items() if k != "format"}
        return cls(**{**data, "pairs": [SharePair(**p) for p in raw["pairs"]]})


def check_share_study(
    pruner: str, shares: Sequence[float], prunes: Sequence[float], share: str
) -> tuple[Method, Pruner]:
    """The sharing and pruning templates, every setting validated before any work."""
    if not shares or not prunes:
        raise ConfigError("a share study needs at least one sharing and one pruning ratio")
    for r in (*shares, *prunes):
        if not 0 < r < 1:
            raise ConfigError(f"ratios must lie in (0, 1), got {r:g}")
    share_step = parse_step(share, {"ratio": shares[0]})
    if share_step.name != "share":
        raise ConfigError(f"--share must be a share step (share:group=2,...), got {share}")
    prune_step = parse_step(pruner, {"ratio": prunes[0]})
    if not isinstance(prune_step, Pruner) or prune_step.config.nm is not None:
        raise ConfigError(f"'{pruner}' is not an unstructured pruner (sparsegpt, wanda, magnitude)")
    return share_step, prune_step


def run_share_study(
    study: Study,
    pruner: str = PRUNER,
    shares: Sequence[float] = SHARES,
    prunes: Sequence[float] = PRUNES,
    share: str = SHARE,
    progress: bool = True,
) -> ShareStudy:
    """Every (sharing ratio, pruning ratio) in both orders plus each step alone; runs stored."""
    share_step, prune_step = check_share_study(pruner, shares, prunes, share)
    shares, prunes = sorted(set(shares)), sorted(set(prunes))
    s_steps = {s: share_step.with_settings(ratio=s) for s in shares}
    p_steps = {p: prune_step.with_settings(ratio=p) for p in prunes}
    for s in shares:
        for p in prunes:
            study.check((s_steps[s], p_steps[p]))
            study.check((p_steps[p], s_steps[s]))
    dense = study.dense_run()
    pairs = []
    with tqdm(total=len(shares) * len(prunes), desc="share study", disable=not progress) as bar:
        for s in shares:
            for p in prunes:
                # each order right after its first step alone: the model extends in place
                share_alone, share_first = (
                    study.evaluate((s_steps[s],)),
                    study.evaluate((s_steps[s], p_steps[p])),
                )
                prune_alone, prune_first = (
                    study.evaluate((p_steps[p],)),
                    study.evaluate((p_steps[p], s_steps[s])),
                )
                runs = [share_alone, prune_alone, share_first, prune_first]
                values = [r.value if r.ok else None for r in runs]
                error = next((r.error for r in runs if not r.ok), None)
                pairs.append(SharePair(s, p, *values, error=error))
                bar.update()
    return ShareStudy(
        share_step.to_text(),
        prune_step.label(),
        dense.metric_name,
        dense.direction,
        dense.value,
        pairs,
    )


def plot_share(result: ShareStudy, path: Path) -> Path:
    """Order advantage A(S→P) against the intensity gap G, one point per (share, prune)."""
    with figure(path) as ax:
        for p in result.pairs:
            a, g = result.advantage(p), result.gap(p)
            if a is None or g is None:
                continue
            ax.plot(g, a, "o", color="C0")
            ax.annotate(f"S{p.share:.0%}/P{p.prune:.0%}", (g, a), fontsize=7)
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_xlabel(f"G = M(share) − M(prune) ({result.m_text}; > 0: pruning stronger)")
        ax.set_ylabel(f"A(S→P) = M(share first) − M(prune first) ({result.m_text})")
        ax.set_title(f"{result.pruner} × sharing: stronger later wins in quadrants I and III")
    return path
